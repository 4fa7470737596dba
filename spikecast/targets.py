"""Hardware-target checks without the chip: does a network fit SynSense Speck (DYNAP-CNN)?

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
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Optional

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
    name: str
    cores: tuple[Core, ...]
    weight_bits: int
    state_bits: int
    source: str


SPECK = Target(
    name="speck",
    cores=tuple(Core(k * 1024, n * 1024, 1024) for k, n in zip((16, 16, 16, 32, 32, 64, 64, 16, 16),
                                                               (64, 64, 64, 32, 32, 16, 16, 16, 16))),
    weight_bits=8, state_bits=16,
    source="sinabs 2.0.3 sinabs/backend/dynapcnn (chips/dynapcnn.py get_constraints, dynapcnn_layer.py "
           "memory_summary, discretize.py, utils.py)")
TARGETS = {"speck": SPECK}
FLATTENS = {aten.view, aten.reshape, aten._unsafe_view, aten.flatten}


@dataclass
class TargetLayer:
    """One would-be core: a weighted layer, its neurons and the pooling after them."""

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
    problems: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems and self.core is not None


@dataclass
class TargetReport:
    """What of a network fits a hardware target, by module path."""

    target: str
    layers: list[TargetLayer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # network-level: branches, analog input, ...
    quantisation: str = ""
    source: str = ""

    @property
    def fits(self) -> bool:
        return not self.problems and all(layer.fits for layer in self.layers)

    def table(self, markdown: bool = True) -> str:
        head = ["layer", "op", "in", "out", "kernel", "pool", "kernel mem", "neuron mem", "bias", "cores it fits",
                "core", "verdict"]
        rows = []
        for layer in self.layers:
            rows.append([layer.path or "<top>", layer.op, "x".join(map(str, layer.input_shape)),
                         "x".join(map(str, layer.output_shape)), f"{layer.kernel[0]}x{layer.kernel[1]}",
                         str(layer.pooling or "-"), _k(layer.kernel_memory), _k(layer.neuron_memory),
                         str(layer.bias_memory), ",".join(map(str, layer.fits_cores)) or "none",
                         "-" if layer.core is None else str(layer.core),
                         "fits" if layer.fits else "; ".join(layer.problems) or "no free core"])
        lines = [f"Target {self.target}: {'FITS' if self.fits else 'does NOT fit'} "
                 f"({sum(layer.fits for layer in self.layers)} of {len(self.layers)} layers placed)"]
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
        return {"target": self.target, "fits": self.fits, "problems": self.problems,
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
    of ReLUs) against ``target`` on ``example`` (one input batch). ``spiking_input``: the input
    arrives as events (a DVS, or spike-encoded), not as an analog image."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    spec = TARGETS[target]
    shapes = {name: shape[1:] for name, shape in ops.node_shapes(gm, example[:1]).items()}
    report = TargetReport(target=target, source=spec.source,
                          quantisation=f"weights and biases {spec.weight_bits}-bit signed, thresholds and membrane "
                                       f"potentials {spec.state_bits}-bit signed, one scale per layer")
    if not spiking_input:
        report.problems.append("the input is analog (an image): the chip reads events, so the input must be "
                               "encoded into spikes (or the first layer run off-chip)")
    current: Optional[TargetLayer] = None
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        if node.op == "call_function" and (ops.is_shape_op(node) or node.target is operator.getitem):
            continue
        kind = ops.packet(node) if node.op == "call_function" else None
        where = module_path(node)
        if kind in ops.WEIGHTED:
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
            current = TargetLayer(path=where, op=op_name(node), input_shape=in_shape, output_shape=out_shape,
                                  kernel=kernel)
            current.kernel_memory = c * _pow2(kernel[0] * kernel[1]) * _pow2(f)
            h, w = (out_shape[1], out_shape[2]) if len(out_shape) == 3 else (1, 1)
            current.neuron_memory = f * _pow2(h) * _pow2(w)
            bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            current.bias_memory = f if bias is not None else 0
            if kernel[0] != kernel[1]:
                current.problems.append("kernel is not square")
            if kind in (aten.conv2d, aten.convolution) and len(node.args) > 6 and node.args[6] not in (None, 1):
                current.problems.append(f"grouped convolution (groups={node.args[6]})")
            report.layers.append(current)
        elif _is_site(node):
            if current is None:
                report.problems.append(f"{where}: neurons that no weighted layer feeds")
            elif current.has_neuron:
                report.problems.append(f"{where}: a second neuron layer on one core")
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
                if len(set(k)) != 1 or list(s) != list(k) or any(p):
                    current.problems.append(f"pooling {k} stride {s} padding {p}: needs square windows, stride = "
                                            "window, no padding")
                window = k[0]
            current.pooling = (current.pooling or 1) * window
        elif kind in (aten.add, aten.sub, aten.cat):
            report.problems.append(f"{where or node.name}: {op_name(node)} joins two branches (a residual sum): the "
                                   "chip's cores form a chain, with no core that adds")
        elif kind in FLATTENS or kind in (aten.dropout, aten.clone, aten.contiguous, aten.alias, aten.detach):
            continue
        elif kind in ops.MAXPOOLS:
            report.problems.append(f"{where}: max pooling (the chip pools by summing)")
        else:
            report.problems.append(f"{where or node.name}: {op_name(node)} has no equivalent on the chip")
    if report.layers and not report.layers[-1].has_neuron:
        report.layers[-1].problems.append("the last layer has no neurons: the chip's output is spikes (add an "
                                          "output neuron layer, or read this layer off-chip)")
    for layer in report.layers:
        if not layer.has_neuron and layer is not report.layers[-1]:
            layer.problems.append("no neuron layer after it")
        layer.fits_cores = [i for i, core in enumerate(spec.cores)
                            if layer.kernel_memory <= core.kernel_memory and layer.neuron_memory <= core.neuron_memory
                            and layer.bias_memory <= core.bias_memory]
        if not layer.fits_cores:
            layer.problems.append("needs more memory than any core has")
    if len(report.layers) > len(spec.cores):
        report.problems.append(f"{len(report.layers)} layers for {len(spec.cores)} cores")
    _assign(report.layers)
    report.problems = list(dict.fromkeys(report.problems))  # one line per module path and problem
    return report


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
