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

    def __init__(self, sites: list[UnsupportedSite], action: str = "be converted to a spiking network",
                 hint: str = "Run `spikecast inspect` on the model to see what happens to every operation."):
        self.sites = list(sites)
        lines = "\n".join(f"  - {s}" for s in self.sites)
        super().__init__(f"{len(self.sites)} operation(s) cannot {action}:\n{lines}\n{hint}")


class CalibrationError(SpikecastError):
    """Calibration data is missing, empty or invalid."""


# ----------------------------------------------------------------------------- bad input
# Each of these has a one-line message that names the file / device / argument it is about.
# They also derive from the built-in exception a caller would expect (ValueError,
# FileNotFoundError), so ``except ValueError`` keeps working.


class InvalidArgumentError(SpikecastError, ValueError):
    """An argument is out of range (e.g. ``timesteps`` <= 0)."""


class CheckpointError(SpikecastError, ValueError):
    """A weight file cannot be used; the message names the file."""


class CheckpointNotFoundError(SpikecastError, FileNotFoundError):
    """A weight file does not exist."""


class CorruptCheckpointError(CheckpointError):
    """A weight file is empty, truncated or not a torch / safetensors file at all."""


class UntrustedCheckpointError(CheckpointError):
    """A weight file can only be read by unpickling arbitrary Python objects (which can run code).

    Pass ``trust_checkpoint=True`` (CLI: ``--trust-checkpoint``) only for files you trust.
    """


class CheckpointMismatchError(CheckpointError):
    """A weight file does not fit the model: missing / unexpected keys or tensor shapes that differ."""


class UnknownModelError(SpikecastError, ValueError):
    """A model name is neither a zoo model nor a timm model; the message lists close matches."""


class DataError(SpikecastError, ValueError):
    """Input data is unusable: NaN / Inf values, or a shape the model cannot take."""


class DataNotFoundError(SpikecastError, FileNotFoundError):
    """A data folder or file does not exist; the message names the path."""


class DeviceError(SpikecastError, ValueError):
    """A device name is invalid or the device is not available on this machine."""


def one_line(text: object, limit: int = 300) -> str:
    """``text`` squeezed to one line (whitespace runs -> one space), cut to ``limit`` characters.

    For quoting a third-party exception inside one of our one-line messages.
    """
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
