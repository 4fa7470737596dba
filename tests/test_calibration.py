"""Streaming calibration statistics: exact enough, order independent, loud on bad data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spikecast
from spikecast.calibrate.sample import calibration_set
from spikecast.calibrate.statistics import collect_statistics
from spikecast.pipeline import prepare


class _TwoSites(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))).relu()


def _graph_and_data(seed=0):
    torch.manual_seed(seed)
    model = _TwoSites().eval()
    data = torch.randn(600, 8)
    return model, prepare(model, data[:2]), data


def test_percentile_matches_exact_quantile_of_positive_activations():
    model, gm, data = _graph_and_data()
    # all 600 rows: a calibration set read from batches with no bound
    images = calibration_set([data[i:i + 100] for i in range(0, 600, 100)], max_images=None)
    assert len(images) == 600 and images.batches_read == 6
    stats = collect_statistics(gm, images, progress=False)
    with torch.no_grad():
        h = model.fc1(data)
    pos = h[h > 0]
    first = stats[next(iter(stats))]
    assert first.max == pytest.approx(float(h.max()), rel=1e-6)
    assert first.positive == pos.numel() and first.numel == h.numel()
    ordered = pos.sort().values
    width = first.max / len(first.histogram)
    for p in (50.0, 99.0, 99.9):
        # quantile definitions differ by at most one order statistic; the histogram adds one bin
        k = p / 100 * (len(ordered) - 1)
        lo, hi = float(ordered[max(int(k) - 1, 0)]), float(ordered[min(int(k) + 2, len(ordered) - 1)])
        assert lo - width <= first.percentile(p) <= hi + width


def test_statistics_do_not_depend_on_batch_order():
    _, gm, data = _graph_and_data()
    batches = [data[i:i + 64] for i in range(0, 600, 64)]
    a = collect_statistics(gm, batches, progress=False)
    b = collect_statistics(gm, list(reversed(batches)), progress=False)
    for key in a:
        assert a[key].max == b[key].max and a[key].positive == b[key].positive
        assert torch.equal(a[key].histogram, b[key].histogram)
        assert a[key].percentile(99.95) == b[key].percentile(99.95)


def test_nan_calibration_data_and_empty_loader_raise():
    model, _, data = _graph_and_data()
    bad = data.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(spikecast.CalibrationError, match="NaN"):
        spikecast.convert(model, calib=bad, progress=False)
    with pytest.raises(spikecast.CalibrationError, match="empty"):
        spikecast.convert(model, calib=[], progress=False)


# ------------------------------------------------------------------ MSE / per-channel thresholds
def _if_error(samples: torch.Tensor, theta: float, T: int) -> float:
    """Exact mean squared error of transmitting ``samples`` through an IF neuron for T steps."""
    q = theta / T * torch.clamp(torch.floor(samples * T / theta + 0.5), 0, T)
    return float(((q - samples) ** 2).mean())


@pytest.mark.parametrize("T", [4, 16, 64])
def test_mse_threshold_finds_the_optimum_of_a_known_distribution(T):
    from spikecast.calibrate.thresholds import mse_threshold

    # Exponential(1) activations: heavy enough tail that the optimum clips well below the max.
    g = torch.Generator().manual_seed(0)
    samples = -torch.log(torch.rand(100_000, generator=g, dtype=torch.float64))
    top = float(samples.max())
    counts = torch.histc(samples, bins=8192, min=0.0, max=top)
    found = float(mse_threshold(counts, torch.tensor(top), T))
    # brute force on the samples themselves, independent of the histogram
    grid = torch.linspace(0.5, 12.5, 601, dtype=torch.float64)
    errors = torch.tensor([_if_error(samples, float(th), T) for th in grid])
    best = float(grid[errors.argmin()])
    assert found == pytest.approx(best, abs=0.03 * best + 0.02)
    # and it is near-optimal in the error it achieves
    assert _if_error(samples, found, T) <= float(errors.min()) * 1.01
    assert found < 0.8 * top  # it does clip the tail


def test_mse_threshold_grows_with_the_timestep_budget_and_respects_no_data():
    from spikecast.calibrate.thresholds import mse_threshold

    g = torch.Generator().manual_seed(1)
    samples = torch.randn(200_000, generator=g).abs()
    counts = torch.histc(samples, bins=4096, min=0.0, max=float(samples.max()))
    thetas = [float(mse_threshold(counts, samples.max(), T)) for T in (2, 8, 32, 128)]
    assert thetas == sorted(thetas) and thetas[0] < thetas[-1]
    assert float(mse_threshold(torch.zeros(16), torch.tensor(0.0), 8)) == 0.0


def test_per_channel_statistics_and_thresholds():
    from spikecast.calibrate.thresholds import CalibrationConfig, calibrate
    from spikecast.graph.sites import site_nodes

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval()
    with torch.no_grad():  # channels on very different scales: one threshold cannot serve them all
        model[0].weight.mul_(torch.tensor([1.0, 10.0, 100.0, 1000.0]).view(4, 1, 1, 1))
    x = torch.randn(256, 3, 8, 8)
    gm = prepare(model, x[:2])
    with torch.no_grad():
        h = model(x).transpose(0, 1).reshape(4, -1)  # [channel, values]
    for method in ("max", "percentile", "mse"):
        config = CalibrationConfig(method=method, per_channel=True, timesteps=16, percentile=99.0)
        out, _ = calibrate(gm, [x[:100], x[100:]], config, progress=False)
        theta = next(s.threshold for _, s in site_nodes(out))
        assert theta.shape == (1, 4, 1, 1)
        for c in range(4):
            values = h[c][h[c] > 0].double()
            th = float(theta.flatten()[c])
            if method == "max":
                assert th == pytest.approx(float(values.max()), rel=1e-6)
            elif method == "percentile":
                ref = float(torch.quantile(values, 0.99))
                assert th == pytest.approx(ref, rel=0.02)
            else:
                grid = torch.linspace(0.05, 1.0, 400, dtype=torch.float64) * float(values.max())
                best = min(_if_error(values, float(g), 16) for g in grid)
                assert _if_error(values, th, 16) <= best * 1.02
    with pytest.raises(ValueError, match="calibration method"):
        CalibrationConfig(method="kl")
