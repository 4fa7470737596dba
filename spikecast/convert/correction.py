"""Post-conversion calibration: correct each neuron with the source ANN as teacher, no labels.

Layer by layer from the input up, so each neuron corrects the error it actually receives from the
already-corrected layers below it. For neuron ``k`` the network is cut just after it (only the ops
it depends on run), simulated for the target budget ``T`` on the calibration images, and its mean
output rate compared with the ANN activation at the same site:

* **bias correction** (``light``): with ``e_c = mean(a_ann - r_snn)`` per channel, the current
  ``e_c / s_c`` is added to the neuron's input at every step (``IFNeuron.bias``) - the rate-domain
  form of shifting the layer's bias (Li et al. 2021, SNN Calibration). ``s_c`` is the slope of
  the mean rate in the bias: the fraction of the channel's ANN activations that are positive
  (neurons whose input stays negative do not answer a small shift), floored at ``MIN_SLOPE``.
* **potential correction** (``light``): a second look after the bias correction; the error that
  remains is given once as initial charge ``T * e_c / s_c`` (``IFNeuron.v_offset``) - it acts on
  the first steps, where the transient error lives.
* ``form="charge"`` gives both corrections as initial charge instead (the bias pass's error
  ``T * e_c / s_c`` too): right for a network whose error at ``T`` is a start-up deficit - a QCFS
  network matches its quantised ANN exactly in steady state, so its error is the time deeper
  layers wait for input - and it fades over longer runs instead of adding ``T``'s transient
  correction at every step (with ``form="current"`` a QCFS ResNet-32 corrected for T=4 falls to
  chance at T=32: per-step currents of up to a third of the threshold).
* **threshold refinement** (``advanced``): before the corrections, the input currents of the
  neuron are recorded on a subset of images for all ``T`` steps, and each channel's threshold is
  rescaled by the factor (from ``refine_scales``) that minimises the squared error between the
  corrected rate and the ANN activation, replaying only this neuron.

No method spends extra steps: a network corrected for ``T`` runs exactly ``T`` steps, which is
the latency reported. The images are those of the calibration set
(:mod:`spikecast.calibrate.sample`: the user's data read once, chosen by content), so results do
not depend on the order or batching of the data; the correction takes them sorted by a fixed random
projection of their content (:func:`teacher_order`, the order it has always used, which keeps its
results unchanged), and sums are accumulated in float64.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.fx as fx

from spikecast.calibrate.sample import CalibrationSet, as_calibration_set
from spikecast.calibrate.statistics import broadcast_shape, channel_dim, channel_sum
from spikecast.devices import device_of
from spikecast.nn.neuron import IFNeuron
from spikecast.errors import CalibrationError
from spikecast.graph.sites import site_nodes
from spikecast.progress import progress_bar
from spikecast.convert.layerwise import CACHE_BYTES, LayerwiseSimulation
from spikecast.nn.simulation import SimulationConfig

LEVELS = ("none", "light", "advanced")
FORMS = ("current", "charge")
MIN_SLOPE = 0.25


@dataclass(frozen=True)
class CorrectionConfig:
    """Which corrections run, for which timestep budget.

    ``bias``/``potential``/``refine`` are implied by ``level`` (``light`` = bias + potential,
    ``advanced`` = light + threshold refinement) and can be switched off one by one for ablations.
    """

    level: str = "light"
    timesteps: int = 32
    bias: bool = True
    potential: bool = True
    form: str = "current"  # "current": per-step bias + remaining charge; "charge": initial charge only (anytime)
    refine_images: int = 64  # images whose currents are recorded for the threshold refinement
    refine_scales: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25)
    batch_size: int = 256
    max_images: Optional[int] = None  # at most this many images of the calibration set (None: all of them)
    memory_budget: int = 2 << 30  # bytes for the recorded spike trains and cuts; fewer images if needed

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"unknown calibration level {self.level!r}; choose one of {LEVELS}")
        if int(self.timesteps) < 1:
            raise ValueError(f"timesteps must be >= 1, got {self.timesteps}")
        if self.form not in FORMS:
            raise ValueError(f"unknown correction form {self.form!r}; choose one of {FORMS}")

    @property
    def runs_bias(self) -> bool:
        return self.level != "none" and self.bias

    @property
    def runs_potential(self) -> bool:
        return self.level != "none" and self.potential

    @property
    def runs_refine(self) -> bool:
        return self.level == "advanced"


def teacher_order(x: torch.Tensor) -> torch.Tensor:
    """The images ``x`` sorted by a fixed random projection of their content: an order that
    depends only on the images (the correction's order since its first version)."""
    g = torch.Generator().manual_seed(0)
    projection = torch.randn(x[0].numel(), generator=g, dtype=torch.float64)
    order = torch.argsort(x.flatten(1).double() @ projection, stable=True)
    return x[order]


def _per_channel(values: torch.Tensor, like_ndim: int) -> torch.Tensor:
    return values.float().reshape(broadcast_shape(like_ndim, values.numel()))


def ann_targets(ann_graph: fx.GraphModule, x: torch.Tensor, batch_size: int, keep: "int | Callable[[int], int]",
                device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, int]]:
    """Per site: channel means of the ANN activation over ``x``; per channel the fraction of
    active (positive) elements; the activations of the first ``keep`` images (for the
    refinement; ``keep(values per image)`` when a function: fewer for large layers); the
    activation rank."""
    sums: dict[str, torch.Tensor] = {}
    active: dict[str, torch.Tensor] = {}
    kept: dict[str, list] = {}
    counts: dict[str, int] = {}
    ndims: dict[str, int] = {}
    handles = []
    for _, site in site_nodes(ann_graph):
        def hook(mod, args, out, name=site.name, bipolar=getattr(site, "bipolar", False)):
            s = channel_sum(out.double())
            # a bipolar neuron answers a shift on both signs: every element is in its linear range
            a = channel_sum(torch.ones_like(out, dtype=torch.bool) if bipolar else out > 0)
            sums[name] = s if name not in sums else sums[name] + s
            active[name] = a if name not in active else active[name] + a
            counts[name] = counts.get(name, 0) + out.numel() // s.numel()
            ndims[name] = out.dim()
            have = sum(t.shape[0] for t in kept.get(name, []))
            wanted = keep(out[0].numel()) if callable(keep) else keep
            if have < wanted:
                kept.setdefault(name, []).append(out[:wanted - have].detach().cpu())
        handles.append(site.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                ann_graph(x[i:i + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
    means = {k: sums[k] / counts[k] for k in sums}
    fractions = {k: active[k] / counts[k] for k in active}
    return means, fractions, {k: torch.cat(v) for k, v in kept.items()}, ndims


def _replay(neuron: IFNeuron, currents: torch.Tensor, theta: torch.Tensor,
            bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean output over the steps of a copy of ``neuron`` with threshold ``theta`` driven by the
    recorded currents ``(T, images, ...)``."""
    with torch.inference_mode():  # as the layer-wise runs: one variant of the compiled kernels
        twin = neuron.twin(theta).to(currents.device)
        twin.set_correction(bias, None)
        return twin.output_sum(currents) / currents.shape[0]


def _refine_threshold(neuron: IFNeuron, currents: torch.Tensor, target: torch.Tensor,
                      scales: Sequence[float]) -> torch.Tensor:
    """Per channel, the threshold scale whose bias-corrected replay is closest to the ANN."""
    cdim = channel_dim(target)
    channels = target.shape[cdim]
    base = neuron.threshold.float()
    if base.numel() == 1:
        base = base.reshape(()).expand(channels).reshape(broadcast_shape(target.dim(), channels))
    dims = [d for d in range(target.dim()) if d != cdim]
    count = target.numel() // channels
    best_err, best_theta = None, base
    for scale in scales:
        theta = base * scale
        if neuron.upper is not None:  # a clipped activation (ReLU6) never transmits above its clip
            theta = theta.clamp(max=neuron.upper / neuron.levels)
        rate = _replay(neuron, currents, theta, None)
        bias = _per_channel((target - rate).double().sum(dim=dims) / count, target.dim())
        rate = _replay(neuron, currents, theta, bias)
        err = ((target - rate).double() ** 2).sum(dim=dims)
        if best_err is None:
            best_err, best_theta = err, theta.clone()
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_theta = torch.where(_per_channel(better.float(), target.dim()) > 0, theta, best_theta)
    return best_theta


def correct_graph(snn_graph: fx.GraphModule, ann_graph: fx.GraphModule, images: "CalibrationSet | torch.Tensor",
                  simulation: SimulationConfig, config: CorrectionConfig = CorrectionConfig(), *,
                  progress: bool = True, device=None) -> tuple[fx.GraphModule, Optional[dict]]:
    """Return a corrected copy of the spiking graph ``snn_graph`` (untouched) and what ran.

    ``ann_graph``: the normalised ANN graph the SNN was converted from (its activation sites give
    the teacher's activations). ``images``: the :class:`~spikecast.calibrate.sample.CalibrationSet`
    the thresholds came from (or a tensor of images, all used; any other source is read once
    into a set of the default size). ``simulation``: how the network is run (encoding, layout). The returned record (``None`` when
    ``config.level == "none"``) has what ran, the time it took and, per neuron, the mean absolute
    channel error of its rate before and after.
    """
    started = time.perf_counter()
    out = copy.deepcopy(snn_graph)
    if config.level == "none":
        return out, None
    device = device or device_of(out) or torch.device("cpu")
    x = teacher_order(as_calibration_set(images).images)
    if config.max_images is not None:
        x = x[:config.max_images]
    x = x.to(device)
    T = int(config.timesteps)
    # the refinement replays the input currents the layer-wise runtime can keep (CACHE_BYTES): the
    # ANN activations of as many images, not more (ResNet-50 at 224: 2.8 GB for 64 images)
    def refine_keep(values: int) -> int:
        return min(config.refine_images, max(1, CACHE_BYTES // (T * values * 4)))

    # int8 spike trains of the neurons still needed above (about two live layers at a time: a
    # residual and the current branch) and the float32 cuts of analog paths (see layerwise); cap
    # the images so they fit the budget (the sizes from one image, before the teacher's pass)
    sim = LayerwiseSimulation(out, x, T, simulation, config.batch_size)
    per_image = sim.bytes_per_image
    affordable = max(int(config.memory_budget // max(per_image, 1)), min(len(x), 16))
    if affordable < len(x):
        warnings.warn(f"layer-wise correction at T={T} uses the first {affordable} of {len(x)} calibration images "
                      f"(spike trains and cuts of {per_image / 2**20:.1f} MiB per image; memory_budget="
                      f"{config.memory_budget / 2**30:.1f} GiB)", stacklevel=2)
        x = x[:affordable]
        sim.keep_first(affordable)
    targets, active, kept, ndims = ann_targets(ann_graph, x, config.batch_size, refine_keep, device)
    report, silent = [], []
    passes = 1 + config.runs_bias + config.runs_potential + config.runs_refine
    with progress_bar(f"calibration: {config.level} correction (T={T})", len(sim.nodes) * passes, progress) as bar:
        for k in range(len(sim.nodes)):
            neuron = sim.neuron(k)
            name = neuron.name
            if name not in targets:
                raise CalibrationError(f"neuron {name} has no matching activation site in the ANN graph")
            target, nd = targets[name].to(device), ndims[name]
            # d(mean rate)/d(bias) is about the fraction of the channel's neurons in their linear
            # range - a neuron whose input stays negative does not answer a small shift - so the
            # shift is the error divided by that slope (floored: noise makes silent ones answer too)
            slope = active[name].to(device).clamp(min=MIN_SLOPE)
            dev = neuron.threshold.device
            if config.runs_refine:
                # the input currents of the first images (fewer for layers too large to keep that
                # many), replayed through the neuron at every candidate threshold
                currents = sim.currents(k, len(kept[name]))
                images = min(currents.shape[1], len(kept[name]))
                neuron.threshold = _refine_threshold(neuron, currents[:, :images], kept[name][:images].to(device),
                                                     config.refine_scales).to(dev)
                del currents
                bar.advance()
            entry = {"name": name}
            bias = None
            if config.runs_bias or config.runs_potential:
                error = target - sim.run(k)
                entry["error_before"] = float(error.abs().mean())
                bar.advance()
                if config.form == "charge":  # every pass adds initial charge; no per-step current
                    charge = None
                    for p in range(config.runs_bias + config.runs_potential):
                        if p:
                            error = target - sim.run(k)
                            bar.advance()
                        step = _per_channel(error / slope * T, nd).to(dev)
                        charge = step if charge is None else charge + step
                        neuron.set_correction(None, charge)
                else:
                    if config.runs_bias:
                        bias = _per_channel(error / slope, nd).to(dev)
                        neuron.set_correction(bias, None)
                    if config.runs_potential:
                        if config.runs_bias:
                            error = target - sim.run(k)
                            bar.advance()
                        neuron.set_correction(bias, _per_channel(error / slope * T, nd).to(dev))
            rate = sim.commit(k)
            entry["error_after"] = float((target - rate).abs().mean())
            if float(rate.abs().sum()) == 0.0:
                silent.append(name)
            bar.advance()
            report.append(entry)
    if silent:
        warnings.warn(f"{len(silent)} neuron(s) never fired during correction at T={T}: "
                      + ", ".join(silent[:10]) + (" ..." if len(silent) > 10 else ""), stacklevel=2)
    return out, {"level": config.level, "timesteps": T, "form": config.form, "bias": config.runs_bias,
                 "potential": config.runs_potential, "refine": config.runs_refine,
                 "images": len(x), "seconds": round(time.perf_counter() - started, 3), "sites": report}
