"""Spiking max-pool, for every max-pool left in the time-varying part of the network.

A max-pool of spikes (or of per-step currents) is not the max of the rates. Each window tracks the
accumulated input ``A_t = x_1 + ... + x_t`` of its elements, as the gate of Rueckauer et al. (2017)
does, but instead of passing the current input of the leading element it passes the *increase of
the window maximum*: ``out_t = max(A_t) - max(A_{t-1})``. The sum telescopes, so after any T steps
the summed output is exactly ``max(A_T)`` = T x (max of the mean inputs): the rate code of
``maxpool`` is exact at every T, whichever element leads early on. (Passing the leader's input
instead over-counts every time the lead changes.) Inputs that are spikes of one threshold stay
spikes: the window maximum of spike counts grows by at most one spike per step.

This matters beyond "max-pool not after a ReLU": a max-pool moved before its neuron
(``maxpool(relu(x)) -> relu(maxpool(x))``) pools the per-step *current* of the layer before it,
which varies from step to step unless that layer is in the static prefix (VGG, ResNet-D stems, DLA).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

_POOLS = {
    "max_pool1d": F.max_pool1d, "max_pool2d": F.max_pool2d, "max_pool3d": F.max_pool3d,
    "max_pool2d_with_indices": F.max_pool2d, "adaptive_max_pool2d": F.adaptive_max_pool2d,
}


class SpikingMaxPool(nn.Module):
    """Per step, the increase of each window's maximum of the accumulated input."""

    def __init__(self, kind: str, pool_args: list, name: str = ""):
        super().__init__()
        if kind not in _POOLS:
            raise ValueError(f"unsupported max-pool kind {kind!r}")
        self.kind, self.pool_args, self.name = kind, list(pool_args), name
        self.reset()

    def reset(self) -> None:
        self.acc: Optional[torch.Tensor] = None
        self.pooled: Optional[torch.Tensor] = None  # window max of ``acc`` after the previous step

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "adaptive_max_pool2d":
            return F.adaptive_max_pool2d(x, self.pool_args[0])
        # aten order: kernel, stride=[], padding=0, dilation=1, ceil_mode=False; fill only the
        # arguments the graph node left out (export usually passes kernel and stride).
        defaults = [None, [], 0, 1, False]
        args = list(self.pool_args) + defaults[len(self.pool_args):]
        kernel, stride, padding, dilation, ceil_mode = args[:5]
        return _POOLS[self.kind](x, kernel, stride or None, padding, dilation, ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.acc is None:
            self.acc = x.clone()
        elif x.requires_grad and torch.is_grad_enabled():
            self.acc = self.acc + x  # training: out of place, autograd keeps the old sum
        else:
            self.acc = self.acc.add_(x)
        pooled = self._pool(self.acc)
        out = pooled if self.pooled is None else pooled - self.pooled
        self.pooled = pooled
        return out

    def detach_state(self) -> None:
        """Cut the autograd history of the accumulated input (truncated BPTT)."""
        if self.acc is not None:
            self.acc, self.pooled = self.acc.detach(), self.pooled.detach()

    def config(self) -> dict:
        return {"kind": self.kind, "pool_args": self.pool_args, "name": self.name}

    @classmethod
    def from_config(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "SpikingMaxPool":
        return cls(**config)
