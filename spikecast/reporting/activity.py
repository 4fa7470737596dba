"""Per-layer activity, synaptic operations and estimated energy of an SNN, from one simulation.

What a reader of a paper or a design review asks after "how accurate": how busy is each layer,
how far is each layer from the ANN, and what does a timestep budget cost. One run of
:meth:`SpikingNetwork.simulate` (with hooks, so the numbers are the runtime's) gives, at every
budget ``T`` of the list:

* per neuron layer: firing rate (non-zero outputs per neuron per step) and the relative error of
  its mean output against the ANN activation at the same site, ``mean|a - r_T| / mean|a|``;
* per weighted layer: synaptic operations per image, counted event by event - each non-zero
  input element costs one operation per output it connects to (a convolution with all-ones
  weights over the non-zero mask counts them exactly, for any stride, padding or groups; a
  zero-padding tap never carries a spike, so it costs the SNN nothing). A layer fed by spikes
  performs accumulates (AC); a layer fed by analog values (the first conv on the image, a
  classifier after average pooling) performs multiply-accumulates (MAC). Layers of the static
  prefix run once per image, not once per step;
* per compensated op (GELU, LayerNorm, softmax, attention products... see
  :mod:`spikecast.convert.compensation`): its dense multiply-accumulates at every step, counted as
  MAC, plus one row for the running means and differences that feed them (SNN only);
* the ANN's MACs per layer, by the usual convention (BN folded into the convolutions): a
  convolution costs ``out_h * out_w * k_h * k_w * (c_in / groups) * c_out`` per image, zero-padding
  taps included, a linear layer ``in * out`` per input row (CIFAR ResNet-20: 40.55M). Each
  compensated op is charged to the ANN at its own dense cost once per image (the ANN computes it
  once); the running means and differences are SNN-only and cost the ANN nothing.

Energy (:class:`EnergyModel`, constants stated in every report): compute = MAC x E_MAC + AC x
E_AC with E_MAC = 4.6 pJ and E_AC = 0.9 pJ (32-bit float, 45 nm; Horowitz, ISSCC 2014), the
figures used across the SNN literature. Memory follows the STEP benchmark's accounting (3.12 pJ
per bit moved): per step every neuron reads and writes its membrane potential (``state_bits``
each way); the ANN reads and writes each activation once. Both are estimates of a simple
accelerator, not measurements, and the report says so.

Equal-bit quantised ANN (Yan et al., "Reconsidering the energy efficiency of spiking neural
networks", arXiv 2409.08290): a T-step rate-coded SNN carries as much information per neuron as
an ANN whose activations have ``b = ceil(log2(T + 1))`` bits, so every report also costs that
ANN. Same MAC count as the ANN; a layer the SNN feeds with spikes takes ``b``-bit activations in
the quantised ANN and costs ``E_MUL(b) + E_AC`` per MAC, with ``E_MUL(b) = 0.2 pJ x b x w / 64``
(Horowitz's 8-bit integer multiply, 0.2 pJ, scaled by the operand widths' product - the number of
partial products of an array multiplier; at 32 x 32 bits it gives 3.2 pJ against Horowitz's
3.1 pJ), ``w = weight_bits`` (32 by default: the SNN's weights) and the same accumulate as the
SNN's (E_AC), so the two differ only in how activations are coded. Layers the SNN itself runs on
analog values (the input layer, a classifier after pooling, compensated ops) cost E_MAC in both.
Its memory: each activation read and written once at ``b`` bits, at the same pJ per bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch
import torch.fx as fx
from torch.utils._python_dispatch import TorchDispatchMode

from spikecast.calibrate.statistics import iterate_inputs
from spikecast.convert.compensation import compensated_nodes
from spikecast.devices import device_of
from spikecast.graph import ops
from spikecast.graph.sites import site_nodes
from spikecast.graph.trace import module_path
from spikecast.nn.neuron import eager_steps
from spikecast.nn.stateful import StatefulModule
from spikecast.pipeline import prepare
from spikecast.recipe import recipe_of
from spikecast.runtime.network import SpikingNetwork
from spikecast.validate import ModuleState

aten = torch.ops.aten


#: the convention of the ANN's MAC count, as every report states it
MAC_CONVENTION = ("ANN MACs by the usual convention (BN folded): a convolution costs out_h x out_w x k_h x k_w x "
                  "(c_in / groups) x c_out per image, zero-padding taps included; a linear layer in x out; each "
                  "compensated op its dense cost once per image, without the SNN's running means. A zero-padding "
                  "tap never spikes, so it is no synaptic operation of the SNN")


def equal_bits(T: int) -> int:
    """Activation bits of the ANN equivalent to a ``T``-step rate-coded SNN: ``ceil(log2(T + 1))``
    (Yan et al., arXiv 2409.08290) - exactly ``T.bit_length()`` for ``T >= 1``."""
    if int(T) < 1:
        raise ValueError(f"timesteps must be positive, got {T!r}")
    return int(T).bit_length()


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation and per bit of memory traffic, in picojoules.

    The equal-bit quantised ANN (see the module docstring) pays ``e_qmac_pj(b)`` per MAC on a
    ``b``-bit activation: a ``b x weight_bits`` integer multiply, scaled from Horowitz's 8-bit one
    (``e_mul8_pj``) by the product of the widths, plus the SNN's own accumulate (``e_ac_pj``)."""

    e_mac_pj: float = 4.6
    e_ac_pj: float = 0.9
    memory_pj_per_bit: float = 3.12
    state_bits: int = 32  # membrane potential / activation word size
    e_mul8_pj: float = 0.2  # 8-bit integer multiply, 45 nm (Horowitz, ISSCC 2014)
    weight_bits: int = 32  # weight width of the equal-bit quantised ANN (the SNN's weights)
    reference: str = ("E_MAC 4.6 pJ and E_AC 0.9 pJ: 32-bit float add/multiply-add at 45 nm (Horowitz, ISSCC 2014); "
                      "memory 3.12 pJ/bit with membrane potentials read and written every step (STEP benchmark "
                      "accounting)")

    def e_qmac_pj(self, bits: int) -> float:
        """Energy of one MAC of a ``bits``-bit activation and a ``weight_bits`` weight (pJ)."""
        return self.e_mul8_pj * bits * self.weight_bits / 64 + self.e_ac_pj

    def quantized_reference(self) -> str:
        return (f"equal-bit quantised ANN (Yan et al., arXiv 2409.08290): activations of b = ceil(log2(T+1)) bits; "
                f"a MAC on a spike-fed layer's b-bit activation costs {self.e_mul8_pj:g} pJ x b x {self.weight_bits} / 64 "
                f"(b x {self.weight_bits}-bit integer multiply scaled from the 8-bit one, {self.e_mul8_pj:g} pJ, Horowitz "
                f"ISSCC 2014) + E_AC {self.e_ac_pj:g} pJ (the SNN's accumulate); layers the SNN runs on analog values "
                f"cost E_MAC {self.e_mac_pj:g} pJ in both; activation memory: each activation read and written once "
                f"at b bits, {self.memory_pj_per_bit:g} pJ/bit")


@dataclass
class LayerActivity:
    """One neuron layer: ``firing_rate[T]`` (spikes per neuron per step over the first T steps) and
    ``error[T]`` (relative error of its mean output after T steps against the ANN activation)."""

    name: str
    neurons: int  # per image
    firing_rate: dict[int, float]
    error: dict[int, Optional[float]]


@dataclass
class LayerOperations:
    """One weighted layer (or compensated op): ANN MACs per image; SNN operations per image over
    the first T steps. ``compensated``: a compensated op (or the SNN-only running means and
    differences, with ``ann_macs`` 0), not a convolution / linear layer."""

    name: str
    kind: str  # "AC" (spike input) or "MAC" (analog input)
    static: bool  # in the static prefix: runs once per image
    ann_macs: float
    snn_ops: dict[int, float]
    compensated: bool = False


@dataclass
class ActivityReport:
    timesteps: list[int]
    images: int
    layers: list[LayerActivity]
    operations: list[LayerOperations]
    energy_model: EnergyModel = field(default_factory=EnergyModel)

    # ------------------------------------------------------------------ totals
    def ann_macs(self) -> float:
        """The ANN's MACs per image: convolutions and linear layers, and compensated ops once."""
        return sum(op.ann_macs for op in self.operations)

    def ann_layer_macs(self) -> float:
        """The ANN's MACs per image in convolutions and linear layers only (the figure papers quote)."""
        return sum(op.ann_macs for op in self.operations if not op.compensated)

    def ann_macs_by_input(self) -> dict[str, float]:
        """The ANN's MACs split by what the SNN feeds the op: ``"spike"`` (AC layers: ``b``-bit
        activations in the equal-bit ANN) and ``"analog"`` (full-precision in both)."""
        out = {"spike": 0.0, "analog": 0.0}
        for op in self.operations:
            out["spike" if op.kind == "AC" else "analog"] += op.ann_macs
        return out

    def snn_ops(self, T: int) -> dict[str, float]:
        """``{"AC": ..., "MAC": ...}`` per image over ``T`` steps."""
        out = {"AC": 0.0, "MAC": 0.0}
        for op in self.operations:
            out[op.kind] += op.snn_ops[T]
        return out

    def neurons(self) -> int:
        return sum(layer.neurons for layer in self.layers)

    def energy(self, T: int) -> dict[str, float]:
        """Estimated energy per image in microjoules at ``T``: the SNN's compute / memory / total, the
        fp32 ANN's, and the equal-bit quantised ANN's (``equal_bit_ann_*``, ``b = ceil(log2(T+1))``)."""
        m = self.energy_model
        ops_T = self.snn_ops(T)
        snn_compute = ops_T["AC"] * m.e_ac_pj + ops_T["MAC"] * m.e_mac_pj
        snn_memory = self.neurons() * T * 2 * m.state_bits * m.memory_pj_per_bit
        ann_compute = self.ann_macs() * m.e_mac_pj
        ann_memory = self.neurons() * 2 * m.state_bits * m.memory_pj_per_bit
        b = equal_bits(T)
        split = self.ann_macs_by_input()
        q_compute = split["spike"] * m.e_qmac_pj(b) + split["analog"] * m.e_mac_pj
        q_memory = self.neurons() * 2 * b * m.memory_pj_per_bit
        uj = 1e-6
        return {"snn_compute_uj": snn_compute * uj, "snn_memory_uj": snn_memory * uj,
                "snn_total_uj": (snn_compute + snn_memory) * uj, "ann_compute_uj": ann_compute * uj,
                "ann_memory_uj": ann_memory * uj, "ann_total_uj": (ann_compute + ann_memory) * uj,
                "equal_bit_ann_bits": b, "equal_bit_ann_compute_uj": q_compute * uj,
                "equal_bit_ann_memory_uj": q_memory * uj, "equal_bit_ann_total_uj": (q_compute + q_memory) * uj}

    def comparison(self, T: int) -> dict[str, bool]:
        """Whether the SNN at ``T`` costs less per image than the fp32 ANN and than the equal-bit
        quantised ANN, in total (compute + memory) and in compute alone."""
        e = self.energy(T)
        return {"snn_cheaper_than_ann": e["snn_total_uj"] < e["ann_total_uj"],
                "snn_cheaper_than_equal_bit_ann": e["snn_total_uj"] < e["equal_bit_ann_total_uj"],
                "snn_compute_cheaper_than_ann": e["snn_compute_uj"] < e["ann_compute_uj"],
                "snn_compute_cheaper_than_equal_bit_ann": e["snn_compute_uj"] < e["equal_bit_ann_compute_uj"]}

    def mean_firing_rate(self, T: int) -> float:
        total = self.neurons()
        return sum(layer.firing_rate[T] * layer.neurons for layer in self.layers) / total if total else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        for layer in d["layers"]:
            layer["firing_rate"] = {str(t): v for t, v in layer["firing_rate"].items()}
            layer["error"] = {str(t): v for t, v in layer["error"].items()}
        for op in d["operations"]:
            op["snn_ops"] = {str(t): v for t, v in op["snn_ops"].items()}
        d["totals"] = {str(t): {**self.snn_ops(t), "mean_firing_rate": self.mean_firing_rate(t), **self.energy(t),
                                **self.comparison(t)}
                       for t in self.timesteps}
        d["ann_macs"] = self.ann_macs()
        d["ann_layer_macs"] = self.ann_layer_macs()
        d["mac_convention"] = MAC_CONVENTION
        m = self.energy_model
        split = self.ann_macs_by_input()
        d["equal_bit_ann"] = {
            "model": m.quantized_reference(),
            "rows": {str(t): {"timesteps": t, "bits": equal_bits(t), "macs": self.ann_macs(),
                              "macs_at_bits": split["spike"], "macs_full_precision": split["analog"],
                              "e_mac_pj_at_bits": m.e_qmac_pj(equal_bits(t)),
                              "compute_uj": self.energy(t)["equal_bit_ann_compute_uj"],
                              "memory_uj": self.energy(t)["equal_bit_ann_memory_uj"],
                              "total_uj": self.energy(t)["equal_bit_ann_total_uj"],
                              "snn_cheaper": self.comparison(t)["snn_cheaper_than_equal_bit_ann"]}
                     for t in self.timesteps}}
        return d


# ------------------------------------------------------------------------------------ counting
_CONVS = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.convolution.default}
_LINEARS = {aten.linear.default}


def _connections(func, args, mask: torch.Tensor) -> torch.Tensor:
    """Per image: the number of (input element, output element) connections whose input is in ``mask``."""
    weight = args[1]
    ones = torch.ones_like(weight)
    if func in _LINEARS:
        return mask.flatten(1).sum(1) * weight.shape[0] if mask.dim() > 1 else mask.sum()[None] * weight.shape[0]
    if func is aten.convolution.default:
        out = aten.convolution.default(mask, ones, None, *args[3:])
    else:
        out = func(mask, ones, None, *args[3:])
    return out.flatten(1).sum(1)


def _dense_macs(func, args, out: torch.Tensor) -> float:
    """MACs of one weighted-layer call over its whole batch, by the usual convention: every output
    element costs its full kernel, ``k_h * k_w * (c_in / groups)`` for a convolution (zero-padding
    taps included) or ``in`` for a linear layer; a transposed convolution costs each input element
    its ``(c_out / groups) * k_h * k_w`` outputs."""
    weight = args[1]
    if func is aten.convolution.default and len(args) > 6 and args[6]:  # transposed
        return float(args[0].numel() * weight[0].numel())
    return float(out.numel() * weight[0].numel())


class _OpCounter(TorchDispatchMode):
    """Counts, per weighted-layer call, the connections of non-zero inputs (event-driven: padding
    taps never count) and the dense MACs of the call (padding taps included)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[float, float]] = []  # (event-driven connections, dense MACs), summed over the batch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CONVS or func in _LINEARS:
            x = args[0]
            active = _connections(func, args, (x != 0).to(x.dtype))
            self.calls.append((float(active.sum()), _dense_macs(func, args, out)))
        return out


def _weighted_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in _CONVS | _LINEARS]


def _stateful(gm: fx.GraphModule, node: fx.Node) -> Optional[StatefulModule]:
    if node.op != "call_module":
        return None
    module = gm.get_submodule(node.target)
    return module if isinstance(module, StatefulModule) else None


def _spike_fed(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True when the layer's input is made only of spikes (outputs of stateful modules that emit
    spikes - neurons, spiking max-pools - moved around by shape ops and zero padding), so each
    input event is a weight accumulate."""
    return ops.spike_driven(node, lambda n: getattr(_stateful(gm, n), "emits_spikes", False))


def compensated_costs(snn: SpikingNetwork, x: torch.Tensor) -> list[tuple[str, float, float]]:
    """``(name, MACs per image and step, ANN MACs per image)`` of every compensated op of the step
    graph - dense work done at every step, whatever the spikes; the ANN computes the same op once
    per image at the same dense cost - then one row for the running means and differences that
    feed them (one operation per element each, every step; SNN only, so 0 for the ANN)."""
    step = snn._step
    # a convolution / linear layer on running means is counted with the weighted layers
    nodes = [n for n in compensated_nodes(step) if n.target not in _CONVS | _LINEARS]
    # the dense stateful helpers of compensation (running means, differences): no spikes out
    helpers = [n for n in step.graph.nodes if (m := _stateful(step, n)) is not None and not m.emits_spikes]
    if not nodes:
        return []
    snn.reset()
    with torch.inference_mode():
        static = snn._prefix(x[:1])
        macs = ops.node_macs(step, x[:1], *static)
    snn.reset()
    out = [(f"{module_path(n) or '<top level>'}: {n.target._opname if hasattr(n.target, '_opname') else n.name} "
            "(compensated)", macs.get(n.name, 0.0), macs.get(n.name, 0.0)) for n in nodes]
    overhead = sum(macs.get(n.name, 0.0) for n in helpers)
    if overhead:
        out.append(("running means and differences (compensation, SNN only)", overhead, 0.0))
    return out


def count_ann_macs(ann: torch.nn.Module, example: torch.Tensor) -> dict[str, float]:
    """MACs per image of every convolution and linear layer of ``ann`` (traced and normalised as
    conversion does, so BN is folded), by the convention of :data:`MAC_CONVENTION`, from one run
    on ``example``; the caller's ANN is left on its device and in its modes."""
    state = ModuleState(ann)
    device = device_of(ann) or example.device
    try:
        state.use(device)
        x = example.to(device)
        graph = prepare(ann, x[:2])
        counter = _OpCounter()
        with torch.inference_mode(), counter:
            graph(x)
        names = [module_path(nd) or nd.name for nd in _weighted_nodes(graph)]
    finally:
        state.restore()
    out: dict[str, float] = {}
    for name, (_, dense) in zip(names, counter.calls):  # a module called twice: both calls
        out[name] = out.get(name, 0.0) + dense / len(x)
    return out


def measure_activity(ann: torch.nn.Module, snn: SpikingNetwork, data, timesteps: Sequence[int], *,
                     max_images: int = 256, energy_model: EnergyModel = EnergyModel()) -> ActivityReport:
    """Simulate ``snn`` on up to ``max_images`` inputs of ``data`` for ``max(timesteps)`` steps and
    measure per-layer firing rates, errors against ``ann`` and operation counts at every budget."""
    budgets = sorted({int(t) for t in timesteps})
    if not budgets or budgets[0] < 1:
        raise ValueError(f"timesteps must be positive integers, got {timesteps!r}")
    xs, n = [], 0
    for x in iterate_inputs(data):
        xs.append(x)
        n += len(x)
        if n >= max_images:
            break
    if not xs:
        raise ValueError("activity measurement needs at least one input batch")
    x = torch.cat(xs)[:max_images]
    device = device_of(snn) or torch.device("cpu")
    x = x.to(device)

    # ANN: activation at every site (by readable name) and dense MACs per weighted layer; the
    # caller's ANN is used in eval mode on the SNN's device, then put back as it was
    ann_state = ModuleState(ann)
    try:
        ann_state.use(device)
        ann_graph = prepare(ann, x[:2], maxpool=recipe_of(snn).maxpool_rewrite)
        ann_acts: dict[str, torch.Tensor] = {}
        hooks = [site.register_forward_hook(lambda m, a, out, key=site.name: ann_acts.__setitem__(key, out.detach()))
                 for _, site in site_nodes(ann_graph)]
        ann_counter = _OpCounter()
        with torch.inference_mode(), ann_counter:
            ann_graph(x)
        for h in hooks:
            h.remove()
        ann_names = [module_path(nd) or nd.name for nd in _weighted_nodes(ann_graph)]
    finally:
        ann_state.restore()
    ann_macs = {name: dense / len(x) for name, (_, dense) in zip(ann_names, ann_counter.calls)}

    # SNN: one simulation with neuron hooks and the op counter
    neurons = snn.neurons()
    sums = {name: None for name in neurons}
    spikes = {name: 0.0 for name in neurons}
    snapshots: dict[int, dict] = {}

    def neuron_hook(name):
        def hook(mod, args, out):
            sums[name] = out.double() if sums[name] is None else sums[name] + out.double()
            # a multi-level neuron's step of n spikes counts n
            spikes[name] += float((out.abs() / mod.threshold).round().sum()) if mod.levels > 1 \
                else float((out != 0).sum())
        return hook

    handles = [mod.register_forward_hook(neuron_hook(name)) for name, mod in neurons.items()]
    counter = _OpCounter()
    calls_at_step: dict[int, int] = {}

    def on_step(t, out):
        calls_at_step[t] = len(counter.calls)
        if t in budgets:
            snapshots[t] = {name: ((sums[name] / t) if sums[name] is not None else None, spikes[name])
                            for name in neurons}

    try:
        with eager_steps(), counter:  # fused kernels do not run under a dispatch mode
            snn.simulate(x, budgets, callback=on_step)
    finally:
        for h in handles:
            h.remove()

    layers = []
    for name, mod in neurons.items():
        per_image = None
        rates, errors = {}, {}
        for t in budgets:
            mean, count = snapshots[t][name]
            if mean is None:
                rates[t], errors[t] = 0.0, None
                continue
            per_image = mean[0].numel()
            rates[t] = count / (mean.numel() * t)
            ref = ann_acts.get(name)
            if ref is not None and ref.shape == mean.shape:
                scale = float(ref.double().abs().mean())
                errors[t] = float((mean - ref.double()).abs().mean()) / scale if scale > 0 else None
            else:
                errors[t] = None
        layers.append(LayerActivity(name, int(per_image or 0), rates, errors))

    # attribute counted calls to layers: the prefix's weighted layers run first (once), then the
    # step graph's in graph order, once per step
    prefix_nodes, step_nodes = _weighted_nodes(snn._prefix), _weighted_nodes(snn._step)
    n_prefix = len(prefix_nodes)
    operations = []
    for k, node in enumerate(prefix_nodes):
        name = module_path(node) or node.name
        active = counter.calls[k][0] / len(x)
        operations.append(LayerOperations(name, "MAC", True, ann_macs.get(name, counter.calls[k][1] / len(x)),
                                          {t: active for t in budgets}))
    per_step = len(step_nodes)
    for j, node in enumerate(step_nodes):
        name = module_path(node) or node.name
        kind = "AC" if _spike_fed(snn._step, node) else "MAC"
        cumulative, ops_T = 0.0, {}
        for t in range(1, budgets[-1] + 1):
            idx = n_prefix + (t - 1) * per_step + j
            cumulative += counter.calls[idx][0] / len(x)
            if t in budgets:
                ops_T[t] = cumulative
        operations.append(LayerOperations(name, kind, False, ann_macs.get(name, counter.calls[n_prefix + j][1] / len(x)),
                                          ops_T))
    for name, per_step_macs, ann_cost in compensated_costs(snn, x):
        operations.append(LayerOperations(name, "MAC", False, ann_cost, {t: per_step_macs * t for t in budgets},
                                          compensated=True))
    if len(counter.calls) != n_prefix + per_step * budgets[-1]:
        raise RuntimeError("operation counting lost track of the layer calls "
                           f"({len(counter.calls)} calls for {n_prefix} + {per_step} x {budgets[-1]})")
    return ActivityReport(budgets, len(x), layers, operations, energy_model)
