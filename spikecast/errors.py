"""Exceptions raised by spikecast. Each names the model location it is about."""

from __future__ import annotations

from dataclasses import dataclass


class SpikecastError(Exception):
    """Base class for every error spikecast raises on purpose."""


class TraceError(SpikecastError):
    """The model could not be turned into a graph (torch.export failed)."""


@dataclass(frozen=True)
class UnsupportedSite:
    """One operation that cannot be converted, with where it lives in the model."""

    path: str  # module path in the source model, e.g. "layer1.0.act"
    op: str  # operation, e.g. "aten.sigmoid"
    node: str  # graph node name, for `spikecast inspect`
    reason: str

    def __str__(self) -> str:
        where = self.path or "<top level>"
        return f"{where}: {self.op} (node {self.node}) - {self.reason}"


class UnsupportedOperationError(SpikecastError):
    """One or more operations of the model have no spiking equivalent."""

    def __init__(self, sites: list[UnsupportedSite]):
        self.sites = list(sites)
        lines = "\n".join(f"  - {s}" for s in self.sites)
        super().__init__(
            f"{len(self.sites)} operation(s) cannot be converted to a spiking network:\n{lines}\n"
            "Run `spikecast inspect` on the model to see what happens to every operation."
        )


class CalibrationError(SpikecastError):
    """Calibration data is missing, empty or invalid."""
