"""Spiking max-pool approximation, for max-pools that do not directly follow a ReLU.

A max-pool of spikes is not the max of the rates. Following Rueckauer et al. (2017), each window
passes on the current input of the element with the largest *accumulated* input so far (a gate
that settles on the element with the highest rate). This is an approximation: early steps may
pass the wrong element. Conversion warns and names every site where it is used. Max-pools directly
after a ReLU are made exact instead (moved before the neuron) and never use this module.
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
    """Gate each pooling window to the input with the largest running sum."""

    def __init__(self, kind: str, pool_args: list, name: str = ""):
        super().__init__()
        if kind not in _POOLS:
            raise ValueError(f"unsupported max-pool kind {kind!r}")
        self.kind, self.pool_args, self.name = kind, list(pool_args), name
        self.reset()

    def reset(self) -> None:
        self.acc: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.acc = x.clone() if self.acc is None else self.acc.add_(x)
        if self.kind == "adaptive_max_pool2d":
            _, idx = F.adaptive_max_pool2d(self.acc, self.pool_args[0], return_indices=True)
        else:
            kernel, stride, padding, dilation, ceil_mode = (self.pool_args + [None, 0, 1, False])[:5]
            _, idx = _POOLS[self.kind](self.acc, kernel, stride or None, padding, dilation, ceil_mode,
                                       return_indices=True)
        flat = x.flatten(2).gather(2, idx.flatten(2))
        return flat.view_as(idx)

    def config(self) -> dict:
        return {"kind": self.kind, "pool_args": self.pool_args, "name": self.name}

    @classmethod
    def from_config(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "SpikingMaxPool":
        return cls(**config)
