"""Integer-arithmetic form of a spiking network: spikes reproducible bit for bit on any runtime.

A spiking network is a chaotic system at its thresholds: a membrane potential that lands within
one float32 rounding of its threshold fires in one runtime and not in another, and the difference
then travels through every later layer. Two runtimes summing the same convolution in a different
order (PyTorch's oneDNN, onnxruntime's MLAS, a GPU) therefore disagree on a few spikes per
thousand images even though both are correct to 1e-7.

:func:`integer_network` removes the cause. Every weighted layer that feeds the spiking part is
rewritten so that its reduction (the convolution / matrix product) runs over integers only:

* weights become per-output-channel symmetric integers ``q`` (int8 by default, stored as float
  tensors holding exact integers) with a scale ``s_o`` applied after the reduction;
* inputs that are spikes of a neuron (``+-theta`` or 0) enter as their sign (-1, 0, 1), the
  threshold moving into the weights before they are quantised (``W[o, c] * theta_c``);
* the analog network input is quantised to a symmetric ``input_bits`` integer grid
  (scale ``s_in`` from calibration images: ``max|x| / (2^(b-1) - 1)``).

A sum of integers below 2^24 is exact in float32 whatever the order, so every runtime computes the
same accumulator; what follows (``* s_o``, ``+ bias``, the residual add, the neuron update) is
elementwise, where IEEE arithmetic gives one result. The network then fires the same spikes in
PyTorch and in onnxruntime (with graph fusions off, see :class:`spikecast.export.OnnxSpikingNetwork`).
Layers whose input is neither (e.g. a classifier after average pooling) keep fake-quantised
weights; they do not feed a neuron, and the metadata lists them.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx

from spikecast.nn.leaky import LeakyNeuron
from spikecast.nn import kernels as _kernels  # noqa: F401 - registers the spikecast:: integer ops
from spikecast.nn.neuron import IFNeuron
from spikecast.data import as_loader, split_batch
from spikecast.graph.normalize import fresh_copy
from spikecast.graph.ops import packet, weighted_layers
from spikecast.quant.weights import BITS, fake_quantize_weight, graph_tensor, quantize_tensor
from spikecast.runtime.network import SpikingNetwork

aten = torch.ops.aten
# float32 holds every integer below 2^24 exactly: the accumulator bound for exact reductions
EXACT_LIMIT = 1 << 24
_TRANSPOSED = (aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d)


def input_scale(calib: Any, bits: int = 8) -> float:
    """Symmetric ``bits``-bit scale covering the largest ``|x|`` among the calibration images."""
    peak = 0.0
    for batch in as_loader(calib):
        x, _ = split_batch(batch)
        if not torch.isfinite(x).all():
            raise ValueError("calibration images contain NaN or Inf")
        peak = max(peak, float(x.abs().max()))
    if peak == 0.0:
        raise ValueError("calibration images are empty or all zero: cannot choose an input scale")
    return peak / (2 ** (bits - 1) - 1)


def integer_network(snn: SpikingNetwork, calib: Any = None, *, bits: int = 8, input_bits: int = 8,
                    scale: Optional[float] = None) -> SpikingNetwork:
    """A copy of ``snn`` whose layers feeding neurons accumulate integers only (``snn`` is untouched).

    ``bits``: weight bits (8 or 4; per output channel, symmetric). ``input_bits``: the grid of the
    analog input, its scale taken from ``calib`` (images, a tensor / ``(x,)`` / loader) or given as
    ``scale``. Raises ``ValueError`` for random spike masking (spikes would not be ``+-theta``), for
    an accumulator that could exceed 2^24 (inexact in float32) and without ``calib`` or ``scale``.
    ``metadata["integer_arithmetic"]`` records the bits, the input scale and which layers are
    integer (``"spikes"`` / ``"input"``) or left in float.
    """
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if not 2 <= input_bits <= 16:
        raise ValueError(f"input_bits must be between 2 and 16, got {input_bits}")
    leaky = [name for name, n in snn.neurons().items() if isinstance(n, LeakyNeuron)]
    if leaky:
        raise ValueError("integer arithmetic is derived for IF neurons that send their threshold; leaky neurons (read "
                         f"from NIR) send 1 and decay: {', '.join(repr(m) for m in leaky[:5])}")
    masked = [name for name, n in snn.neurons().items() if n.mask_ratio > 0]
    if masked:
        raise ValueError("integer arithmetic needs spikes of exactly +-threshold; neurons with random spike masking: "
                         + ", ".join(repr(m) for m in masked))
    multi = [name for name, n in snn.neurons().items() if n.levels > 1]
    if multi:
        raise ValueError("integer arithmetic reads spikes as their sign; multi-level neurons (levels > 1) send up to "
                         f"`levels` spikes per step: {', '.join(repr(m) for m in multi[:5])}; convert with levels=1")
    gm = fresh_copy(snn.graph_module)
    graph = gm.graph
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    in_scale: Optional[float] = None
    layers: dict[str, str] = {}
    counter = 0

    def constant(tensor: torch.Tensor, hint: str) -> fx.Node:
        nonlocal counter
        name = f"int_{hint}_{counter}"
        counter += 1
        gm.register_buffer(name, tensor)
        return graph.get_attr(name)

    for node, weight_name, bias_name in weighted_layers(gm):
        source = node.args[0]
        neuron = _neuron_of(gm, source)
        weight = graph_tensor(gm, weight_name).detach().float()
        if packet(node) in _TRANSPOSED or packet(node) is aten.convolution:
            # transposed convolutions hold weights [in, out, ...]: per-output-channel scales need the other axis
            layers[_layer_name(node, weight_name)] = "float"
            continue
        if neuron is not None:
            kind = "spikes"
            theta = neuron.threshold.detach().float()
            weight = weight * _input_axis(theta, weight, _groups(node))  # the threshold moves into the weights
        elif source in inputs:
            kind = "input"
            if in_scale is None:
                if scale is None and calib is None:
                    raise ValueError("integer_network needs calib images (or scale=...) to quantise the network input")
                in_scale = float(scale) if scale is not None else input_scale(calib, input_bits)
                if not in_scale > 0:
                    raise ValueError(f"input scale must be positive, got {in_scale}")
        else:
            fake_quantize_weight(gm, weight_name, bits)  # not feeding a neuron: int weights, float accumulation
            layers[_layer_name(node, weight_name)] = "float"
            continue
        qw = quantize_tensor(weight, bits)
        in_max = 1 if kind == "spikes" else 2 ** (input_bits - 1) - 1
        fan_in = qw.q[0].numel()
        bound = fan_in * (2 ** (bits - 1) - 1) * in_max
        if bound >= EXACT_LIMIT:
            raise ValueError(f"{_layer_name(node, weight_name)}: an accumulator of {fan_in} terms of {bits}-bit weights "
                             f"and {in_max}-valued inputs can reach {bound} >= 2^24, inexact in float32; "
                             "lower input_bits or bits")
        out_scale = qw.scale * (in_scale if kind == "input" else 1.0)
        with graph.inserting_before(node):
            if kind == "spikes":
                integer_in = graph.call_function(aten.sign.default, (source,))
            else:
                limit = float(2 ** (input_bits - 1) - 1)
                scaled = graph.call_function(aten.div.Tensor, (source, in_scale))
                integer_in = graph.call_function(aten.clamp.default,
                                                 (graph.call_function(aten.round.default, (scaled,)), -limit, limit))
            q_node = constant(qw.q.float(), "weight")
            args = list(node.args)
            args[0], args[1] = integer_in, q_node
            if len(args) > 2:
                args[2] = None
            kwargs = {k: v for k, v in node.kwargs.items() if k != "bias"}
            acc = graph.call_function(node.target, tuple(args), kwargs)
            # the scale (and bias) act on the output channel axis: 1 for convolutions, last for linear
            channel_shape = [-1] if packet(node) is aten.linear else [1, -1] + [1] * (qw.q.dim() - 2)
            scale_node = constant(out_scale.reshape(channel_shape), "scale")
            last = graph.call_function(aten.mul.Tensor, (acc, scale_node))
            if bias_name is not None:
                bias_node = constant(graph_tensor(gm, bias_name).detach().float().reshape(channel_shape), "bias")
                last = graph.call_function(aten.add.Tensor, (last, bias_node))
        node.replace_all_uses_with(last)
        graph.erase_node(node)
        layers[_layer_name(node, weight_name)] = kind
    graph.eliminate_dead_code()
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    metadata = dict(snn.metadata)
    metadata["integer_arithmetic"] = {"bits": bits, "input_bits": input_bits, "input_scale": in_scale,
                                      "layers": layers}
    metadata["weight_quantization"] = {"bits": bits, "scheme": "symmetric per output channel, integer accumulation",
                                       "layers": sum(1 for k in layers.values() if k != "float")}
    return SpikingNetwork(gm, snn.config, metadata)


#: aten op -> its integer kernel (spikecast.nn.kernels): same arguments, same values
_INT8_KERNELS = {aten.conv2d.default: torch.ops.spikecast.spike_conv2d.default,
                 aten.linear.default: torch.ops.spikecast.spike_linear.default}


def int8_kernels(snn: SpikingNetwork) -> SpikingNetwork:
    """A copy of an integer-arithmetic network (:func:`integer_network`) whose layers that read
    spike signs sum them with int8 instructions (``spikecast::spike_conv2d`` / ``spike_linear``:
    oneDNN u8 x s8 -> int32 on the CPU) instead of float32 - the same integers, so the same spikes,
    bit for bit. Layers with a dense input (the first layer, compensated ops, the classifier
    after a pool) keep their float computation. ``snn`` is untouched.
    ``metadata["integer_arithmetic"]["kernels"]`` counts the layers that changed."""
    if "integer_arithmetic" not in snn.metadata:
        raise ValueError("int8_kernels needs an integer-arithmetic network: call integer_network(snn, calib) first")
    gm = fresh_copy(snn.graph_module)
    graph = gm.graph
    changed = 0
    codes_of: dict[fx.Node, fx.Node] = {}  # neuron output -> its spike codes
    for node in list(graph.nodes):
        kernel = _INT8_KERNELS.get(node.target) if node.op == "call_function" else None
        sign = node.args[0] if node.args else None
        if kernel is None or not (isinstance(sign, fx.Node) and sign.target is aten.sign.default):
            continue
        spikes = sign.args[0]
        if spikes not in codes_of:
            with graph.inserting_after(sign):
                # spike_codes as aten ops (a saved graph holds aten ops only): sign + 1 as bytes
                shifted = graph.call_function(aten.add.Tensor, (sign, 1))
            with graph.inserting_after(shifted):
                codes_of[spikes] = graph.call_function(aten.to.dtype, (shifted, torch.uint8))
        node.target = kernel
        node.args = (codes_of[spikes], *node.args[1:])
        changed += 1
    for spikes, codes in codes_of.items():
        neuron = _neuron_of(gm, spikes)
        others = [u for u in spikes.users if u.target is not aten.sign.default]
        if neuron is None or not others:
            continue
        # every other reader (a residual add...) gets theta * (codes - 1): the same values (spikes of an
        # integer network are exactly -theta / 0 / +theta), read from one byte per neuron instead of
        # four, so a compiled step never writes the float spikes out
        with graph.inserting_after(codes):
            as_float = graph.call_function(aten.to.dtype, (codes, torch.float32))
        with graph.inserting_after(as_float):
            signs = graph.call_function(aten.sub.Tensor, (as_float, 1))
        with graph.inserting_after(signs):
            theta = graph.get_attr(f"{spikes.target}.threshold")
        with graph.inserting_after(theta):
            value = graph.call_function(aten.mul.Tensor, (signs, theta))
        for user in others:
            user.replace_input_with(spikes, value)
    graph.lint()
    gm.recompile()
    metadata = dict(snn.metadata)
    metadata["integer_arithmetic"] = dict(metadata["integer_arithmetic"], kernels=f"int8 ({changed} layers)")
    return SpikingNetwork(gm, snn.config, metadata)


def _neuron_of(gm: fx.GraphModule, node: Any) -> Optional[IFNeuron]:
    if isinstance(node, fx.Node) and node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if isinstance(module, IFNeuron):
            return module
    return None


def _groups(node: fx.Node) -> int:
    if packet(node) is aten.linear:
        return 1
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    return int(groups)


def _input_axis(theta: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """The neuron threshold (scalar or one per channel, shaped ``[1, C, ...]``) laid out like
    ``weight`` ``[out, in / groups, ...]``: output channel ``o`` of group ``g`` reads inputs
    ``g * in/groups ...``."""
    if theta.numel() == 1:
        return theta.reshape(())
    channels = theta.reshape(-1)
    per_group = weight.shape[1]
    if channels.numel() != per_group * groups or weight.shape[0] % groups:
        raise ValueError(f"threshold with {channels.numel()} channels cannot feed a weight of shape "
                         f"{tuple(weight.shape)} in {groups} group(s)")
    table = channels.reshape(groups, per_group).repeat_interleave(weight.shape[0] // groups, dim=0)
    return table.reshape(list(table.shape) + [1] * (weight.dim() - 2))


def _layer_name(node: fx.Node, weight_name: str) -> str:
    return weight_name.rsplit(".", 1)[0] or node.name

