"""NIR export and import: the spiking network as a Neuromorphic Intermediate Representation graph.

NIR (``pip install nir``) is the exchange format that snnTorch, Norse, sinabs (SynSense Speck),
Rockpool (Xylo), Spyx, Lava-DL and the SpiNNaker2 toolchain read or write. A NIR file only runs
"the same" elsewhere when its nodes mean the same thing to every reader, so this module exports a
network only when every neuron has semantics a NIR ``IF`` node plus documented reader settings
reproduce exactly, and refuses the rest with the module path of every offender.

**What is exported** (:func:`to_nir`): ``Input``; ``Conv2d`` / ``Affine`` (BatchNorm is already
folded into them; biases stay biases); ``AvgPool2d`` or ``SumPool2d``; ``Flatten``; ``IF``;
residual sums as several edges into one node (NIR sums a node's inputs); ``Output``. Skip
connections that are plain copies of spikes (identity, or the option-A shortcut's strided slice
with zero channels) become 1x1 ``Conv2d`` nodes with 0/1 selection weights.

**Units.** spikecast's neuron with threshold ``theta`` sends ``theta`` per spike; NIR's ``IF``
sends 1. The exporter therefore writes every ``IF`` with ``v_threshold = 1`` and ``r = 1``, divides
each layer feeding a neuron by that neuron's (per-channel) threshold, and multiplies each layer
reading spikes by the sending neuron's threshold: the same network, with thresholds of 1 that
every reader accepts (snnTorch asserts one threshold per layer). A network already in this form
(the ``"nir"`` conversion profile, :func:`nir_form`) is exported weight for weight, so
``from_nir(to_nir(snn))`` is bit-identical to ``snn``.

**Neuron semantics written into every IF node's metadata** (:data:`IF_SEMANTICS`): reset by
subtraction, membrane 0 at the start, at most one spike per step, fires when ``v >= v_threshold``,
no membrane floor, input current ``r * I`` added once per step (Euler, dt = 1). The NIR spec's IF
resets *to* ``v_reset``; readers differ (sinabs: subtraction, several spikes per step, floor at
``-v_threshold``; snnTorch: a ``Leaky`` neuron with ``beta=0.9``). :data:`READER_SETTINGS` gives
the reader-side settings that reproduce these semantics; ``benchmarks/bench_nir.py`` measures
them.

**Import** (:func:`from_nir`): ``Input``, ``Output``, ``Conv2d``, ``Conv1d``, ``Affine``,
``Linear``, ``Scale``, ``AvgPool2d``, ``SumPool2d``, ``Flatten`` and ``IF`` (reset as its metadata
states, else the spec's reset to ``v_reset``; only ``v_reset = 0``) become a
:class:`~spikecast.runtime.network.SpikingNetwork` that ``validate``, ``report`` and the energy
model use like a converted one. ``LIF`` and ``CubaLIF`` nodes become
:class:`~spikecast.nn.leaky.LeakyNeuron` modules: NIR states them as differential equations, so
the caller gives the time step (``dt=``; snnTorch writes its neurons for ``dt = 1e-4``) and they
run with forward Euler (:mod:`spikecast.nn.leaky`), resetting as their metadata states, else to
``v_reset`` as the spec says. ``to_nir`` writes them back as they were read (with ``dt`` and the
reset in their metadata). Other leaky or delay nodes (``LI``, ``CubaLI``, ``I``, ``Delay``,
``Threshold``) are refused with their node names.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import operator
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from spikecast.errors import UnsupportedOperationError, UnsupportedSite
from spikecast.graph import ops
from spikecast.graph.trace import module_path, op_name
from spikecast.nn.leaky import LeakyNeuron
from spikecast.nn.neuron import IFNeuron
from spikecast.nn.simulation import SimulationConfig
from spikecast.runtime.network import SpikingNetwork

aten = torch.ops.aten
PathLike = Union[str, os.PathLike]

#: The neuron semantics spikecast writes into every exported ``IF`` node's metadata (and assumes
#: when it reads a node that carries them).
IF_SEMANTICS: dict[str, Any] = {
    "producer": "spikecast",
    "reset": "subtract",          # v <- v - v_threshold when it fires (the spec's IF resets to v_reset)
    "v_initial": 0.0,             # membrane at the first step
    "spikes_per_step": 1,         # binary: at most one spike per step
    "fire": "v >= v_threshold",   # the spec writes v > v_threshold; equality is measure-zero in float
    "membrane_floor": "none",     # no lower bound on v (sinabs' importer sets -v_threshold)
    "integration": "v <- v + r * I once per step (dt = 1)",
}

#: How to make each reader run an exported file with :data:`IF_SEMANTICS` (measured by
#: ``benchmarks/bench_nir.py`` and ``tests/test_nir.py``).
READER_SETTINGS: dict[str, str] = {
    "sinabs": ("load with nirtorch.nir_to_torch(graph, {node type: lambda n: sinabs.nir._import_sinabs_module(n, "
               "batch_size=B, num_timesteps=None)}) instead of sinabs.from_nir (which goes through nirtorch's legacy "
               "load, whose executor runs a branching graph - residual skips - out of order); then on every "
               "IAFSqueeze: spike_fn = sinabs.activation.SingleSpike and min_v_mem = None (its importer uses "
               "MultiSpike and a floor at -v_threshold); export with pooling='sum' (it reads SumPool2d, not "
               "AvgPool2d)"),
    "snntorch": ("snntorch.import_nir.import_from_nir(graph); then replace every snn.Leaky by snn.Leaky(beta=1.0, "
                 "threshold=nextafter(threshold, 0), init_hidden=True, reset_mechanism='subtract', reset_delay=True) "
                 "(its importer maps IF to Leaky(beta=0.9, init_hidden=False): a leak the spec does not have, and "
                 "(spk, mem) tuples the next layer cannot take; it fires when v > threshold, strictly, and on the "
                 "weight grid membranes land exactly on the threshold; with reset_delay=False it subtracts a pending "
                 "reset before deciding to fire) and every nn.Flatten(s, e) by nn.Flatten(s + 1, e + 1) (it passes "
                 "NIR's batch-free dims to torch); export with pooling='avg' (it reads AvgPool2d, not SumPool2d)"),
}

POOLINGS = ("avg", "sum")
NOT_EXPORTED = "its input is not exported"
# ops that may make up the input of a neuron: sums of terms, and the copies of spikes in a skip
TERM_OPS = {aten.add, aten.slice, aten.pad, aten.constant_pad_nd}
PASS_THROUGH = {aten.dropout, aten.clone, aten.contiguous, aten.alias, aten.detach}


def _require_nir():
    try:
        import nir
    except ImportError as exc:  # an optional extra
        raise ImportError("NIR export needs the `nir` package: pip install \"spikecast[nir]\"") from exc
    return nir


# ------------------------------------------------------------------------------------ export
@dataclass
class _Value:
    """A tensor of the spikecast graph as the NIR graph carries it: the output of NIR node
    ``node``, with ``spikecast value = scale * NIR value`` (``scale``: per-sample shape)."""

    node: str
    scale: torch.Tensor
    shape: tuple[int, ...]


class _Exporter:
    def __init__(self, snn: SpikingNetwork, pooling: str, example: Optional[torch.Tensor]):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.snn, self.gm, self.pooling = snn, snn.graph_module, pooling
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.values: dict[fx.Node, _Value] = {}
        self.problems: list[UnsupportedSite] = []
        self.shapes = _shapes(snn, example)
        self.taken: set[str] = set()

    # -- helpers
    def name(self, readable: str) -> str:
        base = re.sub(r"\W+", "_", readable).strip("_") or "node"
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def refuse(self, node: fx.Node, reason: str) -> None:
        if reason == NOT_EXPORTED and self.problems:
            return  # a consequence of an offender already listed
        if node.op == "call_module":
            module = self.gm.get_submodule(node.target)
            where = getattr(module, "name", "") or str(node.target).removeprefix("sites.")
        else:
            where = module_path(node)
        what = type(self.gm.get_submodule(node.target)).__name__ if node.op == "call_module" else op_name(node)
        self.problems.append(UnsupportedSite(where, what, node.name, reason))

    def attr(self, node) -> torch.Tensor:
        return operator.attrgetter(str(node.target))(self.gm).detach().double().cpu()

    def per_sample(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(self.shapes[node.name][1:])

    # -- the walk
    def run(self):
        nir = _require_nir()
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                name = self.name("input")
                shape = self.per_sample(node)
                self.nodes[name] = nir.Input(input_type={"input": np.array(shape)})
                self.values[node] = _Value(name, torch.ones(shape, dtype=torch.float64), shape)
            elif node.op == "call_module":
                module = self.gm.get_submodule(node.target)
                if isinstance(module, IFNeuron):
                    self.neuron(node, module)
                else:
                    self.refuse(node, "NIR has no node for this stateful module")
            elif node.op == "call_function":
                if ops.is_shape_op(node) or node.target is operator.getitem:
                    continue
                kind = ops.packet(node)
                if kind in ops.WEIGHTED or kind in TERM_OPS:
                    if self.deferred(node):
                        continue  # emitted as an input term of the neuron (or output) it feeds
                    if kind in ops.WEIGHTED:
                        self.weighted(node, None)
                    else:
                        self.refuse(node, "supported only inside the input of a neuron (a residual sum of "
                                          "layers and copies of spikes)")
                elif kind in (aten.avg_pool2d, aten.adaptive_avg_pool2d):
                    self.pool(node)
                elif kind in (aten.view, aten.reshape, aten._unsafe_view, aten.flatten):
                    self.flatten(node)
                elif kind in PASS_THROUGH:
                    if node.args[0] in self.values:
                        self.values[node] = self.values[node.args[0]]
                    else:
                        self.refuse(node, NOT_EXPORTED)
                else:
                    self.refuse(node, "NIR has no node for this op")
            elif node.op == "output":
                self.output(node)
        if self.problems:
            raise UnsupportedOperationError(self.problems, action="be exported to NIR", hint=(
                "Convert with profile='nir' for binary neurons that NIR can carry; see spikecast.export.nir."))
        graph = nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=self.graph_metadata())
        return graph

    def _is_neuron(self, node: fx.Node) -> bool:
        return node.op == "call_module" and isinstance(self.gm.get_submodule(node.target), IFNeuron)

    def deferred(self, node: fx.Node) -> bool:
        """True when every use of ``node`` is inside the input of a neuron or of the output: a term
        of it, or part of a term (emitted there, scaled by that neuron's threshold)."""
        for user in node.users:
            if user.op == "output" or self._is_neuron(user):
                continue
            if user.op == "call_function" and ops.packet(user) in TERM_OPS and self.deferred(user):
                continue
            return False
        return bool(node.users)

    def graph_metadata(self) -> dict:
        kept = {k: self.snn.metadata[k] for k in ("source", "recipe", "calibration_set") if k in self.snn.metadata}
        return {"producer": f"spikecast {_version()}".strip(),
                "pooling": self.pooling, "if_semantics": json.dumps(IF_SEMANTICS),
                # the recipe etc. as JSON text (HDF5 attributes hold no None or nested lists)
                "spikecast_metadata": json.dumps(kept)}

    # -- terms feeding a neuron or the output
    def terms(self, node: fx.Node) -> list[fx.Node]:
        """The summands of ``node`` (nested ``add`` nodes flattened, in argument order)."""
        if node.op == "call_function" and ops.packet(node) is aten.add and len(node.args) == 2 \
                and all(isinstance(a, fx.Node) for a in node.args) and node.kwargs.get("alpha", 1) == 1:
            return self.terms(node.args[0]) + self.terms(node.args[1])
        return [node]

    def neuron(self, node: fx.Node, neuron: IFNeuron) -> None:
        nir = _require_nir()
        if isinstance(neuron, LeakyNeuron):
            self.leaky(node, neuron)
            return
        reasons = []
        if neuron.signed or neuron.bipolar or neuron.levels != 1:
            reasons.append("signed, bipolar and multi-level neurons have no NIR node (convert with profile='nir': "
                           "binary neurons)")
        if neuron.mask_ratio > 0:
            reasons.append("random spike masking is not part of NIR")
        if neuron.v_init != 0.0 or neuron.v_offset is not None:
            reasons.append("a non-zero initial membrane potential has no NIR field (profile='nir' starts at 0)")
        if neuron.reset_mode != "subtract":
            reasons.append("only neurons that reset by subtraction are exported")
        if reasons:
            self.refuse(node, "; ".join(reasons))
            return
        shape = self.per_sample(node)
        theta = _per_channel(neuron.threshold, shape, "threshold")
        bias = _per_channel(neuron.bias, shape, "bias") if neuron.bias is not None else None
        if theta is None or (neuron.bias is not None and bias is None):
            self.refuse(node, "thresholds and biases must be per layer or per channel")
            return
        name = self.name(neuron.name or str(node.target))
        sources = self.emit_terms(node.args[0], theta, bias, name)
        if sources is None:
            return
        ones = np.ones(shape, dtype=np.float32)
        self.nodes[name] = nir.IF(r=ones, v_threshold=ones.copy(), v_reset=np.zeros(shape, dtype=np.float32),
                                  metadata={**IF_SEMANTICS, "spikecast_name": neuron.name})
        self.edges.extend((s, name) for s in sources)
        self.values[node] = _Value(name, _expand(theta, shape), shape)

    def leaky(self, node: fx.Node, neuron: LeakyNeuron) -> None:
        """A LIF / CubaLIF read from NIR, written back as it was read (it sends spikes of 1)."""
        nir = _require_nir()
        shape = self.per_sample(node)
        name = self.name(neuron.name or str(node.target))
        sources = self.emit_terms(node.args[0], torch.ones(shape[0], dtype=torch.float64), None, name)
        if sources is None:
            return
        p = {k: None if v is None else v.detach().cpu().numpy().astype(np.float32)
             for k, v in neuron.nir_parameters().items()}
        meta = {"reset": neuron.reset_mode, "dt": neuron.dt, "spikecast_name": neuron.name,
                "integration": "forward Euler, synaptic current before the membrane (spikecast.nn.leaky)"}
        if neuron.synaptic:
            self.nodes[name] = nir.CubaLIF(tau_syn=p["tau_syn"], tau_mem=p["tau_mem"], r=p["r"], v_leak=p["v_leak"],
                                           v_threshold=p["v_threshold"], v_reset=p["v_reset"], w_in=p["w_in"],
                                           metadata=meta)
        else:
            self.nodes[name] = nir.LIF(tau=p["tau_mem"], r=p["r"], v_leak=p["v_leak"], v_threshold=p["v_threshold"],
                                       v_reset=p["v_reset"], metadata=meta)
        self.edges.extend((s, name) for s in sources)
        self.values[node] = _Value(name, torch.ones(shape, dtype=torch.float64), shape)

    def emit_terms(self, node: fx.Node, theta: torch.Tensor, bias: Optional[torch.Tensor], dest: str):
        """NIR nodes for the summands of ``node`` (the input current of ``dest``), each divided by the
        per-output-channel ``theta``; ``bias`` (the neuron's own current) joins the first one."""
        sources = []
        for k, term in enumerate(self.terms(node)):
            extra = bias if k == 0 else None
            if term.op == "call_function" and ops.packet(term) in ops.WEIGHTED:
                name = self.weighted(term, theta, extra)
            else:
                name = self.copy_term(term, theta, extra, dest)
            if name is None:
                return None
            sources.append(name)
        return sources

    def weighted(self, node: fx.Node, theta: Optional[torch.Tensor], extra_bias=None) -> Optional[str]:
        nir = _require_nir()
        kind = ops.packet(node)
        source = self.values.get(node.args[0])
        if source is None:
            self.refuse(node, NOT_EXPORTED)
            return None
        weight = self.attr(node.args[1])
        bias_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        bias = self.attr(bias_node) if isinstance(bias_node, fx.Node) else torch.zeros(weight.shape[0],
                                                                                         dtype=torch.float64)
        out_scale = theta if theta is not None else torch.ones(weight.shape[0], dtype=torch.float64)
        if extra_bias is not None:
            bias = bias + extra_bias
        name = self.name(module_path(node) or node.name)
        if kind is aten.linear:  # (a graph read from NIR has no module paths: its nodes keep their NIR names)
            if len(source.shape) != 1:
                self.refuse(node, "a linear layer needs a flat input (add a Flatten)")
                return None
            w = weight * source.scale.reshape(1, -1) / out_scale.reshape(-1, 1)
            self.nodes[name] = nir.Affine(weight=_f32(w), bias=_f32(bias / out_scale))
        elif kind in (aten.conv2d, aten.convolution):
            stride, padding, dilation, groups = _conv_args(node)
            if stride is None:
                self.refuse(node, "only 2-D, non-transposed convolutions are exported")
                return None
            in_scale = _channel_scale(source.scale)
            if in_scale is None:
                self.refuse(node, "its input's scale varies inside a channel")
                return None
            c_out, c_in_g = weight.shape[:2]
            group_of_out = torch.arange(c_out) // (c_out // groups)
            cols = group_of_out.reshape(-1, 1) * c_in_g + torch.arange(c_in_g).reshape(1, -1)
            w = weight * in_scale[cols].reshape(c_out, c_in_g, 1, 1) / out_scale.reshape(-1, 1, 1, 1)
            self.nodes[name] = nir.Conv2d(input_shape=np.array(source.shape[1:]), weight=_f32(w),
                                          stride=np.array(stride), padding=np.array(padding),
                                          dilation=np.array(dilation), groups=groups, bias=_f32(bias / out_scale))
        else:
            self.refuse(node, "only conv2d and linear layers are exported")
            return None
        self.edges.append((source.node, name))
        shape = self.per_sample(node)
        self.values[node] = _Value(name, _expand(out_scale, shape), shape)
        return name

    def copy_term(self, term: fx.Node, theta: torch.Tensor, extra_bias, dest: str) -> Optional[str]:
        """A summand that copies spikes (identity, or strided slices and zero channels): a 1x1 conv
        with 0/1 weights times the source's scale over ``theta``."""
        nir = _require_nir()
        node, stride, pad, chain = term, [1, 1], [0, 0], []
        while node not in self.values:
            kind = ops.packet(node) if node.op == "call_function" else None
            if kind is aten.slice:
                dim, start, end, step = (list(node.args[1:]) + [None, None, 1])[:4]
                full = start in (0, None) and (end is None or end >= 2 ** 62 or end >= self.shapes[node.args[0].name][dim])
                if dim in (2, 3) and start in (0, None):
                    stride[dim - 2] *= int(step or 1)
                elif not (full and (step or 1) == 1):
                    break
            elif kind in (aten.pad, aten.constant_pad_nd):
                pads = list(node.args[1])
                value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", 0.0)
                if len(pads) != 6 or any(pads[:4]) or (value or 0.0) != 0.0 or \
                        (len(node.args) > 2 and node.args[2] != "constant"):
                    break
                pad = [pad[0] + pads[4], pad[1] + pads[5]]
            elif kind in (aten.clone, aten.contiguous, aten.alias, aten.detach):
                pass
            else:
                break
            chain.append(node)
            node = node.args[0]
        source = self.values.get(node)
        if source is None or len(source.shape) != 3:
            self.refuse(term, "a neuron input that is neither a weighted layer nor a copy of spikes "
                              "(identity, strided slice, zero channels)")
            return None
        in_scale = _channel_scale(source.scale)
        c_in = source.shape[0]
        c_out = c_in + pad[0] + pad[1]
        if theta.numel() not in (1, c_out) or in_scale is None:
            self.refuse(term, "channel counts of a residual sum do not match")
            return None
        out_scale = theta.expand(c_out) if theta.numel() == 1 else theta
        w = torch.zeros(c_out, c_in, 1, 1, dtype=torch.float64)
        w[torch.arange(c_in) + pad[0], torch.arange(c_in), 0, 0] = in_scale / out_scale[pad[0]:pad[0] + c_in]
        bias = torch.zeros(c_out, dtype=torch.float64) if extra_bias is None else extra_bias / out_scale
        name = self.name(f"{dest}_skip")
        self.nodes[name] = nir.Conv2d(input_shape=np.array(source.shape[1:]), weight=_f32(w), stride=np.array(stride),
                                      padding=np.array([0, 0]), dilation=np.array([1, 1]), groups=1, bias=_f32(bias))
        self.edges.append((source.node, name))
        return name

    def pool(self, node: fx.Node) -> None:
        nir = _require_nir()
        source = self.values.get(node.args[0])
        if source is None:
            self.refuse(node, NOT_EXPORTED)
            return
        in_shape, out_shape = source.shape, self.per_sample(node)
        if ops.packet(node) is aten.adaptive_avg_pool2d:
            if in_shape[1] % out_shape[1] or in_shape[2] % out_shape[2]:
                self.refuse(node, "adaptive pooling with uneven windows has no NIR node")
                return
            kernel = [in_shape[1] // out_shape[1], in_shape[2] // out_shape[2]]
            stride, padding = kernel, [0, 0]
        else:
            args = list(node.args) + [None] * 7
            kernel = _pair(args[1])
            stride = _pair(args[2]) if args[2] else kernel
            padding = _pair(args[3]) if args[3] is not None else [0, 0]
            ceil_mode = bool(args[4])
            divisor = args[6]
            if any(padding) or ceil_mode or divisor is not None:
                self.refuse(node, "average pooling with padding, ceil mode or a divisor override has no NIR node")
                return
        scale = _channel_scale(source.scale)
        if scale is None:
            self.refuse(node, "its input's scale varies inside a channel")
            return
        name = self.name(module_path(node) or node.name)
        if self.pooling == "avg":
            self.nodes[name] = nir.AvgPool2d(kernel_size=np.array(kernel), stride=np.array(stride),
                                             padding=np.array([0, 0]))
        else:  # a sum of the window: the 1/k^2 moves into the scale, i.e. into the layer reading it
            self.nodes[name] = nir.SumPool2d(kernel_size=np.array(kernel), stride=np.array(stride),
                                             padding=np.array([0, 0]))
            scale = scale / (kernel[0] * kernel[1])
        self.edges.append((source.node, name))
        self.values[node] = _Value(name, _expand(scale, out_shape), out_shape)

    def flatten(self, node: fx.Node) -> None:
        nir = _require_nir()
        source = self.values.get(node.args[0])
        out_shape = self.per_sample(node)
        if source is None:
            self.refuse(node, NOT_EXPORTED)
            return
        if len(out_shape) != 1 or int(np.prod(source.shape)) != out_shape[0]:
            self.refuse(node, "only flattening reshapes (N, ...) -> (N, features) are exported")
            return
        if len(source.shape) == 1:  # already flat
            self.values[node] = source
            return
        name = self.name(module_path(node) or node.name)
        self.nodes[name] = nir.Flatten(input_type={"input": np.array(source.shape)}, start_dim=0, end_dim=-1)
        self.edges.append((source.node, name))
        self.values[node] = _Value(name, source.scale.reshape(-1), out_shape)

    def output(self, node: fx.Node) -> None:
        nir = _require_nir()
        result = node.args[0]
        if isinstance(result, (tuple, list)):
            if len(result) != 1:
                self.refuse(node, "networks with several outputs are not exported")
                return
            result = result[0]
        if result not in self.values:
            terms = self.terms(result)
            if len(terms) != 1 or not (terms[0].op == "call_function" and ops.packet(terms[0]) in ops.WEIGHTED):
                self.refuse(result, "the output must be one analog layer output (end the network with a linear layer)")
                return
            channels = self.per_sample(result)[0]
            if self.weighted(terms[0], torch.ones(channels, dtype=torch.float64)) is None:
                return
        value = self.values[result]
        if not torch.all(value.scale == 1):
            self.refuse(result, "the output is not an analog layer output (end the network with a linear layer)")
            return
        name = self.name("output")
        self.nodes[name] = nir.Output(output_type={"output": np.array(value.shape)})
        self.edges.append((value.node, name))


def _version() -> str:
    try:
        return importlib.metadata.version("spikecast")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return ""


def _shapes(snn: SpikingNetwork, example: Optional[torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Output shape of every node, from one step on ``example`` (default: the placeholder's recorded
    shape with a batch of 1)."""
    gm = snn.graph_module
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    if example is None:
        val = placeholder.meta.get("val")
        if val is not None and hasattr(val, "shape"):
            example = torch.zeros((1, *(int(d) for d in val.shape[1:])))
        elif snn.metadata.get("nir_input_shape"):  # read from a NIR file (and maybe saved since)
            example = torch.zeros((1, *(int(d) for d in snn.metadata["nir_input_shape"])))
        else:
            raise ValueError("the network does not record its input shape: pass example= (one input batch)")
    device = next((t.device for t in gm.buffers()), torch.device("cpu"))
    snn.reset()
    shapes = ops.node_shapes(gm, example[:1].to(device))
    snn.reset()  # the run stepped the neurons once
    return shapes


def _per_channel(value: torch.Tensor, shape: tuple[int, ...], what: str) -> Optional[torch.Tensor]:
    """``value`` (a threshold or bias: scalar, per channel or broadcastable) as a float64 vector
    over the channels of ``shape`` (dimension 0 of the per-sample shape); None when it varies
    along another dimension."""
    t = torch.as_tensor(value).detach().double().cpu()
    while t.dim() > len(shape) and t.shape[0] == 1:  # a leading batch dimension of 1
        t = t[0]
    channels = shape[0] if shape else 1
    if t.numel() == 1:
        return t.reshape(1).expand(channels).clone()
    full = torch.broadcast_to(t, shape) if t.dim() <= len(shape) else None
    if full is None:
        return None
    per = full.reshape(channels, -1)
    if not torch.all(per == per[:, :1]):
        return None
    return per[:, 0].clone()


def _expand(per_channel: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return per_channel.reshape(-1, *([1] * (len(shape) - 1))).expand(shape).clone()


def _channel_scale(scale: torch.Tensor) -> Optional[torch.Tensor]:
    """The per-channel scale of a (C, ...) scale tensor, None when it varies inside a channel."""
    per = scale.reshape(scale.shape[0], -1)
    return per[:, 0].clone() if torch.all(per == per[:, :1]) else None


def _pair(v) -> list[int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return [int(v[0]), int(v[-1])]


def _conv_args(node: fx.Node):
    args = list(node.args) + [None] * 9
    if ops.packet(node) is aten.convolution:
        if args[6] or len(getattr(node.args[1].meta.get("val"), "shape", (0, 0, 0, 0))) != 4:
            return None, None, None, None
        return _pair(args[3]), _pair(args[4]), _pair(args[5]), int(args[8] or 1)
    weight_val = node.args[1].meta.get("val")
    if weight_val is not None and getattr(weight_val, "dim", lambda: 4)() != 4:
        return None, None, None, None
    stride = _pair(args[3] if args[3] is not None else node.kwargs.get("stride", 1))
    padding_arg = args[4] if args[4] is not None else node.kwargs.get("padding", 0)
    if isinstance(padding_arg, str):
        return None, None, None, None
    dilation = _pair(args[5] if args[5] is not None else node.kwargs.get("dilation", 1))
    groups = int(args[6] if args[6] is not None else node.kwargs.get("groups", 1))
    return stride, _pair(padding_arg), dilation, groups


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float32).numpy()


def to_nir_graph(snn: SpikingNetwork, *, pooling: str = "avg", example: Optional[torch.Tensor] = None):
    """The NIR graph (``nir.NIRGraph``) of ``snn``; see the module doc for what is exported and how.

    Raises :class:`UnsupportedOperationError` listing the module path and reason of every part
    that NIR cannot carry (signed / bipolar / multi-level neurons, a non-zero initial potential,
    compensated ops, spiking max-pools, ...): nothing is exported approximately.
    ``pooling``: ``"avg"`` writes ``AvgPool2d`` nodes (snnTorch reads them), ``"sum"`` writes
    ``SumPool2d`` with the 1/k^2 folded into the next layer (sinabs reads those).
    """
    if snn.config.encoding != "analog":
        raise ValueError(f"NIR export: the input encoding {snn.config.encoding!r} is stochastic and not part of NIR; "
                         "convert with encoding='analog'")
    return _Exporter(snn, pooling, example).run()


def to_nir(snn: SpikingNetwork, path: PathLike, *, pooling: str = "avg",
           example: Optional[torch.Tensor] = None) -> Path:
    """Write ``snn`` as a NIR file (HDF5, ``nir.write``) at ``path``; see :func:`to_nir_graph`."""
    nir = _require_nir()
    graph = to_nir_graph(snn, pooling=pooling, example=example)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    nir.write(tmp, graph)
    tmp.replace(path)
    _warn_readers()
    return path


class NIRReaderWarning(UserWarning):
    """Some NIR readers do not run an exported file with the semantics written into it unless set up."""


_warned: set = set()


def _warn_readers() -> None:
    if "readers" in _warned:
        return
    _warned.add("readers")
    warnings.warn("NIR readers differ from the IF semantics this file states (reset by subtraction, zero start, one "
                  "spike per step): sinabs' importer allows several spikes per step and floors the membrane, "
                  "snnTorch's adds a leak (beta=0.9). See spikecast.export.nir.READER_SETTINGS for the settings that "
                  "make each exact.", NIRReaderWarning, stacklevel=3)


# ------------------------------------------------------------------------------------ import
_UNSUPPORTED = ("LI", "CubaLI", "I", "Delay", "Threshold")
_LEAKY = ("LIF", "CubaLIF")


def from_nir(source: Union[str, os.PathLike, nir.NIRGraph], *, reset: Optional[str] = None,
             dt: Optional[float] = None, metadata: Optional[dict] = None) -> SpikingNetwork:
    """A :class:`SpikingNetwork` from a NIR file or ``nir.NIRGraph``.

    ``reset``: how the neurons reset (``"subtract"`` or ``"zero"``); default: what each node's
    metadata states (spikecast writes ``"subtract"`` for ``IF``), else the spec's reset to
    ``v_reset`` (``"zero"``; for ``IF`` only ``v_reset = 0`` is supported). ``dt``: the time step
    in seconds that ``LIF`` / ``CubaLIF`` nodes are simulated with (forward Euler,
    :mod:`spikecast.nn.leaky`); needed when the graph has them, unless their metadata states it
    (spikecast writes it). A node type spikecast cannot run exactly is refused with the names of
    the offending nodes.
    """
    nir = _require_nir()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such NIR file")
        try:
            graph = nir.read(path)
        except Exception as exc:  # h5py / nir raise several types for a file that is not NIR
            raise ValueError(f"{path} is not a readable NIR file: {exc}") from exc
        origin = str(path)
    else:
        graph, origin = source, "<NIRGraph>"
    if reset not in (None, "subtract", "zero"):
        raise ValueError(f"reset must be 'subtract' or 'zero', got {reset!r}")
    if dt is not None and not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number of seconds, got {dt!r}")
    return _Importer(graph, reset, origin, dt).build(metadata)


class _Importer:
    def __init__(self, graph, reset: Optional[str], origin: str, dt: Optional[float] = None):
        self.nir = _require_nir()
        self.graph, self.reset, self.origin, self.dt = graph, reset, origin, dt
        self.root = nn.Module()
        self.root.add_module("sites", nn.Module())
        self.fx = fx.Graph()
        self.env: dict[str, fx.Node] = {}
        self.count = 0

    def const(self, value, name: str) -> fx.Node:
        self.count += 1
        attr = f"c{self.count}_{re.sub(r'[^0-9a-zA-Z_]', '_', name)}"
        self.root.register_buffer(attr, torch.as_tensor(np.asarray(value), dtype=torch.float32).clone())
        return self.fx.get_attr(attr)

    def call(self, op, *args, name: Optional[str] = None) -> fx.Node:
        # named after the NIR node (fx makes it a unique identifier), so a re-export keeps the names
        return self.fx.create_node("call_function", op, tuple(args), name=re.sub(r"\W+", "_", name) if name else None)

    def order(self) -> list[str]:
        nodes, edges = self.graph.nodes, self.graph.edges
        for a, b in edges:
            if a not in nodes or b not in nodes:
                raise ValueError(f"{self.origin}: edge {a} -> {b} names a node the graph lacks")
        incoming = {name: [a for a, b in edges if b == name] for name in nodes}
        done, out = set(), []
        pending = list(nodes)
        while pending:
            progressed = False
            for name in list(pending):
                if all(a in done for a in incoming[name]):
                    out.append(name)
                    done.add(name)
                    pending.remove(name)
                    progressed = True
            if not progressed:
                raise ValueError(f"{self.origin}: the graph has a cycle through {', '.join(sorted(pending))} "
                                 "(recurrent NIR graphs are not supported)")
        return out

    def build(self, metadata: Optional[dict]) -> SpikingNetwork:
        nir = self.nir
        bad = [f"{name} ({type(node).__name__})" for name, node in self.graph.nodes.items()
               if type(node).__name__ in _UNSUPPORTED or isinstance(node, nir.NIRGraph)]
        if bad:
            raise ValueError(f"{self.origin}: cannot run these NIR nodes exactly (leaky integrators without "
                             f"spikes, delays and sub-graphs are not supported): {', '.join(bad)}")
        undated = [name for name, node in self.graph.nodes.items() if type(node).__name__ in _LEAKY
                   and self.dt is None and "dt" not in (getattr(node, "metadata", {}) or {})]
        if undated:
            raise ValueError(f"{self.origin}: leaky neurons {', '.join(undated)} are differential equations: give "
                             "the time step to simulate them with, from_nir(..., dt=SECONDS) (snnTorch writes its "
                             "neurons for dt=1e-4)")
        incoming = {name: [a for a, b in self.graph.edges if b == name] for name in self.graph.nodes}
        inputs, output = [], None
        for name in self.order():
            node = self.graph.nodes[name]
            srcs = [self.env[a] for a in incoming[name]]
            if isinstance(node, nir.Input):
                if inputs:
                    raise ValueError(f"{self.origin}: graphs with several Input nodes are not supported")
                x = self.fx.placeholder("x")
                inputs.append(node)
                self.env[name] = x
                continue
            if not srcs:
                raise ValueError(f"{self.origin}: node {name} ({type(node).__name__}) has no input edge")
            value = srcs[0]
            for other in srcs[1:]:  # NIR sums the inputs of a node
                value = self.call(aten.add.Tensor, value, other)
            if isinstance(node, nir.Output):
                output = value
                continue
            self.env[name] = self.node(name, node, value)
        if not inputs or output is None:
            raise ValueError(f"{self.origin}: a NIR graph needs an Input and an Output node")
        self.fx.output(output)
        gm = fx.GraphModule(self.root, self.fx, class_name="SpikingGraph")
        shape = tuple(int(d) for d in np.asarray(inputs[0].input_type["input"]).reshape(-1))
        graph_meta = _jsonable(getattr(self.graph, "metadata", {}) or {})
        meta = {"source": f"nir:{self.origin}", "nir_file": self.origin, "nir_input_shape": list(shape),
                "nir_graph_metadata": graph_meta}
        try:  # written by spikecast: the network's own metadata (recipe, source, calibration set)
            meta.update(json.loads(graph_meta.get("spikecast_metadata", "{}")))
        except (TypeError, ValueError):
            pass
        meta.update(metadata or {})
        snn = SpikingNetwork(gm, SimulationConfig(), meta)
        placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
        placeholder.meta["val"] = torch.empty((1, *shape))
        return snn

    def node(self, name: str, node, x: fx.Node) -> fx.Node:
        nir = self.nir
        if isinstance(node, nir.Affine):
            return self.call(aten.linear.default, x, self.const(node.weight, name + "_weight"),
                             self.const(node.bias, name + "_bias"), name=name)
        if isinstance(node, nir.Linear):
            return self.call(aten.linear.default, x, self.const(node.weight, name + "_weight"), name=name)
        if isinstance(node, (nir.Conv2d, nir.Conv1d)):
            two_d = isinstance(node, nir.Conv2d)
            dims = 2 if two_d else 1
            padding = node.padding
            if isinstance(padding, str):
                raise ValueError(f"{self.origin}: node {name}: string padding {padding!r} is not supported")
            fix = (lambda v: [int(a) for a in np.broadcast_to(np.asarray(v).reshape(-1), (dims,))])
            op = aten.conv2d.default if two_d else aten.conv1d.default
            return self.call(op, x, self.const(node.weight, name + "_weight"), self.const(node.bias, name + "_bias"),
                             fix(node.stride), fix(padding), fix(node.dilation), int(node.groups), name=name)
        if isinstance(node, nir.Scale):
            return self.call(aten.mul.Tensor, x, self.const(node.scale, name + "_scale"), name=name)
        if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
            fix = (lambda v: [int(a) for a in np.broadcast_to(np.asarray(v).reshape(-1), (2,))])
            kernel, stride, padding = fix(node.kernel_size), fix(node.stride), fix(node.padding)
            divisor = None if isinstance(node, nir.AvgPool2d) else 1
            return self.call(aten.avg_pool2d.default, x, kernel, stride, padding, False, True, divisor, name=name)
        if isinstance(node, nir.Flatten):
            start = int(node.start_dim) + 1 if int(node.start_dim) >= 0 else int(node.start_dim)
            end = int(node.end_dim) + 1 if int(node.end_dim) >= 0 else int(node.end_dim)
            return self.call(aten.flatten.using_ints, x, start, end, name=name)
        if isinstance(node, nir.IF):
            return self.neuron(name, node, x)
        if isinstance(node, (nir.LIF, nir.CubaLIF)):
            return self.leaky(name, node, x)
        raise ValueError(f"{self.origin}: node {name}: NIR node type {type(node).__name__} is not supported")

    def neuron(self, name: str, node, x: fx.Node) -> fx.Node:
        meta = getattr(node, "metadata", {}) or {}
        reset = self.reset or ("subtract" if meta.get("reset") == "subtract" else "zero")
        v_reset = np.asarray(node.v_reset, dtype=np.float64)
        if reset == "zero" and np.any(v_reset != 0):
            raise ValueError(f"{self.origin}: node {name}: IF with v_reset != 0 is not supported")
        r = np.asarray(node.r, dtype=np.float32)
        if np.any(r != 1):
            x = self.call(aten.mul.Tensor, x, self.const(r, name + "_r"))
        theta = torch.as_tensor(np.asarray(node.v_threshold, dtype=np.float32))
        if theta.numel() > 1 and torch.all(theta == theta.reshape(-1)[0]):
            theta = theta.reshape(-1)[0]
        neuron = IFNeuron(theta, meta.get("spikecast_name") or name, v_init=0.0, reset=reset)
        return self.site(name, neuron, x, theta)

    def leaky(self, name: str, node, x: fx.Node) -> fx.Node:
        meta = getattr(node, "metadata", {}) or {}
        reset = self.reset or ("subtract" if meta.get("reset") == "subtract" else "zero")
        cuba = isinstance(node, self.nir.CubaLIF)
        dt = self.dt if self.dt is not None else float(meta["dt"])
        try:
            neuron = LeakyNeuron(tau_mem=node.tau_mem if cuba else node.tau, r=node.r, v_leak=node.v_leak,
                                 v_threshold=node.v_threshold, v_reset=node.v_reset, dt=dt,
                                 tau_syn=node.tau_syn if cuba else None, w_in=node.w_in if cuba else None,
                                 reset=reset, name=meta.get("spikecast_name") or name)
        except ValueError as exc:
            raise ValueError(f"{self.origin}: node {name} ({type(node).__name__}): {exc}") from None
        return self.site(name, neuron, x, None)

    def site(self, name: str, neuron: IFNeuron, x: fx.Node, theta: Optional[torch.Tensor]) -> fx.Node:
        """``neuron`` as ``sites.<name>`` on ``x``; an IF neuron's output (``theta``) scaled to NIR's spikes of 1."""
        attr = re.sub(r"\W+", "_", name).strip("_") or "neuron"
        while hasattr(self.root.sites, attr):
            attr += "_"
        self.root.sites.add_module(attr, neuron)
        out = self.fx.call_module(f"sites.{attr}", (x,))
        if theta is not None and not torch.all(theta == 1):
            # NIR spikes are 1; spikecast's neuron sends theta (theta / theta is exactly 1)
            out = self.call(aten.div.Tensor, out, self.const(theta, name + "_threshold"))
        return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def nir_form(snn: SpikingNetwork, *, example: Optional[torch.Tensor] = None,
             weight_bits: Optional[int] = None) -> SpikingNetwork:
    """``snn`` rewritten as NIR runs it (thresholds 1, weights scaled, skips as 1x1 convolutions):
    ``from_nir(to_nir_graph(snn))`` with ``snn``'s metadata. Its outputs equal ``snn``'s up to float
    rounding of the rescaled weights, and it exports to NIR weight for weight (bit-identical round
    trip). The last step of ``convert(..., profile="nir")``.

    ``weight_bits``: put every layer's weights on a power-of-two grid ``k * 2^-s`` with ``|k| <
    2^(bits-1)`` (``s`` per layer, from its largest weight) and its biases on the same grid. With
    spikes of 0 / 1 and thresholds of 1, every sum a neuron sees is then exact in float32 in any
    order, so any reader computes the same membranes bit for bit (inputs on a grid too:
    :func:`on_input_grid`), and the weights have the resolution of an 8-bit chip such as Speck."""
    graph = to_nir_graph(snn, pooling="avg", example=example)
    if weight_bits is not None:
        _to_grid(graph, int(weight_bits))
    out = from_nir(graph, metadata=dict(snn.metadata))
    out.config = snn.config
    out._build_split()
    return out


def _to_grid(graph, bits: int) -> None:
    nir = _require_nir()
    if not 2 <= bits <= 16:
        raise ValueError(f"weight_bits must be in 2..16, got {bits}")
    for node in graph.nodes.values():
        if isinstance(node, (nir.Conv2d, nir.Conv1d, nir.Affine, nir.Linear)):
            w = np.asarray(node.weight, dtype=np.float64)
            top = float(np.abs(w).max())
            if top == 0:
                continue
            shift = math.floor(math.log2((2 ** (bits - 1) - 1) / top))
            node.weight = (np.round(w * 2.0 ** shift) / 2.0 ** shift).astype(np.float32)
            if getattr(node, "bias", None) is not None:
                node.bias = (np.round(np.asarray(node.bias, dtype=np.float64) * 2.0 ** shift)
                             / 2.0 ** shift).astype(np.float32)
            node.metadata = {**(node.metadata or {}), "weight_grid": f"k * 2^-{shift}, |k| < 2^{bits - 1}"}


def on_input_grid(x: torch.Tensor, bits: int = 8, limit: Optional[float] = None) -> torch.Tensor:
    """``x`` rounded to a power-of-two grid with ``bits`` signed bits over ``[-limit, limit]``
    (default: the largest ``|x|``): with weights on a grid too (``weight_bits``), the first layer's
    currents are exact in any runtime."""
    limit = float(x.abs().max()) if limit is None else float(limit)
    shift = math.floor(math.log2((2 ** (bits - 1) - 1) / limit)) if limit > 0 else 0
    return torch.round(x * 2.0 ** shift) / 2.0 ** shift
