"""Reports: latency to parity, numbers equal to the validator's, files written."""

from __future__ import annotations

import json

import pytest
import torch

import spikecast
from spikecast.reporting import Report, build_report, write_report
from spikecast.reporting.activity import ActivityReport, LayerActivity, LayerOperations
from spikecast.validate import ValidationResult


def _result(accs, ann=0.80):
    ts = sorted(accs)
    return ValidationResult(timesteps=ts, samples=100, ann_accuracy=ann, snn_accuracy=dict(accs),
                            agreement={t: accs[t] for t in ts}, logit_error={t: 0.1 for t in ts},
                            cosine={t: 0.9 for t in ts}, tolerance=0.01, passed=True)


def test_latency_to_parity_is_the_smallest_T_within_each_margin():
    r = Report("t", "m", "d", _result({1: 0.5, 2: 0.781, 4: 0.791, 8: 0.7951, 16: 0.80}))
    assert r.latency_to_parity() == {0.5: 8, 1.0: 4, 2.0: 2}
    never = Report("t", "m", "d", _result({1: 0.5, 2: 0.6}))
    assert never.latency_to_parity() == {0.5: None, 1.0: None, 2.0: None}
    assert "not reached" in never.markdown()


def test_report_numbers_equal_the_validator(tmp_path, single_thread):
    from spikecast.zoo import create_model
    from spikecast.zoo.digits import digits_tensors

    x_train, _ = digits_tensors("train")
    x, y = digits_tensors("test")
    ann = create_model("digits-cnn", pretrained=True)
    snn = spikecast.convert(ann, calib=x_train[:128], correction="none", mask_ratio=0.2, progress=False)
    ts = [1, 4, 16]
    report = build_report(ann, snn, (x[:160], y[:160]), ts, activity_images=32, progress=False)
    direct = spikecast.validate(ann, snn, (x[:160], y[:160]), ts, progress=False)
    assert report.validation.snn_accuracy == direct.snn_accuracy
    assert report.validation.ann_accuracy == direct.ann_accuracy
    assert report.masking is not None and report.masking["ratio"] == pytest.approx(0.2)
    paths = spikecast.report(report, tmp_path)
    doc = json.loads(paths["report.json"].read_text())
    assert doc["snn"]["top1"] == {str(t): direct.snn_accuracy[t] for t in ts}
    assert doc["activity"]["totals"]["16"]["snn_total_uj"] == pytest.approx(report.activity.energy(16)["snn_total_uj"])
    assert "random spike masking ratio 0.2" in paths["report.md"].read_text()
    # a bare ValidationResult is reportable too (no activity section)
    paths = write_report(direct, tmp_path / "bare")
    assert paths["report.html"].is_file() and "accuracy_vs_timesteps.png" in paths


def _activity():
    """A hand-made activity: 1,000 neurons, a spike-fed conv of 1M MACs and an analog-fed fc of 10k."""
    ts = [1, 4, 16]
    layers = [LayerActivity("relu", 1000, {1: 0.1, 4: 0.5, 16: 0.6}, {1: 0.5, 4: 0.2, 16: 0.1})]
    ops = [LayerOperations("conv", "AC", False, 1e6, {1: 1e5, 4: 2e6, 16: 1e7}),
           LayerOperations("fc", "MAC", False, 1e4, {1: 1e4, 4: 4e4, 16: 1.6e5})]
    return ActivityReport(ts, 8, layers, ops)


def test_equal_bit_quantised_ann_row_and_not_cheaper_statements(tmp_path):
    a = _activity()
    # by hand (pJ): memory 1,000 neurons x 2 (read + write) x bits x 3.12; the b-bit ANN pays
    # 0.2 x b x 32 / 64 + 0.9 per MAC of the spike-fed conv and 4.6 per MAC of the analog-fed fc
    mem = 1000 * 2 * 3.12
    snn = {1: 1e5 * 0.9 + 1e4 * 4.6 + mem * 32, 4: 2e6 * 0.9 + 4e4 * 4.6 + mem * 32 * 4,
           16: 1e7 * 0.9 + 1.6e5 * 4.6 + mem * 32 * 16}
    qann = {t: 1e6 * (0.1 * b + 0.9) + 1e4 * 4.6 + mem * b for t, b in ((1, 1), (4, 3), (16, 5))}
    fp32 = 1.01e6 * 4.6 + mem * 32
    for t in (1, 4, 16):
        e = a.energy(t)
        assert e["snn_total_uj"] == pytest.approx(snn[t] * 1e-6)
        assert e["equal_bit_ann_total_uj"] == pytest.approx(qann[t] * 1e-6)
        assert e["ann_total_uj"] == pytest.approx(fp32 * 1e-6)
    # T=1: cheaper than both; T=4: NOT cheaper than the 3-bit ANN only; T=16: NOT cheaper than either
    report = Report("t", "m", "d", _result({1: 0.5, 4: 0.7, 16: 0.79}), activity=a)
    md = report.markdown()
    for b, t in ((1, 1), (3, 4), (5, 16)):
        assert f"| {b}-bit ANN (equal bits to T={t}) |" in md
    assert "T=1: the SNN (0.34 µJ per image) is cheaper than the equal-bit 1-bit quantised ANN (1.05 µJ), and " \
           "is cheaper than the fp32 ANN (4.85 µJ)" in md
    assert "T=4: the SNN (2.78 µJ per image) is NOT cheaper than the equal-bit 3-bit quantised ANN (1.26 µJ), " \
           "and is cheaper than the fp32 ANN" in md
    assert "T=16: the SNN (12.93 µJ per image) is NOT cheaper than the equal-bit 5-bit quantised ANN (1.48 µJ), " \
           "and is NOT cheaper than the fp32 ANN" in md
    assert "zero-padding taps included" in md and "arXiv 2409.08290" in md
    paths = write_report(report, tmp_path)
    page = paths["report.html"].read_text()
    assert "<td>3-bit ANN (equal bits to T=4)</td>" in page
    assert "T=4: the SNN (2.78 µJ per image) is NOT cheaper than the equal-bit 3-bit" in page
    assert "zero-padding taps included" in page
    doc = json.loads(paths["report.json"].read_text())["activity"]
    assert {t: row["bits"] for t, row in doc["equal_bit_ann"]["rows"].items()} == {"1": 1, "4": 3, "16": 5}
    assert doc["equal_bit_ann"]["rows"]["4"]["total_uj"] == pytest.approx(qann[4] * 1e-6)
    assert doc["equal_bit_ann"]["rows"]["4"]["macs"] == 1.01e6
    cheaper = {t: (x["snn_cheaper_than_equal_bit_ann"], x["snn_cheaper_than_ann"]) for t, x in doc["totals"].items()}
    assert cheaper == {"1": (True, True), "4": (False, True), "16": (False, False)}


def test_report_says_what_each_maxpool_got_and_what_it_cost(tmp_path, single_thread):
    """A max-pool of a concatenation of two ReLUs: the default method moves it through the
    concatenation before the neurons; the decomposition adds neurons and neuron layers."""
    import warnings

    from torch import nn

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
            self.c = nn.Conv2d(8, 6, 3, padding=1)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
            h = torch.relu(self.c(nn.functional.max_pool2d(h, 2)))
            return self.fc(h.mean((2, 3)))

    ann = Pooled().eval()
    x = torch.rand(24, 3, 8, 8)
    records = {}
    for method in ("moved", "decompose"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            snn = spikecast.convert(ann, calib=x, maxpool=method, correction="none", timesteps=4, progress=False)
        report = build_report(ann, snn, (x[:8],), [4], activity_images=0, progress=False)
        records[method] = rec = report.maxpools
        assert rec["method"] == method and len(rec["pools"]) >= 1
        assert rec["neuron_layers"] >= 2
        paths = spikecast.report(report, tmp_path / method)
        assert "## Max-pools" in paths["report.md"].read_text()
        assert "<h2>Max-pools</h2>" in paths["report.html"].read_text()
        assert json.loads(paths["report.json"].read_text())["maxpools"]["method"] == method
    assert records["moved"]["decomposition_neurons"] == 0 and records["decompose"]["decomposition_neurons"] > 0
    assert records["decompose"]["neuron_layers"] > records["moved"]["neuron_layers"]
    assert any("max-pool" in p["action"] for p in records["moved"]["pools"])
    # no max-pool, no section
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    snn = spikecast.convert(plain, calib=x, correction="none", timesteps=4, progress=False)
    report = build_report(plain, snn, (x[:8],), [4], activity_images=0, progress=False)
    assert report.maxpools is None and "## Max-pools" not in report.markdown()
