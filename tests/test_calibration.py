"""Streaming calibration statistics: exact enough, order independent, loud on bad data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spikecast
from spikecast.calibrate.statistics import collect_statistics
from spikecast.convert.api import prepare


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
    stats = collect_statistics(gm, [data[i:i + 100] for i in range(0, 600, 100)], progress=False)
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
