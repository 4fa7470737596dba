"""Activation statistics per site, from the calibration set: fixed memory, independent of order.

The passes run over the in-memory :class:`~spikecast.calibrate.sample.CalibrationSet` (the user's
data was read once, into it), in its canonical order and fixed batches. Pass 1 records per site
the maximum (and checks that the activations are finite). Pass 2 fills a fixed-size histogram of
the positive activations on [0, max]; a percentile is read from the histogram with linear
interpolation inside a bin, so its error is at most max / bins. Because pass 2 sees the very
images of pass 1, its values lie in pass 1's range; a value above it (a network that is not
deterministic) is never dropped: within rounding it is counted in the top bin, beyond that it is
an error. No activation is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.fx as fx

from spikecast.calibrate.sample import PASS_BATCH_SIZE, CalibrationSet, as_calibration_set, iterate_inputs
from spikecast.errors import CalibrationError
from spikecast.graph.sites import site_nodes
from spikecast.progress import progress_bar

__all__ = ["SiteStatistics", "collect_statistics", "percentile_from_histogram", "channel_dim", "broadcast_shape",
           "channel_sum", "channel_view", "iterate_inputs"]

DEFAULT_BINS = 8192
DEFAULT_CHANNEL_BINS = 1024  # per-channel histograms: channels x bins float64 each
# pass 2 may see a value above pass 1's maximum only by float rounding (nondeterministic kernels)
RANGE_TOLERANCE = 1e-4


def channel_dim(x: torch.Tensor) -> int:
    """The channel axis of an activation: 1 for (N, C, ...) and (N, C); last for (N, L, C) tokens."""
    return 2 if x.dim() == 3 else 1


def broadcast_shape(ndim: int, channels: int) -> list[int]:
    """Shape of a per-channel tensor that broadcasts against an ``ndim``-D activation."""
    shape = [1] * ndim
    shape[2 if ndim == 3 else 1] = channels
    return shape


def channel_sum(x: torch.Tensor) -> torch.Tensor:
    """Per channel, the float64 sum of ``x`` over every other axis."""
    dims = [d for d in range(x.dim()) if d != channel_dim(x)]
    return (x.sum(dim=dims) if dims else x).double()


def channel_view(x: torch.Tensor) -> torch.Tensor:
    """``x`` as (elements, channels)."""
    return x.movedim(channel_dim(x), -1).reshape(-1, x.shape[channel_dim(x)])


@dataclass
class SiteStatistics:
    """What calibration learned about one activation site (values are of the site's input; of its
    magnitude for a bipolar site)."""

    name: str
    max: float = 0.0
    numel: int = 0  # elements seen
    positive: int = 0  # elements > 0 (those the ReLU passes)
    sum_positive: float = 0.0
    histogram: Optional[torch.Tensor] = field(default=None, repr=False)  # float64 counts on [0, max]
    ndim: int = 0  # rank of the activation tensor
    # per channel (when collected): maxima [C] and histograms [C, bins], channel c on [0, channel_max[c]]
    channel_max: Optional[torch.Tensor] = field(default=None, repr=False)
    channel_histogram: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def firing_fraction(self) -> float:
        return self.positive / self.numel if self.numel else 0.0

    def percentile(self, p: float) -> float:
        """The p-th percentile (0-100) of the positive activations."""
        if self.histogram is None:
            raise CalibrationError(f"site {self.name}: no histogram collected")
        if self.positive == 0 or self.max <= 0:
            return 0.0
        return float(percentile_from_histogram(self.histogram, torch.tensor(self.max, dtype=torch.float64), p))

    def to_dict(self) -> dict:
        return {"name": self.name, "max": self.max, "numel": self.numel,
                "firing_fraction": self.firing_fraction,
                "mean_positive": self.sum_positive / self.positive if self.positive else 0.0}


def percentile_from_histogram(counts: torch.Tensor, top: torch.Tensor, p: float) -> torch.Tensor:
    """The p-th percentile of histograms ``counts[..., bins]`` spanning ``[0, top[...]]``.

    Linear interpolation inside the bin, so the error is at most ``top / bins``. Empty
    histograms give 0.
    """
    counts = counts.double()
    top = torch.as_tensor(top, dtype=torch.float64)
    bins = counts.shape[-1]
    cdf = torch.cumsum(counts, -1)
    total = cdf[..., -1:]
    target = total * (p / 100.0)
    idx = torch.searchsorted(cdf.contiguous(), target.contiguous()).clamp(max=bins - 1)
    below = torch.where(idx > 0, cdf.gather(-1, (idx - 1).clamp_min(0)), torch.zeros_like(target))
    in_bin = counts.gather(-1, idx)
    frac = torch.where(in_bin > 0, (target - below) / in_bin.clamp_min(1e-300), torch.ones_like(target))
    value = (idx + frac.clamp(0, 1)).squeeze(-1) * top / bins
    value = torch.minimum(value, top)
    return torch.where(total.squeeze(-1) > 0, value, torch.zeros_like(value))


def _run_with_hooks(gm: fx.GraphModule, images: CalibrationSet, hook: Callable[[str, torch.Tensor], None],
                    description: str, progress: bool, device) -> None:
    """One pass of the calibration set through ``gm`` with ``hook(site target, site input)``."""
    handles = []
    for node, site in site_nodes(gm):
        # a bipolar site's neuron covers [-theta, theta]: its statistics are those of |x|
        if getattr(site, "bipolar", False):
            fn = lambda mod, args, key=node.target: hook(key, args[0].abs())  # noqa: E731
        else:
            fn = lambda mod, args, key=node.target: hook(key, args[0])  # noqa: E731
        handles.append(site.register_forward_pre_hook(fn))
    try:
        with torch.inference_mode(), progress_bar(description, images.num_batches(), progress) as bar:
            for x in images.batches(PASS_BATCH_SIZE):
                gm(x.to(device) if device is not None else x)
                bar.advance()
    finally:
        for h in handles:
            h.remove()


def _out_of_range(name: str, seen: float, top: float) -> CalibrationError:
    return CalibrationError(f"site {name}: the second calibration pass saw {seen:.6g}, above the first pass's "
                            f"maximum {top:.6g} on the same images: the network is not deterministic (dropout or "
                            "noise left on?); call model.eval() or remove the random op")


def collect_statistics(gm: fx.GraphModule, data, *, histogram: bool = True, bins: int = DEFAULT_BINS,
                       per_channel: bool = False, channel_bins: int = DEFAULT_CHANNEL_BINS,
                       progress: bool = True, device=None) -> dict[str, SiteStatistics]:
    """Run the calibration set through the normalised graph ``gm``; statistics per site target.

    ``data``: a :class:`~spikecast.calibrate.sample.CalibrationSet`, or a tensor of images (all
    used), or any other source (read once into a set of the default size, see
    :func:`~spikecast.calibrate.sample.as_calibration_set`). ``per_channel`` also collects each
    channel's maximum and histogram (``channel_bins`` bins)."""
    images = as_calibration_set(data)
    stats = {node.target: SiteStatistics(site.name) for node, site in site_nodes(gm)}

    def first_pass(key: str, x: torch.Tensor) -> None:
        s = stats[key]
        # Reductions only (no boolean indexing, which copies): a NaN/Inf anywhere makes the sum
        # non-finite, which is the cheap check.
        if not torch.isfinite(x.sum()):
            raise CalibrationError(f"site {s.name}: activations contain NaN or Inf during calibration")
        s.max = max(s.max, float(x.max()))
        s.ndim = x.dim()
        if per_channel:
            cmax = channel_view(x).amax(0).clamp_min(0).double().cpu()
            s.channel_max = cmax if s.channel_max is None else torch.maximum(s.channel_max, cmax)
        s.numel += x.numel()
        s.positive += int((x > 0).sum())
        s.sum_positive += float(x.clamp_min(0).sum(dtype=torch.float64))

    _run_with_hooks(gm, images, first_pass, "calibration: ranges", progress, device)
    if histogram:
        for s in stats.values():
            s.histogram = torch.zeros(bins, dtype=torch.float64)

        def second_pass(key: str, x: torch.Tensor) -> None:
            s = stats[key]
            if s.max <= 0:
                return
            seen = float(x.max())
            if seen > s.max * (1 + RANGE_TOLERANCE):
                raise _out_of_range(s.name, seen, s.max)
            # torch.histc ignores values outside [min, max]: clamp so that every value is counted
            # (a value at most a rounding error above the maximum belongs to the top bin anyway)
            counts = torch.histc(x.clamp(0, s.max).float(), bins=bins, min=0.0, max=s.max).double()
            positive = int((x > 0).sum())
            counts[0] -= x.numel() - positive  # the clamped non-positives all landed in bin 0
            # guard: every positive value was counted (histc counts in float32: exact below 2**24)
            if x.numel() < 2 ** 24 and int(counts.sum()) != positive:
                raise CalibrationError(f"site {s.name}: the histogram holds {int(counts.sum())} of the {positive} "
                                       "positive activations of a batch")
            s.histogram += counts.cpu()

        _run_with_hooks(gm, images, second_pass, "calibration: histograms", progress, device)
    if per_channel:
        for s in stats.values():
            s.channel_histogram = torch.zeros(len(s.channel_max), channel_bins, dtype=torch.float64)

        def channel_pass(key: str, x: torch.Tensor) -> None:
            s = stats[key]
            xs = channel_view(x)
            cmax = s.channel_max.to(device=x.device, dtype=torch.float32)
            if bool((xs.amax(0) > cmax * (1 + RANGE_TOLERANCE)).any()):
                raise _out_of_range(s.name, float((xs.amax(0) - cmax).max() + cmax.max()), float(cmax.max()))
            positive = xs > 0
            # bin index of every positive element in its channel's histogram, flattened over channels
            # (clamped to the last bin: a value at the channel's maximum is counted there)
            scaled = (xs / cmax.clamp_min(torch.finfo(torch.float32).tiny) * channel_bins).floor()
            idx = scaled.clamp(0, channel_bins - 1).long() + torch.arange(xs.shape[1], device=x.device) * channel_bins
            counts = torch.bincount(idx[positive], minlength=xs.shape[1] * channel_bins)
            s.channel_histogram += counts.view(xs.shape[1], channel_bins).double().cpu()

        _run_with_hooks(gm, images, channel_pass, "calibration: channel histograms", progress, device)
    return stats
