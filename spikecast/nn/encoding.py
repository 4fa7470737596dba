"""Input encodings: how the (analog) input is presented to the SNN at each step."""

from __future__ import annotations

from typing import Optional

import torch

ENCODINGS = ("analog", "poisson")


class PoissonEncoder:
    """Signed Bernoulli rate code: ``x_t = sign(x) * scale * Bernoulli(min(|x| / scale, 1))``.

    Its mean over steps equals ``x`` wherever ``|x| <= scale`` (``scale`` is the largest absolute
    input seen at calibration). Seeded, and restarted at each simulation.
    """

    def __init__(self, scale: float, seed: int = 0):
        if not scale > 0:
            raise ValueError(f"Poisson encoding needs a positive input scale, got {scale}")
        self.scale, self.seed = float(scale), int(seed)
        self._generator: Optional[torch.Generator] = None
        self._prob: Optional[torch.Tensor] = None

    def start(self, x: torch.Tensor) -> None:
        self._generator = torch.Generator(device=x.device)
        self._generator.manual_seed(self.seed)
        self._prob = (x.abs() / self.scale).clamp_(max=1.0)
        self._signed_scale = torch.sign(x) * self.scale

    def step(self) -> torch.Tensor:
        fire = torch.rand(self._prob.shape, generator=self._generator, device=self._prob.device) < self._prob
        return fire * self._signed_scale
