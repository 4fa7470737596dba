"""Expectation compensation: non-linear ops inside the spiking part (ECMT, Huang et al. 2024).

A rate-coded SNN is exact for ops that are affine in their time-varying inputs: the mean over
steps of their output is the op applied to the mean of their inputs. GELU, SiLU, hard-swish,
LayerNorm, softmax, sigmoid gates and products of two time-varying tensors (Q·Kᵀ, attention·V,
squeeze-excitation gating) are not. For such an op ``f``, with ``m_t`` the running mean of its
inputs after ``t`` steps, the compensated op emits

    out_t = t·f(m_t) − (t−1)·f(m_{t−1})

so that the running mean of its output, ``(out_1 + ... + out_t) / t = f(m_t)``, is exactly ``f``
of the running mean of its inputs at every step: the network downstream sees the ANN's value as
soon as the inputs' rates have settled.

The pass :func:`compensate` rewrites the graph with two stateful modules and leaves the ATen op
itself untouched (so any op, with any arguments, is handled the same way and the graph stays
serialisable):

* :class:`RunningMean` on each time-varying input of the op (shared when several ops read it);
* :class:`ExpectationDifference` on the op's output (after ``getitem`` for tuple outputs).

A chain of non-linear ops needs no difference and re-averaging in between (``RunningMean`` of an
``ExpectationDifference`` is the identity): ``gelu(layer_norm(x))`` averages ``x`` once and
differences once.

Compensated ops are not accumulate-only: they run on the dense running means at every step. The
inspector names them and the activity report counts their multiply-accumulates separately.
"""

from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.fx as fx
from torch import nn

from spikecast.graph import ops
from spikecast.graph.sites import attr_name
from spikecast.nn.compensation import ExpectationDifference, RunningMean

COMPENSATION = "compensation"  # container submodule of the graph module


def _module(gm: fx.GraphModule, node: fx.Node) -> Optional[nn.Module]:
    if node.op != "call_module":
        return None
    try:
        return gm.get_submodule(node.target)
    except AttributeError:
        return None


def is_running_mean(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(_module(gm, node), RunningMean)


def compensated_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The ATen ops of ``gm`` that run on running means (compensated), in graph order: those that
    read a :class:`RunningMean`, or the (mean-domain) output of another compensated op."""
    found: list[fx.Node] = []
    mean_domain: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if n.op != "call_function" or ops.is_shape_op(n):
            continue
        if any(is_running_mean(gm, a) or a in mean_domain for a in n.all_input_nodes):
            mean_domain.add(n)
            if n.target is not operator.getitem:
                found.append(n)
    return found


def _floating(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return not isinstance(val, torch.Tensor) or val.dtype.is_floating_point


def compensate(gm: fx.GraphModule, offenders: list[fx.Node], varying: set[fx.Node], path_of) -> fx.GraphModule:
    """Compensate the nodes ``offenders`` of ``gm`` in place (``gm`` must be a fresh copy).

    ``varying``: the time-varying nodes (their inputs get running means); ``path_of(node)`` names
    the module path for readable module names."""
    if not offenders:
        return gm
    if not hasattr(gm, COMPENSATION):
        gm.add_submodule(COMPENSATION, nn.Module())
    box = gm.get_submodule(COMPENSATION)
    taken = set(dict(box.named_children()))
    means: dict[fx.Node, fx.Node] = {}

    def add(module: nn.Module, label: str, after: fx.Node, arg: fx.Node) -> fx.Node:
        key = attr_name(label, taken)
        box.add_module(key, module)
        with gm.graph.inserting_after(after):
            new = gm.graph.call_module(f"{COMPENSATION}.{key}", (arg,))
        new.meta = dict(arg.meta)
        return new

    # an offender's output (and its getitems) holds f(running means): "mean domain". Another
    # offender reads it directly - gelu(layer_norm(x)) averages x once and differences once.
    offender_set = set(offenders)
    mean_domain = set(offenders) | {u for n in offenders for u in n.users if u.target is operator.getitem}
    for node in offenders:
        readable = f"{path_of(node) or '<top>'}:{node.name}"
        for arg in dict.fromkeys(ops.tensor_args(node)):  # each once, in argument order
            if arg in mean_domain or arg not in varying or not _floating(arg):
                continue  # static operands and integer indices pass through unchanged
            if arg not in means:
                means[arg] = add(RunningMean(f"mean of {arg.name}"), f"mean_{arg.name}", arg, arg)
            node.replace_input_with(arg, means[arg])
        # the op's output, or each used element of a tuple output, becomes per-step increments
        outputs = [u for u in node.users if u.target is operator.getitem] if isinstance(
            node.meta.get("val"), (tuple, list)) else [node]
        for out in outputs:
            users = [u for u in out.users if u not in offender_set and not is_running_mean(gm, u)]
            if not users or not _floating(out):
                continue
            diff = add(ExpectationDifference(readable), f"diff_{out.name}", out, out)
            for user in users:
                user.replace_input_with(out, diff)
    gm.graph.eliminate_dead_code()
    used = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    for key, _ in list(box.named_children()):
        if f"{COMPENSATION}.{key}" not in used:
            delattr(box, key)
    return gm
