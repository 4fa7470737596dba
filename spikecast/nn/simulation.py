"""How a spiking network is run: the simulation settings every runtime reads."""

from __future__ import annotations

from dataclasses import dataclass

from spikecast.nn.encoding import ENCODINGS


@dataclass(frozen=True)
class SimulationConfig:
    """How the network is run. ``timesteps`` is the default budget of ``forward``."""

    timesteps: int = 64
    encoding: str = "analog"
    input_scale: float = 1.0  # Poisson: largest |input| seen at calibration
    encoding_seed: int = 0
    channels_last: bool = True  # run 4-D feature maps in NHWC layout (faster convolutions on CPU)
    # run several steps per layer call when no gradient is needed (same values as step by step;
    # see spikecast.nn.timebatch); False: one step at a time
    time_batched: bool = True
    # compile each step graph as a whole with torch.compile (fuses the elementwise work between
    # layers; same values; pays a compile of seconds to a minute on first use); steps one at a time
    compiled: bool = False

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {self.encoding!r}; choose one of {ENCODINGS}")
        if int(self.timesteps) < 1:
            raise ValueError("timesteps must be >= 1")


#: The timestep budget a network is calibrated for when nobody says otherwise (the default T of
#: ``snn(x)``), and the budgets validation reads off one simulation. The only definitions.
DEFAULT_BUDGET = 32
DEFAULT_EVAL_TIMESTEPS = (1, 2, 4, 8, 16, 32, 64, 128)
