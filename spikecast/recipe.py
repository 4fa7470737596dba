"""The one conversion recipe: every setting that decides how an ANN becomes an SNN.

A :class:`Recipe` is frozen and serialisable (:meth:`Recipe.to_dict` / :meth:`Recipe.from_dict`).
``spikecast.convert``, fine-tuning's conversion, the CLI, the demo and batch jobs all build one and
record it, the same way, in the SNN's metadata (``metadata["recipe"]``). The field names are the
library's keyword arguments and, with ``-`` for ``_``, the CLI's flags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional

from spikecast.calibrate.thresholds import DEFAULT_PERCENTILE, METHODS, CalibrationConfig
from spikecast.convert.correction import LEVELS, CorrectionConfig
from spikecast.convert.spiking import NeuronConfig
from spikecast.nn.encoding import ENCODINGS
from spikecast.nn.simulation import DEFAULT_BUDGET, SimulationConfig

#: Calibration images read when the caller does not say (the calibration set is bounded).
DEFAULT_CALIB_IMAGES = 512


@dataclass(frozen=True)
class Recipe:
    """How to convert. The defaults are spikecast's default recipe.

    Thresholds: ``thresholds`` is how each site's threshold is chosen from the calibration
    activations (``"max"``, ``"percentile"`` with ``percentile``, or ``"mse"``: least expected
    error for ``timesteps`` steps), ``per_channel`` one per channel.
    Neurons: ``signed`` (may take back a spike), ``levels`` (spikes per step), ``v_init``
    (initial potential / threshold), random spike masking (``mask_*``), ``compensate`` (run
    non-linear ops with expectation compensation; ``False`` refuses them).
    Correction: ``correction`` is the layer-wise post-conversion correction with the ANN as teacher
    (``"none"``, ``"light"``, ``"advanced"``).
    Simulation: ``timesteps`` is the budget T calibrated for (and the default T of ``snn(x)``),
    ``encoding`` the input code. Data: ``calib_images`` bounds the calibration set.
    """

    timesteps: int = DEFAULT_BUDGET
    thresholds: str = "mse"
    percentile: float = DEFAULT_PERCENTILE
    per_channel: bool = False
    correction: str = "advanced"
    signed: bool = True
    levels: int = 1
    v_init: float = 0.5
    mask_ratio: float = 0.0
    mask_sites: Optional[tuple[str, ...]] = None
    mask_seed: int = 0
    compensate: bool = True
    encoding: str = "analog"
    calib_images: int = DEFAULT_CALIB_IMAGES

    def __post_init__(self):
        if isinstance(self.timesteps, bool) or int(self.timesteps) != self.timesteps or self.timesteps < 1:
            raise ValueError(f"recipe: timesteps must be a positive integer, got {self.timesteps!r}")
        if self.thresholds not in METHODS:
            raise ValueError(f"recipe: unknown thresholds method {self.thresholds!r}; choose one of {METHODS}")
        if self.correction not in LEVELS:
            raise ValueError(f"recipe: unknown correction {self.correction!r}; choose one of {LEVELS}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"recipe: unknown encoding {self.encoding!r}; choose one of {ENCODINGS}")
        if int(self.calib_images) != self.calib_images or self.calib_images < 1:
            raise ValueError(f"recipe: calib_images must be a positive integer, got {self.calib_images!r}")
        if self.mask_sites is not None and not isinstance(self.mask_sites, tuple):
            object.__setattr__(self, "mask_sites", tuple(self.mask_sites))
        self.neuron_config()  # validates levels, mask ratio
        self.calibration_config()  # validates percentile

    # ------------------------------------------------------------------ the stages' configs
    def calibration_config(self) -> CalibrationConfig:
        # a neuron with `levels` spike sizes resolves levels*T values in T steps: choose its range for that
        return CalibrationConfig(method=self.thresholds, percentile=self.percentile, per_channel=self.per_channel,
                                 timesteps=self.timesteps * int(self.levels), v_init=self.v_init)

    def neuron_config(self) -> NeuronConfig:
        return NeuronConfig(v_init=self.v_init, mask_ratio=self.mask_ratio, mask_sites=self.mask_sites,
                            mask_seed=self.mask_seed, signed=self.signed, levels=self.levels)

    def correction_config(self) -> CorrectionConfig:
        return CorrectionConfig(level=self.correction, timesteps=self.timesteps)

    def simulation_config(self, input_scale: float = 1.0) -> SimulationConfig:
        return SimulationConfig(timesteps=self.timesteps, encoding=self.encoding, input_scale=input_scale)

    # ------------------------------------------------------------------ round trip
    def replace(self, **changes: Any) -> "Recipe":
        """A copy with ``changes`` (field names; unknown names are an error)."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown recipe setting(s): {', '.join(unknown)}; known: "
                            f"{', '.join(f.name for f in fields(self))}")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mask_sites"] = list(self.mask_sites) if self.mask_sites is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """The recipe recorded by :meth:`to_dict` (unknown keys are an error, missing ones default)."""
        return cls().replace(**dict(data))
