"""The stateful modules of expectation compensation (the pass that inserts them is
:mod:`spikecast.convert.compensation`).

* :class:`RunningMean`: the mean of its inputs over the steps since the last reset;
* :class:`ExpectationDifference`: ``out_t = t*y_t - (t-1)*y_{t-1}``, per-step increments whose
  running mean is ``y_t``.

Both need the step index: it is part of their state (an int64 scalar, see
:func:`spikecast.nn.stateful.step_counter`), so their pure steps are

    RunningMean:           (x, (sum, t))     -> ((sum + x) / (t + 1), (sum + x, t + 1))
    ExpectationDifference: (y, (y_prev, t))  -> ((t + 1) * y - t * y_prev, (y, t + 1))

and an exported step graph carries the counters as explicit inputs / outputs like any membrane.
"""

from __future__ import annotations

import torch

from spikecast.nn.stateful import State, StatefulModule, step_counter


class _Compensation(StatefulModule, register=False):
    """Common part of the two compensation modules: a readable name (their whole config), a
    dense state tensor and the step count since the last reset."""

    def __init__(self, name: str = ""):
        super().__init__()
        self.name = name

    def config(self) -> dict:
        return {"name": self.name}

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def _mean(total: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return total / t.to(total.dtype)


def _difference(y: torch.Tensor, previous: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t*y - (t-1)*previous`` for the step count ``t`` after this step."""
    return t.to(y.dtype) * y - (t - 1).to(y.dtype) * previous


class RunningMean(_Compensation):
    """Mean of its inputs over the steps since the last reset (state: their running sum, the step count)."""

    state_buffers = ("sum", "t")

    def initial_state(self, x: torch.Tensor) -> State:
        return torch.zeros_like(x), step_counter(x)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        total, t = state
        total, t = total + x, t + 1
        return _mean(total, t), (total, t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the values of `step`, with the sum updated in place (0 + x is exact)
        if self.sum is None:
            total, t = x.clone(), step_counter(x) + 1
        elif x.requires_grad and torch.is_grad_enabled():
            total, t = self.sum + x, self.t + 1
        else:
            total, t = self.sum.add_(x), self.t + 1
        self.sum, self.t = total, t
        return _mean(total, t)


class ExpectationDifference(_Compensation):
    """``out_t = t·y_t − (t−1)·y_{t−1}``: turns a running value into per-step increments whose
    running mean is ``y_t`` (state: the previous ``y``, the step count)."""

    state_buffers = ("previous", "t")

    def initial_state(self, y: torch.Tensor) -> State:
        return torch.zeros_like(y), step_counter(y)

    def step(self, y: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        previous, t = state
        t = t + 1
        return _difference(y, previous, t), (y, t)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # first step: 1*y - 0*0 is y exactly, so no arithmetic
        if self.previous is None:
            out, t = y, step_counter(y) + 1
        else:
            t = self.t + 1
            out = _difference(y, self.previous, t)
        self.previous, self.t = y, t
        return out
