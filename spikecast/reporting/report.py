"""Reports: "how many timesteps do I need, and what does it cost?" as JSON, Markdown and one HTML page.

:func:`build_report` runs the validator (accuracy and agreement at every T, early exit) and
:func:`spikecast.reporting.activity.measure_activity` (per-layer firing rates and errors, synaptic
operations, energy) and collects them in a :class:`Report`; :func:`write_report` writes

* ``report.json`` - everything, machine-readable, ``{"format": "spikecast-report", "schema_version": 1}``;
* ``report.md`` - the tables, to paste into a paper or a review;
* ``report.html`` - one self-contained page (plots embedded as PNG data, inline CSS, no script,
  nothing fetched), readable offline;
* ``accuracy_vs_timesteps.png``, ``energy_vs_accuracy.png``, ``firing_rates.png``, ``layer_error.png``.

Latency to parity: the smallest T whose SNN top-1 is within 0.5 / 1 / 2 points of the ANN (None
when no budget reaches it).

Energy (when activity was measured): the SNN at every T next to the fp32 ANN and, for each T, the
equal-bit quantised ANN (activations of ``b = ceil(log2(T+1))`` bits, Yan et al., arXiv 2409.08290;
model in :mod:`spikecast.reporting.activity`): a row per ``b`` in the summary table, a comparison
table, and for every T a sentence saying whether the SNN is cheaper - "NOT cheaper" when it is not
- with the booleans in the JSON (``activity.totals[T].snn_cheaper_than_ann`` /
``snn_cheaper_than_equal_bit_ann``). The ANN's MACs follow the usual convention (zero-padding taps
included, :data:`~spikecast.reporting.activity.MAC_CONVENTION`), stated in every report.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from spikecast.calibrate.statistics import iterate_inputs
from spikecast.convert.compensation import compensated_nodes
from spikecast.data import DataLike
from spikecast.devices import device_of
from spikecast.errors import SpikecastError
from spikecast.graph import ops
from spikecast.inspection import MAXPOOL_SPIKING, NEURON, inspect
from spikecast.nn.maxpool import SpikingMaxPool
from spikecast.nn.neuron import IFNeuron
from spikecast.recipe import calibration_set_of, recipe_of
from spikecast.reporting.activity import MAC_CONVENTION, ActivityReport, EnergyModel, equal_bits, measure_activity
from spikecast.runtime.network import SpikingNetwork
from spikecast.validate import DEFAULT_TIMESTEPS, ModuleState, ValidationResult, validate

REPORT_FORMAT = "spikecast-report"
SCHEMA_VERSION = 1
PARITY_POINTS = (0.5, 1.0, 2.0)
PLOTS = ("accuracy_vs_timesteps.png", "energy_vs_accuracy.png", "firing_rates.png", "layer_error.png")


@dataclass
class Report:
    """Everything a report shows. ``quantized_ann`` maps a label (e.g. ``"int8 ANN (onnxruntime)"``)
    to its top-1; ``masking`` is ``{"ratio": r, "accuracy_without": {T: acc}}`` when the SNN masks spikes."""

    title: str
    model: str
    data: str
    validation: ValidationResult
    activity: Optional[ActivityReport] = None
    quantized_ann: dict = field(default_factory=dict)
    masking: Optional[dict] = None
    snn_metadata: dict = field(default_factory=dict)
    neuron_summary: dict = field(default_factory=dict)  # see neuron_summary()
    maxpools: Optional[dict] = None  # see maxpool_record(); None when the ANN has no max-pool
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    # ------------------------------------------------------------------ derived numbers
    def latency_to_parity(self) -> dict[float, Optional[int]]:
        """Smallest T with SNN top-1 >= ANN top-1 - p points, for p in 0.5 / 1 / 2 (None: not reached)."""
        v = self.validation
        out: dict[float, Optional[int]] = {}
        for p in PARITY_POINTS:
            if v.ann_accuracy is None:
                # unlabelled data: parity in agreement with the ANN instead
                hits = [t for t in v.timesteps if v.agreement[t] >= 1.0 - p / 100]
            else:
                hits = [t for t in v.timesteps if v.snn_accuracy[t] is not None
                        and v.snn_accuracy[t] >= v.ann_accuracy - p / 100 - 1e-12]
            out[p] = min(hits) if hits else None
        return out

    def to_dict(self) -> dict:
        v = self.validation
        doc = {
            "format": REPORT_FORMAT, "schema_version": SCHEMA_VERSION, "title": self.title, "created": self.created,
            "model": self.model, "data": self.data,
            "ann": {"top1": v.ann_accuracy, "quantized": self.quantized_ann},
            "snn": {"timesteps": v.timesteps, "samples": v.samples,
                    "top1": {str(t): v.snn_accuracy[t] for t in v.timesteps},
                    "agreement": {str(t): v.agreement[t] for t in v.timesteps},
                    "logit_error": {str(t): v.logit_error[t] for t in v.timesteps},
                    "cosine": {str(t): v.cosine[t] for t in v.timesteps}},
            "latency_to_parity": {f"{p:g}": t for p, t in self.latency_to_parity().items()},
            "early_exit": [e.__dict__ for e in (v.early_exit or [])],
            "tolerance": v.tolerance, "passed": v.passed,
            "masking": _jsonable(self.masking),
            "conversion": _jsonable(self.snn_metadata),
            "neurons": self.neuron_summary,
            "maxpools": self.maxpools,
            "activity": self.activity.to_dict() if self.activity is not None else None,
        }
        return doc

    # ------------------------------------------------------------------ tables
    def summary_table(self) -> str:
        v, a = self.validation, self.activity
        head = "| T | SNN top-1 | Δ vs ANN | agreement | mean firing rate | synaptic ops / image | energy / image (µJ) |"
        lines = [head, "|---:|---:|---:|---:|---:|---:|---:|"]
        for t in v.timesteps:
            acc = v.snn_accuracy[t]
            acc_s = "n/a" if acc is None else f"{100 * acc:.2f}%"
            delta = "n/a" if acc is None or v.ann_accuracy is None else f"{100 * (acc - v.ann_accuracy):+.2f}"
            if a is not None and t in a.timesteps:
                ops = a.snn_ops(t)
                e = a.energy(t)
                rate = f"{a.mean_firing_rate(t):.3f}"
                ops_s = f"{_si(ops['AC'])} AC + {_si(ops['MAC'])} MAC"
                energy = f"{e['snn_total_uj']:.2f} ({e['snn_compute_uj']:.2f} compute)"
            else:
                rate = ops_s = energy = "-"
            lines.append(f"| {t} | {acc_s} | {delta} | {100 * v.agreement[t]:.2f}% | {rate} | {ops_s} | {energy} |")
        if a is not None:
            e = a.energy(a.timesteps[0])
            lines.append(f"| ANN | {_pct(v.ann_accuracy)} | | | | {_si(a.ann_macs())} MAC | "
                         f"{e['ann_total_uj']:.2f} ({e['ann_compute_uj']:.2f} compute) |")
            for b, ts in _equal_bit_groups(a.timesteps).items():
                e = a.energy(ts[0])
                lines.append(f"| {b}-bit ANN (equal bits to T={', '.join(map(str, ts))}) | not measured | | | | "
                             f"{_si(a.ann_macs())} MAC at {b}-bit activations | "
                             f"{e['equal_bit_ann_total_uj']:.2f} ({e['equal_bit_ann_compute_uj']:.2f} compute) |")
        for label, acc in self.quantized_ann.items():
            lines.append(f"| {label} | {_pct(acc)} | | | | | |")
        return "\n".join(lines)

    def layer_table(self) -> str:
        a = self.activity
        if a is None:
            return ""
        ts = a.timesteps
        lines = ["| layer | neurons / image | " + " | ".join(f"rate T={t}" for t in ts) + " | "
                 + " | ".join(f"error T={t}" for t in ts) + " |",
                 "|---|---:|" + "---:|" * (2 * len(ts))]
        for layer in a.layers:
            rates = " | ".join(f"{layer.firing_rate[t]:.3f}" for t in ts)
            errs = " | ".join("n/a" if layer.error[t] is None else f"{layer.error[t]:.3f}" for t in ts)
            lines.append(f"| {layer.name} | {layer.neurons} | {rates} | {errs} |")
        return "\n".join(lines)

    def energy_table(self) -> str:
        """Per T: the SNN's energy next to the equal-bit quantised ANN's and the fp32 ANN's (µJ per image)."""
        a = self.activity
        if a is None:
            return ""
        lines = ["| T | b = ⌈log2(T+1)⌉ | SNN (µJ) | b-bit ANN (µJ) | fp32 ANN (µJ) | SNN cheaper than b-bit ANN | "
                 "SNN cheaper than fp32 ANN |", "|---:|---:|---:|---:|---:|---|---|"]
        for t in a.timesteps:
            e, c = a.energy(t), a.comparison(t)
            lines.append(f"| {t} | {e['equal_bit_ann_bits']} | {e['snn_total_uj']:.2f} | "
                         f"{e['equal_bit_ann_total_uj']:.2f} | {e['ann_total_uj']:.2f} | "
                         f"{'yes' if c['snn_cheaper_than_equal_bit_ann'] else 'NO'} | "
                         f"{'yes' if c['snn_cheaper_than_ann'] else 'NO'} |")
        return "\n".join(lines)

    def energy_verdicts(self) -> list[str]:
        """One sentence per T: is the SNN cheaper (compute + memory, per image) than the equal-bit
        quantised ANN and than the fp32 ANN? "NOT cheaper" when it is not."""
        a = self.activity
        if a is None:
            return []
        out = []
        for t in a.timesteps:
            e, c = a.energy(t), a.comparison(t)
            b = e["equal_bit_ann_bits"]
            q = "cheaper" if c["snn_cheaper_than_equal_bit_ann"] else "NOT cheaper"
            f = "cheaper" if c["snn_cheaper_than_ann"] else "NOT cheaper"
            out.append(f"T={t}: the SNN ({e['snn_total_uj']:.2f} µJ per image) is {q} than the equal-bit {b}-bit "
                       f"quantised ANN ({e['equal_bit_ann_total_uj']:.2f} µJ), and is {f} than the fp32 ANN "
                       f"({e['ann_total_uj']:.2f} µJ); in compute alone it is "
                       f"{'cheaper' if c['snn_compute_cheaper_than_equal_bit_ann'] else 'NOT cheaper'} than the "
                       f"{b}-bit ANN and {'cheaper' if c['snn_compute_cheaper_than_ann'] else 'NOT cheaper'} than the "
                       "fp32 ANN.")
        return out

    def markdown(self) -> str:
        v = self.validation
        parity = self.latency_to_parity()
        lines = [f"# {self.title}", "",
                 f"- model: {self.model}", f"- data: {self.data} ({v.samples} samples)",
                 f"- ANN top-1: {_pct(v.ann_accuracy)}" + "".join(f"; {k}: {_pct(x)}" for k, x in self.quantized_ann.items()),
                 "- latency to parity: " + ", ".join(f"within {p:g} point{'s' if p != 1 else ''}: "
                                                     f"{'T=' + str(t) if t else 'not reached'}" for p, t in parity.items()),
                 f"- {'PASSED' if v.passed else 'FAILED'}: tolerance {100 * v.tolerance:.1f} points at T={v.timesteps[-1]}"]
        for e in v.early_exit or []:
            lines.append(f"- early exit at softmax confidence {e.confidence:g}: top-1 {_pct(e.accuracy)} in "
                         f"{e.mean_steps:.2f} steps on average (at most {e.max_steps})")
        if self.neuron_summary:
            lines.append(f"- neurons: {describe_neurons(self.neuron_summary)}")
        if self.masking:
            m = self.masking
            effect = ", ".join(f"T={t}: {_pct(v.snn_accuracy.get(int(t)))} with vs {_pct(acc)} without"
                               for t, acc in m["accuracy_without"].items())
            lines.append(f"- random spike masking ratio {m['ratio']:g}: {effect}")
        lines += ["", "## Accuracy and cost per timestep budget", "", self.summary_table(), ""]
        if self.maxpools:
            lines += ["## Max-pools", "", *describe_maxpools(self.maxpools), ""]
        if self.activity is not None:
            m = self.activity.energy_model
            lines += [f"Energy model: {m.reference}. Activity measured on {self.activity.images} images. "
                      "Synaptic operations are counted per input event (non-zero input x fan-out); layers fed by "
                      "spikes accumulate (AC), layers fed by analog values multiply-accumulate (MAC); the static "
                      "prefix (layers on the analog input) runs once per image. "
                      f"{MAC_CONVENTION}; the SNN pays each compensated op at every step, plus its running means.", "",
                      "## Energy against the fp32 ANN and the equal-bit quantised ANN", "",
                      f"Model of the {m.quantized_reference()}. Per image, compute + memory.", "",
                      self.energy_table(), "",
                      *[f"- {line}" for line in self.energy_verdicts()], "",
                      "## Per-layer firing rate and error", "",
                      "Error: mean |ANN activation - SNN mean output| / mean |ANN activation| at the same site.", "",
                      self.layer_table(), ""]
        return "\n".join(lines)


def _equal_bit_groups(timesteps: Sequence[int]) -> dict[int, list[int]]:
    """``{b: [T, ...]}``: the budgets sharing each equal-bit activation width, ``b`` ascending."""
    groups: dict[int, list[int]] = {}
    for t in sorted(timesteps):
        groups.setdefault(equal_bits(t), []).append(t)
    return groups


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# ---------------------------------------------------------------------------------------- build
def build_report(ann: torch.nn.Module, snn: SpikingNetwork, data: DataLike,
                 timesteps: Sequence[int] = DEFAULT_TIMESTEPS, *,
                 model: Optional[str] = None, data_name: str = "", title: Optional[str] = None,
                 tolerance: float = 0.01, early_exit: Union[float, Sequence[float], None] = (0.9, 0.99),
                 activity_images: int = 128, quantized_ann: Optional[dict] = None,
                 energy_model: EnergyModel = EnergyModel(), progress: bool = True) -> Report:
    """Validate ``snn`` against ``ann`` on ``data`` and measure its activity; return a :class:`Report`.

    ``activity_images``: images used for per-layer rates, errors and operation counts (0: skip).
    ``quantized_ann``: extra ANN rows, e.g. ``{"int8 ANN (onnxruntime)": 0.812}``.
    """
    result = validate(ann, snn, data, timesteps, tolerance=tolerance, progress=progress, early_exit=early_exit)
    activity = None
    if activity_images > 0:
        activity = measure_activity(ann, snn, data, result.timesteps, max_images=activity_images,
                                    energy_model=energy_model)
    masking = None
    masked = {name: n.mask_ratio for name, n in snn.neurons().items() if n.mask_ratio > 0}
    if masked:
        # the effect of masking: the same network with every neuron transmitting all its spikes
        import copy

        plain = copy.deepcopy(snn)
        for n in plain.neurons().values():
            n.mask_ratio = 0.0
        without = validate(ann, plain, data, timesteps, tolerance=tolerance, progress=progress)
        masking = {"ratio": max(masked.values()), "sites": sorted(masked),
                   "accuracy_without": {str(t): without.snn_accuracy[t] for t in without.timesteps}}
    name = model or str(snn.metadata.get("source", "model"))
    # only a network that kept a trace of a max-pool is inspected (a trace of the ANN and one batch read)
    example = next(iter(iterate_inputs(data)), None) if _has_maxpools(snn) else None
    return Report(title=title or f"spikecast report: {name}", model=name, data=data_name, validation=result,
                  activity=activity, quantized_ann=dict(quantized_ann or {}), masking=masking,
                  snn_metadata=conversion_record(snn),
                  neuron_summary=neuron_summary(snn),
                  maxpools=maxpool_record(ann, snn, example[:2]) if example is not None else None)


def _has_maxpools(snn: SpikingNetwork) -> bool:
    """Whether conversion left a trace of a max-pool in ``snn``: a max-pool op (static or moved), a
    spiking max-pool, or a neuron of a decomposition. Every max-pool of the ANN leaves one."""
    gm = snn.graph_module
    return any(node.op == "call_function" and ops.packet(node) in ops.MAXPOOLS for node in gm.graph.nodes) or \
        any(isinstance(m, SpikingMaxPool) or (isinstance(m, IFNeuron) and "@max" in m.name) for m in gm.modules())


def neuron_depth(snn: SpikingNetwork) -> int:
    """Neuron layers on the longest path from the input to the output: the latency, in steps, of
    the first spike that can reach the output."""
    depth: dict = {}
    for node in snn.graph_module.graph.nodes:
        here = node.op == "call_module" and isinstance(snn.graph_module.get_submodule(node.target), IFNeuron)
        depth[node] = max([depth[a] for a in node.all_input_nodes] + [0]) + here
    return max(depth.values(), default=0)


def maxpool_record(ann: torch.nn.Module, snn: SpikingNetwork, example: torch.Tensor) -> Optional[dict]:
    """What the SNN's max-pool method (``Recipe.maxpool``) did with each max-pool of ``ann`` - the
    rows :func:`spikecast.inspect` gives with that method - and what it cost: the neurons it added
    (a pooled twin of a neuron whose part is also read unpooled, ``@pooled``; a neuron of an exact
    decomposition, ``@max``), the spiking max-pools left, and the neuron layers on the longest path.
    None when ``ann`` has no max-pool."""
    recipe = recipe_of(snn)
    device = device_of(ann) or torch.device("cpu")
    state = ModuleState(ann)  # tracing puts the ANN in eval mode: the caller gets it back as it was
    try:
        found = inspect(ann, example=example.to(device), maxpool=recipe.maxpool, encoding=recipe.encoding,
                        compensate=recipe.compensate)
    except SpikecastError as exc:  # the report still stands; the section says why it is missing
        return {"method": recipe.maxpool, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        state.restore()
    pools = [{"path": row.path, "node": row.node, "action": row.action} for row in found.rows if "max_pool" in row.op]
    # a decomposed pool is gone from the graph: its neurons ("max-pool decomposition, layer i of n") stand for it
    decomposed: dict[str, list] = {}
    for row in found.rows:
        if row.kind == NEURON and str(row.op).startswith("max-pool decomposition"):
            decomposed.setdefault(row.path, []).append(row)
    for path, rows in decomposed.items():
        layers = rows[0].op.rpartition(" of ")[2]
        pools.append({"path": path, "node": rows[0].node,
                      "action": f"decomposed exactly, max(a, b) = b + relu(a - b): {len(rows)} neuron sites in "
                                f"{layers} neuron layers"})
    if not pools:
        return None
    added = [row.neuron for row in found.rows if row.kind == NEURON and row.neuron
             and ("@pooled" in row.neuron or "@max" in row.neuron)]
    return {"method": recipe.maxpool,
            "pools": pools,
            "decomposition_neurons": sum("@max" in name for name in added),
            "pooled_twin_neurons": sum("@pooled" in name for name in added),
            "spiking_maxpools": sum(row.kind == MAXPOOL_SPIKING for row in found.rows),
            "neuron_layers": neuron_depth(snn)}


def describe_maxpools(record: dict) -> list[str]:
    """Markdown lines of :func:`maxpool_record`: the method, its cost, one row per max-pool."""
    if "error" in record:
        return [f"Method `{record['method']}`; the ANN could not be inspected ({record['error']})."]
    lines = [f"Method `{record['method']}` (`Recipe.maxpool`; `spikecast inspect --maxpool M` shows the others). "
             f"{len(record['pools'])} max-pool{'s' if len(record['pools']) != 1 else ''}; {record['spiking_maxpools']} "
             "run as stateful spiking max-pools. "
             f"Neurons the method added: {record['pooled_twin_neurons']} pooled twins (a pool moved before new "
             f"neurons), {record['decomposition_neurons']} of exact decompositions. Neuron layers on the "
             f"longest input-output path: {record['neuron_layers']}.", "",
             "| module | node | what conversion did |", "|---|---|---|"]
    lines += [f"| {p['path'] or '-'} | {p['node']} | {p['action']} |" for p in record["pools"]]
    return lines


def conversion_record(snn: SpikingNetwork) -> dict:
    """How ``snn`` was made, in the one metadata schema: the recipe, the calibration set, and the
    correction / fine-tuning / weight quantisation records when they ran (old saved SNNs too)."""
    record = {"recipe": recipe_of(snn).to_dict(), "calibration_set": calibration_set_of(snn)}
    record.update({k: snn.metadata[k] for k in ("correction", "finetune", "weight_quantization")
                   if k in snn.metadata})
    return record


def neuron_summary(snn: SpikingNetwork) -> dict:
    """Neurons by kind with the bits each sends per step (so latency comparisons stay honest across
    binary, signed, bipolar and multi-level neurons), and the number of compensated ops."""
    kinds: dict[str, dict] = {}
    for n in snn.neurons().values():
        kind = ("bipolar" if n.bipolar else "signed" if n.signed else "binary") + (
            f", {n.levels} levels" if n.levels > 1 else "")
        entry = kinds.setdefault(kind, {"count": 0, "bits_per_step": round(n.bits_per_step, 3)})
        entry["count"] += 1
    return {"kinds": kinds, "compensated_ops": len(compensated_nodes(snn._step))}


def describe_neurons(summary: dict) -> str:
    """``"19 signed (1.58 bits/step); 0 compensated ops"``-style one-liner of :func:`neuron_summary`."""
    kinds = "; ".join(f"{k['count']} {name} ({k['bits_per_step']:g} bits/step)" for name, k in summary["kinds"].items())
    comp = summary.get("compensated_ops", 0)
    return (kinds or "none") + (f"; {comp} compensated ops (dense, every step)" if comp else "")


# ---------------------------------------------------------------------------------------- plots
def _subplots(figsize: tuple[float, float]):
    """A figure with one axes, drawn by the Agg canvas directly: no pyplot, so the caller's
    matplotlib backend and pyplot state (e.g. in a notebook) are left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _figures(report: Report) -> dict[str, bytes]:
    v, a = report.validation, report.activity
    pngs: dict[str, bytes] = {}

    def save(fig, name):
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
        pngs[name] = buf.getvalue()

    ts = v.timesteps
    labelled = v.ann_accuracy is not None
    ys = [100 * (v.snn_accuracy[t] if labelled else v.agreement[t]) for t in ts]
    fig, ax = _subplots((6.4, 4.0))
    ax.plot(ts, ys, "o-", color="#1f77b4", label="SNN" if labelled else "SNN agreement with ANN")
    if labelled:
        ax.axhline(100 * v.ann_accuracy, color="#2ca02c", linestyle="-", label=f"ANN ({100 * v.ann_accuracy:.2f}%)")
        ax.axhspan(100 * v.ann_accuracy - 1, 100 * v.ann_accuracy, color="#2ca02c", alpha=0.08, label="within 1 point")
    for (label, acc), style in zip(report.quantized_ann.items(), ("--", ":", "-.")):
        ax.axhline(100 * acc, color="#d62728", linestyle=style, label=f"{label} ({100 * acc:.2f}%)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ts, [str(t) for t in ts])
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("top-1 accuracy (%)" if labelled else "agreement (%)")
    ax.set_title("Accuracy vs latency")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    save(fig, "accuracy_vs_timesteps.png")

    if a is not None:
        fig, ax = _subplots((6.4, 4.0))
        e_total = [a.energy(t)["snn_total_uj"] for t in a.timesteps]
        e_compute = [a.energy(t)["snn_compute_uj"] for t in a.timesteps]
        acc = [100 * (v.snn_accuracy[t] if labelled else v.agreement[t]) for t in a.timesteps]
        ax.plot(e_total, acc, "o-", color="#1f77b4", label="SNN, compute + membrane memory")
        ax.plot(e_compute, acc, "s--", color="#9467bd", label="SNN, compute only")
        for t, x, y in zip(a.timesteps, e_total, acc):
            ax.annotate(f"T={t}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ann_e = a.energy(a.timesteps[0])
        if labelled:
            ax.plot([ann_e["ann_total_uj"]], [100 * v.ann_accuracy], "*", markersize=13, color="#2ca02c",
                    label="ANN, compute + activation memory")
            ax.plot([ann_e["ann_compute_uj"]], [100 * v.ann_accuracy], "*", markersize=10, color="#98df8a",
                    label="ANN, compute only")
        ax.set_xscale("log")
        ax.set_xlabel("estimated energy per image (µJ, log scale)")
        ax.set_ylabel("top-1 accuracy (%)" if labelled else "agreement (%)")
        ax.set_title("Energy vs accuracy")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower right", fontsize=7)
        save(fig, "energy_vs_accuracy.png")

        names = [layer.name for layer in a.layers]
        fig, ax = _subplots((max(6.4, 0.32 * len(names) + 2), 4.2))
        show = sorted({a.timesteps[0], a.timesteps[len(a.timesteps) // 2], a.timesteps[-1]})
        width = 0.8 / len(show)
        for k, t in enumerate(show):
            ax.bar([i + k * width for i in range(len(names))], [layer.firing_rate[t] for layer in a.layers],
                   width=width, label=f"T={t}")
        ax.set_xticks([i + width * (len(show) - 1) / 2 for i in range(len(names))], names, rotation=70,
                      ha="right", fontsize=7)
        ax.set_ylabel("spikes per neuron per step")
        ax.set_title("Firing rate per layer")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        save(fig, "firing_rates.png")

        fig, ax = _subplots((max(6.4, 0.32 * len(names) + 2), 4.2))
        for t in a.timesteps:
            errs = [layer.error[t] for layer in a.layers]
            if any(e is not None for e in errs):
                ax.plot(range(len(names)), [float("nan") if e is None else e for e in errs], "o-", markersize=3,
                        label=f"T={t}")
        ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("relative error vs ANN activation (log)")
        ax.set_title("Per-layer error (ANN activation vs SNN rate)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
        save(fig, "layer_error.png")
    return pngs


# ---------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;
line-height:1.45;padding:0 1em}h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;
border-bottom:1px solid #ddd;padding-bottom:.2em}table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}th{background:#f3f5f7}td:first-child,
th:first-child{text-align:left}.figs{display:flex;flex-wrap:wrap;gap:1em}.figs img{width:calc(50% - .5em);height:auto;
border:1px solid #eee}.pass{color:#1a7f37;font-weight:bold}.fail{color:#b42318;font-weight:bold}
.meta{color:#555;font-size:.9em}ul{padding-left:1.3em}
"""


def _md_table_to_html(md: str) -> str:
    rows = [r for r in md.strip().splitlines() if r.strip().startswith("|")]
    if not rows:
        return ""
    cells = [[html.escape(c.strip()) for c in r.strip().strip("|").split("|")] for r in rows]
    head, body = cells[0], [c for c in cells[2:]]
    out = ["<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body]
    out.append("</tbody></table>")
    return "\n".join(out)


def _html(report: Report, pngs: dict[str, bytes]) -> str:
    v = report.validation
    parity = report.latency_to_parity()
    verdict = (f"<span class='{'pass' if v.passed else 'fail'}'>{'PASSED' if v.passed else 'FAILED'}</span> "
               f"(tolerance {100 * v.tolerance:.1f} points at T={v.timesteps[-1]})")
    items = [f"<li>ANN top-1: <b>{_pct(v.ann_accuracy)}</b>"
             + "".join(f"; {html.escape(k)}: {_pct(x)}" for k, x in report.quantized_ann.items()) + "</li>",
             "<li>Latency to parity: " + ", ".join(
                 f"within {p:g} point{'s' if p != 1 else ''}: <b>{'T=' + str(t) if t else 'not reached'}</b>"
                 for p, t in parity.items()) + "</li>",
             f"<li>{verdict}</li>"]
    if report.neuron_summary:
        items.append(f"<li>Neurons: {html.escape(describe_neurons(report.neuron_summary))}</li>")
    for e in v.early_exit or []:
        items.append(f"<li>Early exit at softmax confidence {e.confidence:g}: top-1 {_pct(e.accuracy)} in "
                     f"{e.mean_steps:.2f} steps on average</li>")
    if report.masking:
        items.append(f"<li>Random spike masking ratio {report.masking['ratio']:g} (accuracy without masking: "
                     + ", ".join(f"T={t}: {_pct(x)}" for t, x in report.masking["accuracy_without"].items()) + ")</li>")
    figs = "".join(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"
                   for name, data in pngs.items())
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1>",
             f"<p class='meta'>model {html.escape(report.model)} · data {html.escape(report.data)} "
             f"({v.samples} samples) · {html.escape(report.created)}</p>",
             "<ul>" + "".join(items) + "</ul>",
             "<h2>Plots</h2>", f"<div class='figs'>{figs}</div>",
             "<h2>Accuracy and cost per timestep budget</h2>", _md_table_to_html(report.summary_table())]
    if report.activity is not None:
        m = report.activity.energy_model
        parts += [f"<p class='meta'>Energy model: {html.escape(m.reference)}. Activity "
                  f"measured on {report.activity.images} images; synaptic operations counted per input event. "
                  f"{html.escape(MAC_CONVENTION)}.</p>",
                  "<h2>Energy against the fp32 ANN and the equal-bit quantised ANN</h2>",
                  f"<p class='meta'>Model of the {html.escape(m.quantized_reference())}. Per image, compute + "
                  "memory.</p>",
                  _md_table_to_html(report.energy_table()),
                  "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in report.energy_verdicts()) + "</ul>",
                  "<h2>Per-layer firing rate and error</h2>", _md_table_to_html(report.layer_table())]
    if report.maxpools:
        intro, *table = describe_maxpools(report.maxpools)
        parts += ["<h2>Max-pools</h2>", f"<p class='meta'>{html.escape(intro)}</p>",
                  _md_table_to_html("\n".join(table))]
    if report.snn_metadata:
        parts += ["<h2>Conversion settings</h2>",
                  f"<pre>{html.escape(json.dumps(_jsonable(report.snn_metadata), indent=1)[:20000])}</pre>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: Union[Report, ValidationResult], out_dir: Union[str, Path]) -> dict[str, Path]:
    """Write report.json, report.md, report.html and the PNG plots into ``out_dir``; return their paths.

    Everything is rendered before the first file is written, and each file is written to a
    temporary name then renamed: a failure leaves the previous report in ``out_dir`` whole.
    """
    if isinstance(report, ValidationResult):
        report = Report(title="spikecast report", model="", data="", validation=report)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"report folder {out} is an existing file, not a folder")
    pngs = _figures(report)
    files: dict[str, bytes] = dict(pngs)
    files["report.json"] = (json.dumps(report.to_dict(), indent=1, default=str) + "\n").encode()
    files["report.md"] = report.markdown().encode()
    files["report.html"] = _html(report, pngs).encode()
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in files.items():
        tmp = out / (name + ".tmp")
        try:
            tmp.write_bytes(data)
            tmp.replace(out / name)
        finally:
            tmp.unlink(missing_ok=True)
        paths[name] = out / name
    return paths
