"""Hardware-target checks without the chip: does a network fit SynSense Speck (DYNAP-CNN) or Xylo?

Speck
-----

The rules are those of sinabs' DYNAP-CNN / Speck backend (sinabs 2.0.3,
``sinabs/backend/dynapcnn``), which builds the chip configuration; they are restated here because
building it needs SynSense's ``samna`` package, which is not on PyPI (sinabs' ``samna`` stub
downloads it from SynSense's own index at import):

* **layer pattern** (``utils.py``, ``dynapcnn_layer.py``): a chain of cores, each
  ``Conv2d`` (or ``Linear``, run as a convolution over the whole input) -> IAF neuron -> optional
  sum pooling (``AvgPool2d`` is turned into ``SumPool2d`` with the weights of the next layer
  rescaled; square windows, stride = window, no padding). No branches: a residual sum has no core.
  The network's output is the spikes of its last core, so the last layer must have neurons.
* **kernels**: square (``chips/dynapcnn.py``: "Kernel must have same height and width").
* **memory per core** (``chips/dynapcnn.py: get_constraints``; ``dynapcnn_layer.py:
  memory_summary``): kernel memory ``c * 2^(ceil(log2(kh*kw)) + ceil(log2(f)))``, neuron memory
  ``f * 2^(ceil(log2(h)) + ceil(log2(w)))`` of the output map, bias memory ``f``; the 9 cores
  offer kernel 16K, 16K, 16K, 32K, 32K, 64K, 64K, 16K, 16K, neuron 64K, 64K, 64K, 32K, 32K, 16K,
  16K, 16K, 16K and bias 1K words each. Each layer needs its own core (matched like sinabs'
  ``get_valid_mapping``).
* **resolution** (``discretize.py``): weights and biases 8-bit signed, thresholds and membrane
  potentials 16-bit signed, one scale per layer.
* **input**: the chip reads events (a DVS or spikes sent to it); an analog image has to be
  encoded into spikes first, or its first layer has to run off-chip.

Xylo
----
The rules are those of Rockpool's Xylo mappers (rockpool 3.1.0, ``devices/xylo/syns61201``
Xylo Audio 2, ``syns63300`` Xylo IMU, ``syns65302`` Xylo Audio 3: ``xylo_mapper.py`` with its
design-rule list ``xylo_drc``, ``transform/quantize_methods.py``); building the configuration
needs ``samna`` as for Speck. Xylo is not a chain of convolution cores but one population of
hidden neurons with dense input, recurrent and output weight matrices:

* **layer pattern** (``xylo_drc``): input -> weights -> neurons -> weights -> ... -> output neurons;
  every neuron layer is fed by weights, weights never feed weights, the network's outputs are
  neurons, and there are at least two neuron layers (hidden and output).
* **sizes** (``mapper`` defaults, ``le_16_input_channels``, ``le_8_output_channels`` /
  ``le_16_output_channels``): 16 input channels; 1000 / 496 / 992 hidden neurons; 8 / 16 / 32
  output neurons. Every neuron of every layer is a hardware neuron: a convolution is unrolled
  into a dense matrix with one neuron per output position and channel.
* Average (sum) pooling between a neuron layer and the next weights is linear, so it folds into
  those weights; a residual sum becomes a second weight matrix into the same neurons (the
  recurrent matrix is dense). Max pooling and other non-linear ops have no counterpart.
* **resolution** (``quantize_methods.global_quantize``): 8-bit signed weights (one scale for the
  input and recurrent weights, one for the output weights), 16-bit thresholds; the bias of a
  weight matrix is not transferred (a neuron bias is).
* **neurons**: leaky (bit-shift decay ``dash = log2(tau / dt)``, finite): an IF neuron has no
  exact counterpart, only a long time constant.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Optional, Union

import torch
import torch.fx as fx

from spikecast.graph import ops
from spikecast.graph.trace import module_path, op_name

aten = torch.ops.aten


@dataclass(frozen=True)
class Core:
    kernel_memory: int
    neuron_memory: int
    bias_memory: int


@dataclass(frozen=True)
class Target:
    """A chain-of-cores chip (Speck): one core per layer, each with its own memories."""

    name: str
    cores: tuple[Core, ...]
    weight_bits: int
    state_bits: int
    source: str


@dataclass(frozen=True)
class DenseTarget:
    """A dense-population chip (Xylo): hidden neurons with dense input / recurrent / output weights."""

    name: str
    input_channels: int
    hidden_neurons: int
    output_neurons: int
    weight_bits: int
    threshold_bits: int
    source: str


SPECK = Target(
    name="speck",
    cores=tuple(Core(k * 1024, n * 1024, 1024) for k, n in zip((16, 16, 16, 32, 32, 64, 64, 16, 16),
                                                               (64, 64, 64, 32, 32, 16, 16, 16, 16))),
    weight_bits=8, state_bits=16,
    source="sinabs 2.0.3 sinabs/backend/dynapcnn (chips/dynapcnn.py get_constraints, dynapcnn_layer.py "
           "memory_summary, discretize.py, utils.py)")
_ROCKPOOL = "rockpool 3.1.0 rockpool/devices/xylo/{} (xylo_mapper.py mapper, xylo_drc), transform/quantize_methods.py"
XYLO_AUDIO2 = DenseTarget("xylo-audio2", 16, 1000, 8, 8, 16, _ROCKPOOL.format("syns61201"))
XYLO_IMU = DenseTarget("xylo-imu", 16, 496, 16, 8, 16, _ROCKPOOL.format("syns63300"))
XYLO_AUDIO3 = DenseTarget("xylo-audio3", 16, 992, 32, 8, 16, _ROCKPOOL.format("syns65302"))
TARGETS: dict[str, Union[Target, DenseTarget]] = {t.name: t for t in (SPECK, XYLO_AUDIO2, XYLO_IMU, XYLO_AUDIO3)}
FLATTENS = {aten.view, aten.reshape, aten._unsafe_view, aten.flatten}
SELECTIONS = {aten.slice, aten.pad, aten.constant_pad_nd, aten.select, aten.narrow}


@dataclass
class TargetLayer:
    """One weighted layer with its neurons and the pooling after them: a would-be core (Speck), or
    a block of the hidden or output population (Xylo)."""

    path: str
    op: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]  # of the neurons (before pooling)
    kernel: tuple[int, int]
    pooling: Optional[int] = None
    has_neuron: bool = False
    kernel_memory: int = 0
    neuron_memory: int = 0
    bias_memory: int = 0
    fits_cores: list[int] = field(default_factory=list)
    core: Optional[int] = None
    neurons: int = 0  # hardware neurons of the layer (a convolution unrolled: channels x positions)
    dense_weights: int = 0  # entries of its dense weight matrix from the neurons (or inputs) before it (Xylo)
    skips: int = 0  # residual sums into this layer's neurons
    role: Optional[str] = None  # Xylo: "hidden" or "output" once placed
    problems: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems and (self.core is not None or self.role is not None)


@dataclass
class TargetReport:
    """What of a network fits a hardware target, by module path."""

    target: str
    layers: list[TargetLayer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # network-level: branches, analog input, ...
    quantisation: str = ""
    source: str = ""
    kind: str = "cores"  # "cores" (Speck) or "dense" (Xylo): which columns the table shows
    usage: str = ""  # Xylo: neurons and channels used of those available

    @property
    def fits(self) -> bool:
        return not self.problems and all(layer.fits for layer in self.layers)

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        shape = (lambda s: "x".join(map(str, s)))
        verdict = (lambda layer: "fits" if layer.fits else "; ".join(layer.problems) or
                   ("no free core" if self.kind == "cores" else "not placed"))
        if self.kind == "dense":
            head = ["layer", "op", "in", "out", "neurons", "dense weights", "pool (folded)", "skips", "role", "verdict"]
            return head, [[layer.path or "<top>", layer.op, shape(layer.input_shape), shape(layer.output_shape),
                           f"{layer.neurons:,}", f"{layer.dense_weights:,}", str(layer.pooling or "-"),
                           str(layer.skips or "-"), layer.role or "-", verdict(layer)] for layer in self.layers]
        head = ["layer", "op", "in", "out", "kernel", "pool", "kernel mem", "neuron mem", "bias", "cores it fits",
                "core", "verdict"]
        return head, [[layer.path or "<top>", layer.op, shape(layer.input_shape), shape(layer.output_shape),
                       f"{layer.kernel[0]}x{layer.kernel[1]}", str(layer.pooling or "-"), _k(layer.kernel_memory),
                       _k(layer.neuron_memory), str(layer.bias_memory), ",".join(map(str, layer.fits_cores)) or "none",
                       "-" if layer.core is None else str(layer.core), verdict(layer)] for layer in self.layers]

    def table(self, markdown: bool = True) -> str:
        head, rows = self._rows()
        lines = [f"Target {self.target}: {'FITS' if self.fits else 'does NOT fit'} "
                 f"({sum(layer.fits for layer in self.layers)} of {len(self.layers)} layers placed)"]
        if self.usage:
            lines.append(self.usage)
        if markdown:
            lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
            lines += ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
            lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        if self.problems:
            lines += ["", "Network-level problems:"] + [f"- {p}" for p in self.problems]
        lines += ["", f"Quantisation the target forces: {self.quantisation}", f"Rules from: {self.source}"]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"target": self.target, "fits": self.fits, "problems": self.problems, "usage": self.usage,
                "quantisation": self.quantisation, "source": self.source,
                "layers": [{**asdict(layer), "fits": layer.fits} for layer in self.layers]}


def _k(words: int) -> str:
    return f"{words / 1024:g}K" if words >= 1024 else str(words)


def _pow2(n: int) -> int:
    return 2 ** math.ceil(math.log2(n)) if n > 1 else 1


def _is_site(node: fx.Node) -> bool:
    return node.op == "call_module" and str(node.target).startswith("sites.")


def check_target(gm: fx.GraphModule, example: torch.Tensor, target: str = "speck", *,
                 spiking_input: bool = False) -> TargetReport:
    """Check the normalised graph ``gm`` (``spikecast.pipeline.prepare``: activation sites in place
    of ReLUs) against ``target`` (a name in :data:`TARGETS`) on ``example`` (one input batch).
    ``spiking_input``: the input arrives as events (a DVS, or spike-encoded), not as an analog image."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    spec = TARGETS[target]
    dense = isinstance(spec, DenseTarget)
    shapes = {name: shape[1:] for name, shape in ops.node_shapes(gm, example[:1]).items()}
    if dense:
        report = TargetReport(target=target, source=spec.source, kind="dense",
                              quantisation=f"weights {spec.weight_bits}-bit signed (one scale for the input and "
                                           f"recurrent weights, one for the output weights), thresholds "
                                           f"{spec.threshold_bits}-bit signed; weight-matrix biases are not "
                                           "transferred (neuron biases are); neurons leak by a bit shift "
                                           "(IF has no exact counterpart)")
        chip_input = f"the input is analog (an image): Xylo reads events on {spec.input_channels} input channels"
    else:
        report = TargetReport(target=target, source=spec.source,
                              quantisation=f"weights and biases {spec.weight_bits}-bit signed, thresholds and "
                                           f"membrane potentials {spec.state_bits}-bit signed, one scale per layer")
        chip_input = "the input is analog (an image): the chip reads events"
    if not spiking_input:
        report.problems.append(chip_input + ", so the input must be encoded into spikes (or the first layer run "
                               "off-chip)")
    current: Optional[TargetLayer] = None
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        if node.op == "call_function" and (ops.is_shape_op(node) or node.target is operator.getitem):
            continue
        kind = ops.packet(node) if node.op == "call_function" else None
        where = module_path(node)
        if kind in ops.WEIGHTED:
            current = _weighted_layer(node, kind, shapes)
            report.layers.append(current)
        elif _is_site(node):
            if current is None:
                report.problems.append(f"{where}: neurons that no weighted layer feeds")
            elif current.has_neuron:
                report.problems.append(f"{where}: a second neuron layer on one {'block' if dense else 'core'}")
            else:
                current.has_neuron = True
        elif kind in (aten.avg_pool2d, aten.adaptive_avg_pool2d):
            if current is None or not current.has_neuron:
                report.problems.append(f"{where}: pooling that follows no neuron layer")
                continue
            in_shape, out_shape = shapes.get(node.args[0].name, ()), shapes.get(node.name, ())
            window = in_shape[1] // out_shape[1] if len(out_shape) == 3 and out_shape[1] else 1
            args = list(node.args) + [None] * 5
            if kind is aten.avg_pool2d:
                k, s, p = args[1], args[2] or args[1], args[3] or [0]
                k = list(k) if isinstance(k, (list, tuple)) else [k, k]
                s = list(s) if isinstance(s, (list, tuple)) else [s, s]
                if not dense and (len(set(k)) != 1 or list(s) != list(k) or any(p)):
                    current.problems.append(f"pooling {k} stride {s} padding {p}: needs square windows, stride = "
                                            "window, no padding")
                window = k[0]
            current.pooling = (current.pooling or 1) * window  # Xylo: folded into the next weights
        elif kind in (aten.add, aten.sub, aten.cat):
            if dense and kind is not aten.cat and current is not None:
                current.skips += 1  # the skip's spikes reach these neurons through a second weight matrix
            elif dense:
                report.problems.append(f"{where or node.name}: {op_name(node)} has no counterpart on Xylo")
            else:
                report.problems.append(f"{where or node.name}: {op_name(node)} joins two branches (a residual sum): "
                                       "the chip's cores form a chain, with no core that adds")
        elif kind in FLATTENS or kind in (aten.dropout, aten.clone, aten.contiguous, aten.alias, aten.detach):
            continue
        elif dense and kind in SELECTIONS:
            continue  # picks or zero-pads spikes (the option-A shortcut): a 0/1 matrix folded into the weights
        elif kind in ops.MAXPOOLS:
            report.problems.append(f"{where}: max pooling (the chip pools by summing)" if not dense else
                                   f"{where}: max pooling has no counterpart on Xylo (no pooling; only linear "
                                   "pooling folds into weights)")
        else:
            report.problems.append(f"{where or node.name}: {op_name(node)} has no equivalent on the chip")
    if report.layers and not report.layers[-1].has_neuron:
        report.layers[-1].problems.append("the last layer has no neurons: the chip's output is spikes (add an "
                                          "output neuron layer, or read this layer off-chip)")
    for layer in report.layers:
        if not layer.has_neuron and layer is not report.layers[-1]:
            layer.problems.append("no neuron layer after it" + (" (on Xylo weights never feed weights)" if dense
                                                                else ""))
    if dense:
        _place_dense(report, spec)
    else:
        _place_cores(report, spec)
    report.problems = list(dict.fromkeys(report.problems))  # one line per module path and problem
    return report


def _weighted_layer(node: fx.Node, kind, shapes: dict) -> TargetLayer:
    """The layer of a weighted op: shapes, kernel, the memories a Speck core needs for it and its
    size as a dense matrix."""
    weight = node.args[1].meta.get("val") if isinstance(node.args[1], fx.Node) else None
    wshape = tuple(weight.shape) if weight is not None else ()
    source = node.args[0]
    while (kind is aten.linear and isinstance(source, fx.Node) and source.op == "call_function"
           and ops.packet(source) in FLATTENS):  # a linear layer reads the map before the flatten
        source = source.args[0]
    in_shape = shapes.get(source.name, ()) if isinstance(source, fx.Node) else ()
    out_shape = shapes.get(node.name, ())
    if kind is aten.linear:  # run as a convolution whose kernel covers the whole input
        kernel = (in_shape[1], in_shape[2]) if len(in_shape) == 3 else (1, 1)
        f, c = (wshape[0], wshape[1] // (kernel[0] * kernel[1])) if wshape else (out_shape[-1], 1)
        out_shape = (out_shape[-1], 1, 1)
    else:
        kernel = tuple(wshape[2:4]) if len(wshape) == 4 else (1, 1)
        f, c = (wshape[0], wshape[1]) if wshape else (out_shape[0], 1)
    layer = TargetLayer(path=module_path(node), op=op_name(node), input_shape=in_shape, output_shape=out_shape,
                        kernel=kernel)
    layer.kernel_memory = c * _pow2(kernel[0] * kernel[1]) * _pow2(f)
    h, w = (out_shape[1], out_shape[2]) if len(out_shape) == 3 else (1, 1)
    layer.neuron_memory = f * _pow2(h) * _pow2(w)
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    layer.bias_memory = f if bias is not None else 0
    layer.neurons = math.prod(out_shape) if out_shape else 0
    if kernel[0] != kernel[1]:
        layer.problems.append("kernel is not square")
    if kind in (aten.conv2d, aten.convolution) and len(node.args) > 6 and node.args[6] not in (None, 1):
        layer.problems.append(f"grouped convolution (groups={node.args[6]})")
    return layer


def _place_cores(report: TargetReport, spec: Target) -> None:
    for layer in report.layers:
        layer.fits_cores = [i for i, core in enumerate(spec.cores)
                            if layer.kernel_memory <= core.kernel_memory and layer.neuron_memory <= core.neuron_memory
                            and layer.bias_memory <= core.bias_memory]
        if not layer.fits_cores:
            layer.problems.append("needs more memory than any core has")
    if len(report.layers) > len(spec.cores):
        report.problems.append(f"{len(report.layers)} layers for {len(spec.cores)} cores")
    _assign(report.layers)


def _place_dense(report: TargetReport, spec: DenseTarget) -> None:
    """Xylo: the last layer's neurons are the output neurons, every other layer's are hidden
    neurons, filled in order until the population is used up."""
    layers = report.layers
    for layer in layers:  # Xylo has one synapse type per weight path; kernels need not be square
        layer.problems = [p for p in layer.problems if p != "kernel is not square"]
    if not layers:
        return
    channels = math.prod(layers[0].input_shape) if layers[0].input_shape else 0
    if channels > spec.input_channels:
        report.problems.append(f"{layers[0].path or '<top>'}: reads {channels:,} input channels; {spec.name} has "
                               f"{spec.input_channels}")
    neuron_layers = sum(layer.has_neuron for layer in layers)
    if neuron_layers < 2:
        report.problems.append("needs at least two neuron layers (hidden and output)")
    sources = channels
    for layer in layers:  # pooling and the option-A selections fold into the next matrix: it reads the neurons
        layer.dense_weights, sources = sources * layer.neurons, layer.neurons
    hidden = 0
    for layer in layers[:-1]:
        hidden += layer.neurons
        if hidden <= spec.hidden_neurons:
            layer.role = "hidden"
        else:
            layer.problems.append(f"hidden neurons used up ({hidden:,} needed so far, {spec.hidden_neurons:,} on "
                                  "the chip)")
    out = layers[-1]
    if out.neurons <= spec.output_neurons:
        out.role = "output"
    else:
        out.problems.append(f"{out.neurons:,} output neurons; {spec.name} has {spec.output_neurons}")
    if out.skips:
        out.problems.append("a residual sum into the output neurons (Xylo's output neurons are fed by the "
                            "hidden population only)")
    report.usage = (f"input channels {channels:,} / {spec.input_channels}, hidden neurons {hidden:,} / "
                    f"{spec.hidden_neurons:,}, output neurons {out.neurons:,} / {spec.output_neurons}")


def _assign(layers: list[TargetLayer]) -> None:
    """A core for each layer (bipartite matching, as sinabs' get_valid_mapping); layers left
    without one keep ``core=None``."""
    owner: dict[int, int] = {}

    def place(i: int, seen: set[int]) -> bool:
        for core in layers[i].fits_cores:
            if core in seen:
                continue
            seen.add(core)
            if core not in owner or place(owner[core], seen):
                owner[core] = i
                return True
        return False

    for i in range(len(layers)):
        place(i, set())
    for core, i in owner.items():
        layers[i].core = core
