"""Activation sites: the places of the ANN that become spiking neurons.

After normalisation every ReLU-like op (``relu``, ``relu6``, ``hardtanh(0, m)``, ``clamp(0, m)``)
is a ``call_module`` to an :class:`ActivationSite`. In the ANN graph a site computes its clipped
ReLU exactly; calibration observes it; conversion swaps it for a neuron. All site modules live in
the ``sites`` container of the graph module, under sanitized names; ``site.name`` is the readable
name (the module path in the source model) shown to users.
"""

from __future__ import annotations

import re
from typing import Iterator, Optional

import torch
import torch.fx as fx
from torch import nn

SITES = "sites"  # name of the container submodule holding all sites / neurons


class ActivationSite(nn.Module):
    """A ReLU-like activation ``clamp(x, 0, upper)`` at a named place of the network.

    A ``bipolar`` site is not an activation of the ANN but a place where an analog value with a
    negative range (the output of GELU, LayerNorm, attention...) enters a weighted layer: in the
    ANN it is the identity, in the SNN a bipolar neuron, so that the weighted layer is driven by
    spikes.
    """

    def __init__(self, name: str, op: str, upper: Optional[float] = None, bipolar: bool = False):
        super().__init__()
        self.name = name
        self.op = op  # the op it was made from, e.g. "aten.relu", "aten.hardtanh(0, 6)", "spike input"
        self.upper = None if upper is None else float(upper)
        self.bipolar = bool(bipolar)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bipolar:
            return x
        if self.upper is None:
            return torch.relu(x)
        return torch.clamp(x, 0.0, self.upper)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, upper={self.upper}" + (", bipolar=True" if self.bipolar else "")


def attr_name(readable: str, taken: set[str]) -> str:
    """A unique Python identifier for a readable site name (``layer1.0.relu[1]`` -> ``layer1_0_relu_1``)."""
    base = re.sub(r"\W+", "_", readable).strip("_") or "site"
    if base[0].isdigit():
        base = "s_" + base
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def container(gm: fx.GraphModule) -> nn.Module:
    """The ``sites`` submodule of ``gm``, created when missing."""
    if not hasattr(gm, SITES):
        gm.add_submodule(SITES, nn.Module())
    return getattr(gm, SITES)


def site_nodes(gm: fx.GraphModule) -> Iterator[tuple[fx.Node, nn.Module]]:
    """(node, module) for every call to a module in the ``sites`` container, in graph order."""
    for node in gm.graph.nodes:
        if node.op == "call_module" and str(node.target).startswith(SITES + "."):
            yield node, gm.get_submodule(node.target)
