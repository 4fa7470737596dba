"""The stateful modules of expectation compensation (the pass that inserts them is
:mod:`spikecast.convert.compensation`).

* :class:`RunningMean`: the mean of its inputs over the steps since the last reset;
* :class:`ExpectationDifference`: ``out_t = t*y_t - (t-1)*y_{t-1}``, per-step increments whose
  running mean is ``y_t``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class _CompensationState(nn.Module):
    """Common part of the two compensation modules: a readable name, one state tensor and the
    step count since the last reset (no weights: config is the name)."""

    def __init__(self, name: str = ""):
        super().__init__()
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.state: Optional[torch.Tensor] = None
        self.t = 0

    def detach_state(self) -> None:
        if self.state is not None:
            self.state = self.state.detach()

    def config(self) -> dict:
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: dict, tensors: dict) -> "_CompensationState":
        return cls(**config)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


class RunningMean(_CompensationState):
    """Mean of its inputs over the steps since the last reset (state: their running sum)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.t += 1
        if self.state is None:
            self.state = x.clone()
        elif x.requires_grad and torch.is_grad_enabled():
            self.state = self.state + x
        else:
            self.state.add_(x)
        return self.state / self.t


class ExpectationDifference(_CompensationState):
    """``out_t = t·y_t − (t−1)·y_{t−1}``: turns a running value into per-step increments whose
    running mean is ``y_t`` (state: the previous ``y``)."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        self.t += 1
        out = y if self.state is None else self.t * y - (self.t - 1) * self.state
        self.state = y
        return out
