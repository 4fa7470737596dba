"""Move per-channel thresholds into the weights: neurons with threshold 1, same network function.

A per-channel threshold ``theta_c`` means channel ``c`` spikes with amplitude ``theta_c``. Hardware
with one spike amplitude wants threshold 1 everywhere. Because ReLU (and the IF neuron) is
positively homogeneous, dividing the producing layer's output channel ``c`` (weights and bias) by
``theta_c`` and multiplying the consuming layers' input channel ``c`` by ``theta_c`` changes
nothing in the function: ``W2 @ (theta * relu(z / theta)) == W2 @ relu(z)``.

This is possible where a site is fed by one conv/linear that feeds nothing else, and every user of
the site is a conv (groups=1) or linear reading it as its input. Other sites (a ReLU after a
residual add, before a pooling, with a clip) keep their per-channel amplitude, which is equally
exact; :func:`unit_thresholds` reports which sites it rescaled.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx

from spikecast.graph import ops
from spikecast.graph.normalize import _attr, _finish, fresh_copy
from spikecast.graph.sites import site_nodes
from spikecast.graph.trace import _set_attr

aten = torch.ops.aten


def _weight_bias(node: fx.Node) -> tuple[Optional[fx.Node], Optional[fx.Node]]:
    """(weight, bias) get_attr nodes of a non-transposed conv / linear, else (None, None)."""
    if node.op != "call_function":
        return None, None
    p = ops.packet(node)
    if p is aten.convolution and node.args[6]:
        return None, None
    if p not in (aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution, aten.linear):
        return None, None
    w = node.args[1]
    b = node.args[2] if len(node.args) > 2 else None
    if not (isinstance(w, fx.Node) and w.op == "get_attr" and len(w.users) == 1):
        return None, None
    if b is not None and not (isinstance(b, fx.Node) and b.op == "get_attr" and len(b.users) == 1):
        return None, None
    return w, b


def _groups(node: fx.Node) -> int:
    p = ops.packet(node)
    if p is aten.linear:
        return 1
    if p is aten.convolution:
        return int(node.args[8]) if len(node.args) > 8 else 1
    return int(node.args[6]) if len(node.args) > 6 else 1


def unit_thresholds(gm: fx.GraphModule) -> tuple[fx.GraphModule, list[str]]:
    """Return a copy of the calibrated graph ``gm`` in which every site with a per-channel
    threshold that can be rescaled has threshold 1 (factors moved into the adjacent weights), and
    the names of those sites. ``gm`` is untouched."""
    gm = fresh_copy(gm)
    done = []
    for node, site in list(site_nodes(gm)):
        theta = getattr(site, "threshold", None)
        if not isinstance(theta, torch.Tensor) or theta.numel() <= 1 or site.upper is not None:
            continue
        producer = node.args[0]
        if not isinstance(producer, fx.Node) or len(producer.users) != 1:
            continue
        pw, pb = _weight_bias(producer)
        if pw is None:
            continue
        consumers = list(node.users)
        if not consumers or any(_weight_bias(u)[0] is None or u.args[0] is not node or _groups(u) != 1
                                for u in consumers):
            continue
        scale = theta.detach().flatten().double()
        weight = _attr(gm, pw)
        if weight.shape[0] != scale.numel():
            continue
        _set_attr(gm, pw.target, (weight.double() / scale.reshape(-1, *[1] * (weight.dim() - 1))).to(weight.dtype))
        if pb is not None:
            bias = _attr(gm, pb)
            _set_attr(gm, pb.target, (bias.double() / scale).to(bias.dtype))
        for user in consumers:
            uw, _ = _weight_bias(user)
            w = _attr(gm, uw)
            shape = [1, -1] + [1] * (w.dim() - 2)
            _set_attr(gm, uw.target, (w.double() * scale.reshape(shape)).to(w.dtype))
        site.threshold = 1.0
        done.append(site.name)
    return _finish(gm), done
