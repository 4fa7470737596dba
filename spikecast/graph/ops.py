"""The op vocabulary: which ATen ops commute with averaging over time.

A rate-coded SNN is correct when every operation between neurons is affine in its time-varying
input: then the time-mean of the op's output equals the op applied to the time-mean of its input,
so it can run unchanged once per step. This module is the single place that says which ops are
such. Anything not listed is non-linear and cannot run inside the spiking part of a network (it
may still run in the static prefix, which is computed once on the analog input).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

aten = torch.ops.aten

# Weighted layers: affine in the input when the weight is a constant.
WEIGHTED = {
    aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution,
    aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d,
    aten.linear,
}

# Ops that are linear (or affine with constant extra operands) in every tensor argument.
LINEAR = {
    # shape and layout
    aten.view, aten.reshape, aten._unsafe_view, aten.flatten, aten.unflatten, aten.permute,
    aten.transpose, aten.t, aten.expand, aten.squeeze, aten.unsqueeze, aten.contiguous,
    aten.clone, aten.alias, aten.detach, aten.slice, aten.select, aten.narrow, aten.split,
    aten.split_with_sizes, aten.chunk, aten.unbind, aten.cat, aten.stack, aten.repeat,
    aten.flip, aten.roll, aten.pixel_shuffle, aten.pixel_unshuffle, aten.channel_shuffle,
    aten.index_select, aten.movedim, aten.lift_fresh_copy, aten._to_copy,
    # padding (constant value: an affine constant, the same at every step)
    aten.pad, aten.constant_pad_nd, aten.zero_pad2d if hasattr(aten, "zero_pad2d") else aten.pad,
    # averaging and sums
    aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d, aten.adaptive_avg_pool1d,
    aten.adaptive_avg_pool2d, aten.adaptive_avg_pool3d, aten.mean, aten.sum,
    aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_bilinear2d,
    # elementwise linear
    aten.add, aten.sub, aten.neg, aten.rsub,
    # eval-mode batch norm with constant statistics is a per-channel affine map
    aten._native_batch_norm_legit_no_training, aten.batch_norm,
    # identity in eval mode
    aten.dropout, aten.feature_dropout, aten.alpha_dropout,
}

# Products: linear when at most one operand varies in time (the other is static).
PRODUCTS = {aten.mul, aten.div, aten.mm, aten.bmm, aten.matmul, aten.einsum, aten.addmm}

# Python-level helpers that export leaves in the graph; they never touch tensor values.
STRUCTURAL_FUNCTIONS = {operator.getitem, operator.mul, operator.add, operator.floordiv, operator.sub}

MAXPOOLS = {aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.max_pool2d_with_indices,
            aten.adaptive_max_pool2d}

DROPOUTS = {aten.dropout, aten.feature_dropout, aten.alpha_dropout}


def packet(node: fx.Node):
    """The OpOverloadPacket of a call_function node (``aten.relu`` for ``aten.relu.default``)."""
    target = node.target
    return getattr(target, "overloadpacket", target)


def is_shape_op(node: fx.Node) -> bool:
    """True for nodes that compute sizes (SymInts), not tensor values."""
    target = node.target
    if target in STRUCTURAL_FUNCTIONS and target is not operator.getitem:
        return True
    return getattr(target, "overloadpacket", None) in {aten.sym_size, aten.sym_numel, aten.sym_stride}


def tensor_args(node: fx.Node) -> list[fx.Node]:
    """Node inputs of ``node`` that carry tensors (not sizes), once per occurrence: ``mul(x, x)``
    lists ``x`` twice (``node.all_input_nodes`` would deduplicate it and hide the square)."""
    occurrences: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), occurrences.append)
    out = []
    for arg in occurrences:
        val = arg.meta.get("val")
        if arg.op == "get_attr" or isinstance(val, torch.Tensor) or (
            isinstance(val, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in val)
        ):
            out.append(arg)
    return out


def weighted_layers(gm: fx.GraphModule) -> list[tuple[fx.Node, str, "str | None"]]:
    """``(node, weight attribute, bias attribute or None)`` of every weighted layer whose weight is
    a constant of the graph (``get_attr``), in graph order - what fine-tuning trains and weight
    quantisation quantises."""
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or packet(node) not in WEIGHTED or len(node.args) < 2:
            continue
        weight = node.args[1]
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
            continue
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        bias_name = str(bias.target) if isinstance(bias, fx.Node) and bias.op == "get_attr" else None
        out.append((node, str(weight.target), bias_name))
    return out


# Ops that move values around without computing new ones (and zero padding): spikes stay spikes.
SPIKE_PRESERVING = {aten.view, aten.reshape, aten._unsafe_view, aten.flatten, aten.unflatten, aten.permute,
                    aten.contiguous, aten.clone, aten.pad, aten.constant_pad_nd, aten.slice, aten.select, aten.cat,
                    aten.stack, aten.transpose, aten.t, aten.squeeze, aten.unsqueeze, aten.alias, aten.expand,
                    aten.split, aten.split_with_sizes, aten.chunk, aten.unbind, aten.roll, aten.flip,
                    aten.pixel_shuffle, aten.pixel_unshuffle, aten.channel_shuffle, aten.movedim,
                    # a per-channel affine map of spikes (BatchNorm after the activation, ConvMixer):
                    # its scale folds into the next layer's weights and its shift is a constant current
                    aten._native_batch_norm_legit_no_training, aten.batch_norm,
                    # a sum of spike trains (a residual of spikes): each input's events are accumulates
                    aten.add, aten.sub}


def spike_driven(node: fx.Node, is_spike_source) -> bool:
    """True when the weighted layer ``node`` reads only spikes: outputs of nodes for which
    ``is_spike_source(n)`` holds (neurons, spiking max-pools, activation sites), moved around by
    shape ops and zero padding. Each input event is then a weight accumulate (AC); any other input
    is an analog value and costs multiply-accumulates (MAC)."""
    stack, seen = [node.args[0]], set()
    while stack:
        cur = stack.pop()
        if not isinstance(cur, fx.Node) or cur in seen:
            continue
        seen.add(cur)
        if is_spike_source(cur):
            continue
        if cur.op == "call_function" and packet(cur) in SPIKE_PRESERVING:
            stack.extend(a for a in tensor_args(cur) if a.op != "get_attr")
        elif cur.op == "call_function" and (is_shape_op(cur) or cur.target is operator.getitem):
            stack.extend(a for a in tensor_args(cur) if a.op != "get_attr")
        else:
            return False
    return True


def node_macs(gm: fx.GraphModule, *inputs) -> dict[str, float]:
    """Multiply-accumulates per input item of every call_function / call_module node of ``gm``,
    from one run on ``inputs``: FLOPs / 2 where torch's flop counter knows the op (convolutions,
    matrix products, attention), else one per output element (elementwise ops, normalisation,
    softmax: a lower bound of their cost)."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = int(inputs[0].shape[0]) if inputs and hasattr(inputs[0], "shape") and inputs[0].dim() else 1
    out: dict[str, float] = {}

    class Counter(fx.Interpreter):
        def run_node(self, n):
            if n.op not in ("call_function", "call_module") or is_shape_op(n) or n.target is operator.getitem:
                return super().run_node(n)
            with FlopCounterMode(display=False) as counter:
                value = super().run_node(n)
            flops = counter.get_total_flops()
            if packet(n) is aten.scaled_dot_product_attention if n.op == "call_function" else False:
                # (the CPU kernel is not in the flop counter's table) Q·Kᵀ and A·V: N·M·(D + Dv) MACs per head
                q, k, v = (self.env[a] for a in n.args[:3])
                out[n.name] = q.shape[:-1].numel() * k.shape[-2] * (q.shape[-1] + v.shape[-1]) / batch
            elif flops:
                out[n.name] = flops / 2 / batch
            else:
                tensors = value if isinstance(value, (tuple, list)) else (value,)
                out[n.name] = sum(t.numel() for t in tensors if isinstance(t, torch.Tensor)) / batch
            return value

    with torch.inference_mode():
        Counter(gm).run(*inputs)
    return out


def node_shapes(gm: fx.GraphModule, *inputs) -> dict[str, tuple[int, ...]]:
    """Output shape of every tensor-valued node of ``gm``, from one run on ``inputs``."""
    shapes: dict[str, tuple[int, ...]] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if isinstance(value, torch.Tensor):
                shapes[n.name] = tuple(value.shape)
            return value

    with torch.inference_mode():
        Recorder(gm).run(*inputs)
    return shapes
