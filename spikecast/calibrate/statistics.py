"""Streaming activation statistics per site: fixed memory, independent of batch order.

Two passes over the calibration data. Pass 1 records per site the maximum (and checks that the
data is finite). Pass 2 fills a fixed-size histogram of the positive activations on [0, max]; a
percentile is read from the histogram with linear interpolation inside a bin, so its error is at
most max / bins. Sums and maxima commute, so the result does not depend on the batch order, and
no activation is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
import torch.fx as fx

from spikecast.errors import CalibrationError
from spikecast.graph.sites import site_nodes
from spikecast.progress import progress_bar

DEFAULT_BINS = 8192
DEFAULT_CHANNEL_BINS = 1024  # per-channel histograms: channels x bins float64 each


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


def iterate_inputs(data) -> Iterable[torch.Tensor]:
    """Input tensors from a DataLoader / iterable of batches / tensor / (x, y) tuple."""
    from spikecast.data import as_loader, split_batch

    for batch in as_loader(data):
        x, _ = split_batch(batch)
        yield x


def _run_with_hooks(gm: fx.GraphModule, data, hook: Callable[[str, torch.Tensor], None],
                    description: str, progress: bool, device) -> int:
    handles = []
    for node, site in site_nodes(gm):
        # a bipolar site's neuron covers [-theta, theta]: its statistics are those of |x|
        if getattr(site, "bipolar", False):
            fn = lambda mod, args, key=node.target: hook(key, args[0].abs())  # noqa: E731
        else:
            fn = lambda mod, args, key=node.target: hook(key, args[0])  # noqa: E731
        handles.append(site.register_forward_pre_hook(fn))
    batches = 0
    try:
        with torch.inference_mode(), progress_bar(description, None, progress) as bar:
            for x in iterate_inputs(data):
                if not torch.isfinite(x).all():
                    raise CalibrationError(f"calibration batch {batches} contains NaN or Inf values")
                gm(x.to(device) if device is not None else x)
                batches += 1
                bar.advance()
    finally:
        for h in handles:
            h.remove()
    if batches == 0:
        raise CalibrationError("the calibration data is empty: it yielded no batch")
    return batches


def collect_statistics(gm: fx.GraphModule, data, *, histogram: bool = True, bins: int = DEFAULT_BINS,
                       per_channel: bool = False, channel_bins: int = DEFAULT_CHANNEL_BINS,
                       progress: bool = True, device=None) -> dict[str, SiteStatistics]:
    """Run ``data`` through the normalised graph ``gm`` and return statistics per site target.

    ``per_channel`` also collects each channel's maximum and histogram (``channel_bins`` bins)."""
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

    _run_with_hooks(gm, data, first_pass, "calibration: ranges", progress, device)
    if histogram:
        for s in stats.values():
            s.histogram = torch.zeros(bins, dtype=torch.float64)

        def second_pass(key: str, x: torch.Tensor) -> None:
            s = stats[key]
            if s.max <= 0:
                return
            counts = torch.histc(x.clamp_min(0).float(), bins=bins, min=0.0, max=s.max).double()
            counts[0] -= x.numel() - int((x > 0).sum())  # the clamped non-positives all landed in bin 0
            s.histogram += counts

        _run_with_hooks(gm, data, second_pass, "calibration: histograms", progress, device)
    if per_channel:
        for s in stats.values():
            s.channel_histogram = torch.zeros(len(s.channel_max), channel_bins, dtype=torch.float64)

        def channel_pass(key: str, x: torch.Tensor) -> None:
            s = stats[key]
            xs = channel_view(x)
            cmax = s.channel_max.to(device=x.device, dtype=torch.float32)
            positive = xs > 0
            # bin index of every positive element in its channel's histogram, flattened over channels
            scaled = (xs / cmax.clamp_min(torch.finfo(torch.float32).tiny) * channel_bins).floor()
            idx = scaled.clamp(0, channel_bins - 1).long() + torch.arange(xs.shape[1], device=x.device) * channel_bins
            counts = torch.bincount(idx[positive], minlength=xs.shape[1] * channel_bins)
            s.channel_histogram += counts.view(xs.shape[1], channel_bins).double().cpu()

        _run_with_hooks(gm, data, channel_pass, "calibration: channel histograms", progress, device)
    return stats
