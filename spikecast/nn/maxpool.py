"""Spiking max-pool, for every max-pool left in the time-varying part of the network.

A max-pool of spikes (or of per-step currents) is not the max of the rates. Each window tracks the
accumulated input ``A_t = x_1 + ... + x_t`` of its elements, as the gate of Rueckauer et al. (2017)
does, but instead of passing the current input of the leading element it passes the *increase of
the window maximum*: ``out_t = max(A_t) - max(A_{t-1})``. The sum telescopes, so after any T steps
the summed output is exactly ``max(A_T)`` = T x (max of the mean inputs): the rate code of
``maxpool`` is exact at every T, whichever element leads early on. (Passing the leader's input
instead over-counts every time the lead changes.) Inputs that are spikes of one threshold stay
spikes: the window maximum of spike counts grows by at most one spike per step.

``mode="gate"`` is the gate of Rueckauer et al. (2017) itself, kept for comparison: per step it
passes the input of the element whose accumulated input leads the window. It over-counts whenever
the lead changes, so its rate is not exact (``benchmarks/bench_maxpool.py`` measures both).

This matters beyond "max-pool not after a ReLU": a max-pool moved before its neuron
(``maxpool(relu(x)) -> relu(maxpool(x))``) pools the per-step *current* of the layer before it,
which varies from step to step unless that layer is in the static prefix (VGG, ResNet-D stems, DLA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spikecast.nn.stateful import State, StatefulModule

_POOLS = {
    "max_pool1d": F.max_pool1d, "max_pool2d": F.max_pool2d, "max_pool3d": F.max_pool3d,
    "max_pool2d_with_indices": F.max_pool2d, "adaptive_max_pool2d": F.adaptive_max_pool2d,
}


class SpikingMaxPool(StatefulModule):
    """Per step, the increase of each window's maximum of the accumulated input.

    State: ``acc`` (the accumulated input) and ``pooled`` (the window maxima of ``acc`` after the
    previous step); both start at zero.
    """

    state_buffers = ("acc", "pooled")
    emits_spikes = True

    MODES = ("max", "gate")

    def __init__(self, kind: str, pool_args: list, name: str = "", mode: str = "max"):
        super().__init__()
        if kind not in _POOLS:
            raise ValueError(f"unsupported max-pool kind {kind!r}")
        if mode not in self.MODES:
            raise ValueError(f"unknown spiking max-pool mode {mode!r}: use one of {', '.join(self.MODES)}")
        self.kind, self.pool_args, self.name, self.mode = kind, list(pool_args), name, mode

    def _pool(self, x: torch.Tensor, return_indices: bool = False):
        if self.kind == "adaptive_max_pool2d":
            return F.adaptive_max_pool2d(x, self.pool_args[0], return_indices=return_indices)
        # aten order: kernel, stride=[], padding=0, dilation=1, ceil_mode=False; fill only the
        # arguments the graph node left out (export usually passes kernel and stride).
        defaults = [None, [], 0, 1, False]
        args = list(self.pool_args) + defaults[len(self.pool_args):]
        kernel, stride, padding, dilation, ceil_mode = args[:5]
        return _POOLS[self.kind](x, kernel, stride or None, padding, dilation, ceil_mode,
                                 return_indices=return_indices)

    def _gate(self, acc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x`` at the element of each window whose accumulated input ``acc`` leads."""
        pooled, index = self._pool(acc, return_indices=True)
        spatial = pooled.dim() - index.dim() + {"max_pool1d": 1, "max_pool3d": 3}.get(self.kind, 2)
        flat = x.flatten(-spatial)
        return flat.gather(-1, index.flatten(-spatial)).view_as(pooled)

    def initial_state(self, x: torch.Tensor) -> State:
        acc = torch.zeros_like(x)
        return acc, self._pool(acc)  # every window holds at least one element: zeros

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        acc, previous = state
        if self.mode == "gate":  # the gate reads the leader from `acc` itself: `pooled` stays unused
            return self._gate(acc, x), (acc + x, previous)
        acc = acc + x
        pooled = self._pool(acc)
        return pooled - previous, (acc, pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "gate":
            out, (self.acc, self.pooled) = self.step(x, (self.acc if self.acc is not None else torch.zeros_like(x),
                                                        None))
            return out
        # the values of `step`, with the accumulator updated in place (0 + x and p - 0 are exact)
        if self.acc is None:
            acc = x.clone()
        elif x.requires_grad and torch.is_grad_enabled():
            acc = self.acc + x  # training: out of place, autograd keeps the old sum
        else:
            acc = self.acc.add_(x)
        pooled = self._pool(acc)
        out = pooled if self.pooled is None else pooled - self.pooled
        self.acc, self.pooled = acc, pooled
        return out

    def config(self) -> dict:
        return {"kind": self.kind, "pool_args": self.pool_args, "name": self.name, "mode": self.mode}

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, pool_args={self.pool_args!r}, name={self.name!r}, mode={self.mode!r}"
