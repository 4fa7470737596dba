"""Weight quantisation for deployment: per-output-channel symmetric int8 / int4 (fake-quant).

Each weighted layer's weight ``W[c, ...]`` becomes ``s_c * q[c, ...]`` with integers
``q in [-(2^(b-1) - 1), 2^(b-1) - 1]`` and ``s_c = max|W[c]| / (2^(b-1) - 1)`` (symmetric, so zero
stays exactly zero and no zero-point enters the accumulator). The network keeps float tensors
holding exactly those values (fake-quant), so the same runtime, validator and ONNX export apply.

On integer hardware the scale is not applied to the weights but moved into the neuron: a layer
feeding a neuron accumulates ``q . spikes`` in integers, and the neuron of channel ``c`` fires
when that sum crosses ``theta_c / s_c`` (bias and initial charge divided by ``s_c`` too) - the
same spikes, with thresholds rescaled by the weight scales. :func:`integer_form` returns those
integer weights and rescaled thresholds for the layers that feed a neuron directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.fx as fx

from spikecast.nn.neuron import IFNeuron
from spikecast.graph.normalize import fresh_copy
from spikecast.graph.ops import weighted_layers
from spikecast.runtime.network import SpikingNetwork

BITS = (8, 4, 2)


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer weight ``q`` (int8 storage) and per-output-channel scale ``s`` with ``W ~ s * q``."""

    q: torch.Tensor
    scale: torch.Tensor
    bits: int

    def dequantize(self) -> torch.Tensor:
        return self.q.float() * self.scale.reshape(-1, *([1] * (self.q.dim() - 1)))


def quantize_tensor(weight: torch.Tensor, bits: int = 8) -> QuantizedWeight:
    """Per-output-channel (dim 0) symmetric quantisation of ``weight`` to ``bits`` bits."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if weight.dim() < 1 or weight.numel() == 0:
        raise ValueError("cannot quantise an empty weight")
    qmax = 2 ** (bits - 1) - 1
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero channel stays zero
    q = torch.clamp(torch.round(flat / scale[:, None]), -qmax, qmax).to(torch.int8)
    return QuantizedWeight(q.reshape(weight.shape), scale, bits)


def quantize_graph_weights(gm: fx.GraphModule, bits: int = 8,
                           skip: Optional[set[str]] = None) -> tuple[fx.GraphModule, dict[str, QuantizedWeight]]:
    """Copy of ``gm`` with every weighted layer's weight fake-quantised (biases stay float).

    ``skip``: weight attribute names to leave in float. Returns the new graph and the integer
    form of each quantised weight by attribute name.
    """
    out = fresh_copy(gm)
    quantized: dict[str, QuantizedWeight] = {}
    for _, weight, _bias in weighted_layers(out):
        if skip and weight in skip:
            continue
        quantized[weight] = fake_quantize_weight(out, weight, bits)
    out.recompile()
    return out, quantized


def fake_quantize_weight(gm: fx.GraphModule, target: str, bits: int) -> QuantizedWeight:
    """Replace the weight tensor ``gm.<target>`` by its fake-quantised copy; return its integer form.

    A new tensor is registered (never an in-place edit), so a graph copied with ``fresh_copy``
    leaves its source's float weights alone."""
    *parents, leaf = target.split(".")
    owner = gm.get_submodule(".".join(parents)) if parents else gm
    tensor = getattr(owner, leaf)
    qw = quantize_tensor(tensor, bits)
    new = qw.dequantize().to(tensor.dtype).to(tensor.device)
    delattr(owner, leaf)
    if isinstance(tensor, torch.nn.Parameter):
        owner.register_parameter(leaf, torch.nn.Parameter(new, requires_grad=False))
    else:
        owner.register_buffer(leaf, new)
    return qw


def quantize_weights(snn: SpikingNetwork, bits: int = 8) -> SpikingNetwork:
    """A copy of ``snn`` with per-channel symmetric ``bits``-bit weights (``snn`` is untouched).

    The first layer (on the analog input) is quantised too; ``metadata["weight_quantization"]``
    records the bit width, the number of layers and the largest relative weight change.
    """
    graph, quantized = quantize_graph_weights(snn.graph_module, bits)
    errors = []
    for name, qw in quantized.items():
        w = graph_tensor(snn.graph_module, name).detach().float()
        errors.append(float((qw.dequantize() - w).norm() / w.norm().clamp(min=1e-12)))
    metadata = dict(snn.metadata)
    metadata["weight_quantization"] = {"bits": bits, "scheme": "symmetric per output channel", "layers": len(quantized),
                                       "max_relative_error": round(max(errors, default=0.0), 6)}
    return SpikingNetwork(graph, snn.config, metadata)


def integer_form(snn: SpikingNetwork) -> dict[str, dict]:
    """Integer weights and neuron thresholds in accumulator units, for layers feeding a neuron directly.

    For a weighted layer whose output goes straight into a neuron of channel ``c`` (no other op in
    between), returns ``{neuron name: {"weight": q (int8), "scale": s, "threshold": theta_c / s_c}}``.
    Call on a quantised network (:func:`quantize_weights`): then ``s * q`` is its weight exactly.
    """
    gm = snn.graph_module
    out = {}
    for node, weight, _ in weighted_layers(gm):
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        neuron = gm.get_submodule(users[0].target)
        if not isinstance(neuron, IFNeuron):
            continue
        qw = quantize_tensor(graph_tensor(gm, weight), _bits_of(snn) or 8)
        theta = neuron.threshold
        # per-channel thresholds are shaped [1, C, 1, ...]: put the scales on the same channel axis
        scale = qw.scale.reshape([1, -1] + [1] * (theta.dim() - 2)) if theta.dim() >= 2 else qw.scale
        out[neuron.name] = {"weight": qw.q, "scale": qw.scale, "threshold": theta / scale}
    return out


def _bits_of(snn: SpikingNetwork) -> Optional[int]:
    return (snn.metadata.get("weight_quantization") or {}).get("bits")


def graph_tensor(gm: fx.GraphModule, target: str) -> torch.Tensor:
    """The tensor at dotted attribute path ``target`` of ``gm`` (registered or plain attribute)."""
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
