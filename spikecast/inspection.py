"""``spikecast.inspect``: what conversion will do with every operation of a model, before converting.

Inspection traces and normalises the model exactly as :func:`spikecast.convert` does (stages 1-2)
but needs no calibration data: a random input of the model's shape is enough to capture the graph.
Every operation is listed in graph order with its module path in the source model and its fate:

* ``static prefix: computed once`` - depends only on the analog input, run once per image;
* ``weighted layer`` - conv / linear run at every step (``BN folded: <path>`` when a BatchNorm was
  absorbed into it);
* ``affine, runs per step`` - kept BatchNorm, add, cat, pad, average pooling, reshapes...;
* ``IF neuron`` - a ReLU-like activation, replaced by an integrate-and-fire neuron whose threshold
  comes from calibration; ``bipolar IF neuron`` - the spike input of a weighted layer that reads an
  analog value (after GELU, LayerNorm, attention...);
* ``compensated`` - a non-linear op (GELU, LayerNorm, softmax, Q·Kᵀ...) inside the spiking part:
  it runs on the running means of its inputs at every step (expectation compensation) - dense
  multiply-accumulates, not spike-driven;
* ``max-pool: exact`` (static, or moved before the neuron) / ``max-pool: spiking max-pool, stateful
  (warning)`` (its input varies per step: :class:`~spikecast.nn.maxpool.SpikingMaxPool`);
* ``UNSUPPORTED: <reason>`` - with ``compensate=False``, conversion will refuse the model; nothing
  is ever hidden.

Weighted layers inside the spiking part are marked ``spike-driven`` (they read only spikes: each
input event is an accumulate) or ``dense input`` (they read analog values: multiply-accumulates);
the report's ``spike_driven_share`` is the share of the per-step operations (multiply-accumulates
of a dense run, from torch's flop counter; one per output element for elementwise and
normalisation ops) done by spike-driven layers.

>>> report = spikecast.inspect("zoo:cifar10-resnet20")      # doctest: +SKIP
>>> print(report.table()); report.ok                        # doctest: +SKIP
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.fx as fx

from spikecast.convert.spiking import to_spiking
from spikecast.devices import device_of
from spikecast.errors import UnsupportedSite
from spikecast.graph import ops
from spikecast.graph.normalize import MAXPOOL_REWRITES, find_unsupported, fresh_copy, normalize, time_varying_nodes
from spikecast.graph.sites import SITES
from spikecast.graph.trace import module_path, op_name, trace
from spikecast.models import ModelLike, default_input_shape, resolve_model
from spikecast.nn.encoding import ENCODINGS
from spikecast.nn.maxpool import SpikingMaxPool
from spikecast.targets import TargetReport, check_target

# Row kinds (``InspectionRow.kind``), stable strings for programs reading ``to_dict()``.
STATIC, WEIGHTED, AFFINE, NEURON = "static", "weighted", "affine", "neuron"
MAXPOOL_EXACT, MAXPOOL_SPIKING, UNSUPPORTED = "maxpool-exact", "maxpool-spiking", "unsupported"
COMPENSATED = "compensated"

_BATCHNORMS = {torch.ops.aten._native_batch_norm_legit_no_training, torch.ops.aten.batch_norm}


@dataclass
class InspectionRow:
    """One operation of the normalised graph and what conversion does with it."""

    index: int  # position in graph order (1-based, over the listed rows)
    path: str  # module path in the source model ("" = top level)
    op: str  # e.g. "aten.conv2d", "aten.relu"
    action: str  # human-readable fate, e.g. "weighted layer (BN folded: layer1.0.bn1)"
    kind: str  # one of STATIC, WEIGHTED, AFFINE, NEURON, MAXPOOL_EXACT, MAXPOOL_SPIKING, UNSUPPORTED
    node: str  # graph node name
    folded_bn: Optional[str] = None  # module path of the BatchNorm folded into this layer
    neuron: Optional[str] = None  # readable neuron (site) name, for IF neurons
    spike_driven: Optional[bool] = None  # weighted layers in the spiking part: reads only spikes
    macs: Optional[float] = None  # per image and step for a dense run (see the module docstring)

    @property
    def where(self) -> str:
        return self.path or "<top level>"


@dataclass
class InspectionReport:
    """Every operation of a model and its fate under conversion. ``ok``: nothing unsupported."""

    model: str
    input_shape: tuple[int, ...]
    encoding: str
    rows: list[InspectionRow] = field(default_factory=list)
    unsupported: list[UnsupportedSite] = field(default_factory=list)
    compensate: bool = True
    target: Optional[TargetReport] = None  # a hardware-target check, when asked for

    @property
    def ok(self) -> bool:
        return not self.unsupported

    @property
    def notes(self) -> list[str]:
        """Warnings that do not block conversion but that a user should know about."""
        out = []
        if self.rows and self.neurons == 0:
            out.append("warning: no activation site found - nothing becomes a spiking neuron; the whole "
                       "network would run once on the analog input (it would not be a spiking network)")
        if self.compensated_ops:
            out.append(f"{self.compensated_ops} non-linear op(s) run with expectation compensation (dense, every "
                       f"step); {self.spike_driven_share:.1%} of the per-step operations are spike-driven")
        if self.spiking_maxpools:
            out.append("warning: max-pools marked 'spiking max-pool' pool a time-varying input; conversion "
                       "replaces them with the stateful SpikingMaxPool (spikecast/nn/maxpool.py) and warns: "
                       "their per-step output is not the ANN's")
        return out

    def count(self, kind: str) -> int:
        return sum(1 for r in self.rows if r.kind == kind)

    @property
    def neurons(self) -> int:
        return self.count(NEURON)

    @property
    def weighted_layers(self) -> int:
        return sum(1 for r in self.rows if r.kind == WEIGHTED or (r.kind == STATIC and _is_weighted_op(r.op)))

    @property
    def folded_batchnorms(self) -> int:
        return sum(1 for r in self.rows if r.folded_bn)

    @property
    def static_ops(self) -> int:
        return self.count(STATIC)

    @property
    def spiking_maxpools(self) -> int:
        return self.count(MAXPOOL_SPIKING)

    @property
    def compensated_ops(self) -> int:
        return self.count(COMPENSATED)

    @property
    def spike_driven_share(self) -> float:
        """Share of the per-step operations (dense MACs) done by spike-driven weighted layers."""
        driven = sum(r.macs or 0.0 for r in self.rows if r.kind == WEIGHTED and r.spike_driven)
        total = sum(r.macs or 0.0 for r in self.rows if r.kind in (WEIGHTED, COMPENSATED))
        return driven / total if total else 1.0

    def summary(self) -> str:
        parts = [
            _plural(len(self.rows), "op"),
            _plural(self.neurons, "IF neuron"),
            _plural(self.weighted_layers, "weighted layer"),
            _plural(self.folded_batchnorms, "BatchNorm") + " folded",
            f"{self.static_ops} in the static prefix",
        ]
        if self.spiking_maxpools:
            parts.append(_plural(self.spiking_maxpools, "spiking max-pool"))
        if self.compensated_ops:
            parts.append(f"{self.compensated_ops} compensated")
        parts.append(f"{len(self.unsupported)} unsupported")
        parts.append(f"{self.spike_driven_share:.0%} of per-step ops spike-driven")
        verdict = "convertible" if self.ok else "NOT convertible"
        return f"{self.model}: {verdict} - " + ", ".join(parts)

    def table(self, markdown: bool = True) -> str:
        """The rows as a Markdown table (or aligned plain text), then the summary and, when any,
        the list of unsupported operations with their module paths."""
        head = ("#", "module path", "op", "what happens")
        body = [(str(r.index), r.where, r.op, r.action) for r in self.rows]
        shape = "x".join(str(d) for d in self.input_shape)
        lines = [f"Model {self.model}, input {shape}, {self.encoding} input encoding", ""]
        if markdown:
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|---:|---|---|---|")
            lines.extend("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body)
        else:
            widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
            lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
            lines.append("  ".join("-" * w for w in widths))
            lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body)
        lines += ["", self.summary()]
        if self.unsupported:
            lines += ["", f"{len(self.unsupported)} operation(s) cannot be converted:"]
            lines += [f"  - {site}" for site in self.unsupported]
        if self.notes:
            lines += ["", *self.notes]
        if self.target is not None:
            lines += ["", self.target.table(markdown)]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "model": self.model, "input_shape": list(self.input_shape), "encoding": self.encoding,
            "ok": self.ok,
            "summary": {"ops": len(self.rows), "neurons": self.neurons, "weighted_layers": self.weighted_layers,
                        "folded_batchnorms": self.folded_batchnorms, "static_ops": self.static_ops,
                        "spiking_maxpools": self.spiking_maxpools,
                        "compensated": self.compensated_ops, "spike_driven_share": self.spike_driven_share,
                        "unsupported": len(self.unsupported)},
            "notes": self.notes,
            "rows": [asdict(r) for r in self.rows],
            "unsupported": [asdict(s) for s in self.unsupported],
            "target": None if self.target is None else self.target.to_dict(),
        }

    def __str__(self) -> str:
        return self.table()


_WEIGHTED_NAMES = {"aten." + p._qualified_op_name.split("::")[-1] for p in ops.WEIGHTED}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _is_weighted_op(op: str) -> bool:
    return op in _WEIGHTED_NAMES


def _skipped(node: fx.Node) -> bool:
    """Nodes that are not operations a user would recognise: inputs, constants, tuple items, sizes."""
    if node.op in ("placeholder", "get_attr", "output"):
        return True
    if node.op == "call_function" and (node.target is operator.getitem or ops.is_shape_op(node)):
        return True
    return False


def _spiking_pools(gm: fx.GraphModule, input_varies: bool) -> Optional[set[str]]:
    """Names of the max-pool nodes that :func:`to_spiking` replaces with a :class:`SpikingMaxPool`,
    found by running it on a copy with placeholder thresholds (so the report always agrees with
    conversion). None when it cannot run (e.g. the model has unsupported ops)."""
    try:
        probe = fresh_copy(gm)
        for _, site in probe.get_submodule(SITES).named_children():
            site.threshold = 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spiking = to_spiking(probe, input_varies=input_varies)
    except Exception:  # only a probe: fall back to the rule conversion documents
        return None
    return {m.name.rsplit(":", 1)[-1] for m in spiking.modules() if isinstance(m, SpikingMaxPool)}


def _is_site(node: fx.Node) -> bool:
    return node.op == "call_module" and str(node.target).startswith(SITES + ".")


def _describe(gm: fx.GraphModule, node: fx.Node, varying: set[fx.Node], bad: dict[str, UnsupportedSite],
              spiking_pools: Optional[set[str]], compensate: bool) -> tuple[str, str, Optional[str], Optional[str]]:
    """(kind, action, folded BN path, neuron name) of one listed node."""
    meta = node.meta.get("spikecast", {})
    folded = meta.get("folded_bn")
    if _is_site(node):
        site = gm.get_submodule(node.target)
        if getattr(site, "bipolar", False):
            return NEURON, "bipolar IF neuron (spike input of a weighted layer that reads an analog value)", \
                None, site.name
        clip = f", clip {site.upper:g}" if site.upper is not None else ""
        if str(site.op).startswith("max-pool decomposition"):  # one relu(a - b) of max(a, b) = b + relu(a - b)
            return NEURON, f"IF neuron of an exact max-pool decomposition max(a, b) = b + relu(a - b) " \
                           f"({site.op.partition(', ')[2]}; threshold from calibration)", None, site.name
        return NEURON, f"IF neuron (threshold from calibration{clip})", None, site.name
    if node.name in bad:
        if compensate:
            return COMPENSATED, "compensated: runs on the running means of its inputs (dense, every step)", folded, None
        return UNSUPPORTED, f"UNSUPPORTED: {bad[node.name].reason}", folded, None
    packet = ops.packet(node)
    is_pool = packet in ops.MAXPOOLS
    if node not in varying:
        detail = []
        if packet in ops.WEIGHTED:
            detail.append("weighted layer" + (f", BN folded: {folded}" if folded else ""))
        elif packet in _BATCHNORMS:
            detail.append("BatchNorm")
        elif is_pool and meta.get("maxpool"):
            detail.append(f"max-pool {_pool_move(meta)}: exact")
        suffix = f" ({'; '.join(detail)})" if detail else ""
        return STATIC, f"static prefix: computed once{suffix}", folded, None
    if packet in ops.WEIGHTED:
        feed = "spike-driven" if ops.spike_driven(node, _is_site) else "dense input"
        return WEIGHTED, f"weighted layer, {feed}" + (f" (BN folded: {folded})" if folded else ""), folded, None
    if is_pool:
        if spiking_pools is not None:
            stateful = node.name in spiking_pools
        else:  # the rule of spikecast.convert.spiking: a pool whose input varies per step
            stateful = node.args[0] in varying
        if not stateful:
            return MAXPOOL_EXACT, f"max-pool: exact ({_pool_move(meta) or 'moved before the neuron'})", None, None
        moved = f" - {_pool_move(meta)}, but the current it pools varies per step" if meta.get("maxpool") else ""
        return MAXPOOL_SPIKING, f"max-pool: spiking max-pool, stateful (warning){moved}", None, None
    if packet in _BATCHNORMS:
        return AFFINE, "affine, runs per step (BatchNorm kept: exact per-channel affine)", None, None
    if packet in ops.PRODUCTS:
        return AFFINE, "affine, runs per step (one operand is static)", None, None
    return AFFINE, "affine, runs per step", None, None


def _pool_move(meta: dict) -> str:
    """How normalisation moved a max-pool (``"moved through the concatenation before new neurons"``...)."""
    return str(meta.get("maxpool", "")).partition(": ")[2]


def inspect(model: ModelLike, input_shape: Optional[Sequence[int]] = None, example: Optional[torch.Tensor] = None,
            checkpoint: Optional[Union[str, Path]] = None, pretrained: Optional[bool] = None,
            encoding: str = "analog", compensate: bool = True, trust_checkpoint: bool = False,
            target: Optional[str] = None, maxpool: str = "moved") -> InspectionReport:
    """Trace and normalise ``model`` and report what conversion will do with every operation.

    Args:
        model: an ``nn.Module``, ``"zoo:<name>"`` or a timm model name.
        input_shape: shape of ONE input without the batch dimension, e.g. ``(3, 32, 32)``. Defaults
            to the model's known input size (zoo metadata or timm's ``pretrained_cfg``).
        example: an input batch to trace with instead of a random one of ``input_shape``.
        checkpoint: weights to load first (not needed: the graph does not depend on the weights).
        pretrained: load the default weights (default False: inspection needs only the structure).
        encoding: ``"analog"`` (the input is presented as is: ops on it form a static prefix,
            computed once) or ``"poisson"`` (the input is spike-encoded and varies per step).
        compensate: non-linear ops inside the spiking part are compensated (as conversion does by
            default); ``False`` lists them as unsupported (``convert(..., compensate=False)``).
        trust_checkpoint: allow a checkpoint that holds pickled Python objects to run its code
            when loaded (only for files you trust; default: refused with a clear error).
        target: a hardware target (``"speck"``, ``"xylo-audio2"``, ``"xylo-imu"``,
            ``"xylo-audio3"``): ``report.target`` then says, layer by layer,
            what fits it and what does not (:mod:`spikecast.targets`).
        maxpool: the ``Recipe.maxpool`` method whose rewrite of the max-pools to show (default
            ``"moved"``, the default recipe's); each pool's row says what was done with it.

    Returns:
        An :class:`InspectionReport`; ``report.ok`` is False when any op cannot be converted, and
        ``report.unsupported`` names each with its module path. Raises :class:`TraceError` when
        the model cannot be traced at all.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; choose one of {ENCODINGS}")
    if maxpool not in MAXPOOL_REWRITES:
        raise ValueError(f"unknown maxpool method {maxpool!r}; choose one of {tuple(MAXPOOL_REWRITES)}")
    ann, name = resolve_model(model, checkpoint, bool(pretrained), trust_checkpoint=trust_checkpoint)
    device = device_of(ann) or torch.device("cpu")
    if example is None:
        if input_shape is None:
            input_shape = default_input_shape(model, ann)
        if input_shape is None:
            raise ValueError(
                f"cannot tell which input shape {name} expects: pass input_shape=(C, H, W) "
                "(the shape of one input, without the batch dimension; CLI: --input-shape 3,224,224)")
        input_shape = tuple(int(d) for d in input_shape)
        if not input_shape or any(d < 1 for d in input_shape):
            raise ValueError(f"input_shape must be positive sizes without the batch dimension, got {input_shape}")
        example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    else:
        example = example.to(device)
        input_shape = tuple(example.shape[1:])
    gm = normalize(trace(ann, example[:2]), maxpool=MAXPOOL_REWRITES[maxpool])
    input_varies = encoding != "analog"
    varying = time_varying_nodes(gm, input_varies)
    offenders = find_unsupported(gm, input_varies)
    bad = {site.node: site for site in offenders}
    unsupported = [] if compensate else offenders
    spiking_pools = _spiking_pools(gm, input_varies) if not unsupported else None
    report = InspectionReport(model=name, input_shape=tuple(input_shape), encoding=encoding,
                              unsupported=unsupported, compensate=compensate)
    macs = ops.node_macs(gm, example[:1])
    for node in gm.graph.nodes:
        if _skipped(node):
            continue
        kind, action, folded, neuron = _describe(gm, node, varying, bad, spiking_pools, compensate)
        op = gm.get_submodule(node.target).op if kind == NEURON else op_name(node)
        driven = ops.spike_driven(node, _is_site) if kind == WEIGHTED else None
        report.rows.append(InspectionRow(index=len(report.rows) + 1, path=module_path(node), op=op,
                                         action=action, kind=kind, node=node.name, folded_bn=folded,
                                         neuron=neuron, spike_driven=driven, macs=macs.get(node.name)))
    if target is not None:
        report.target = check_target(gm, example, target, spiking_input=input_varies)
    return report
