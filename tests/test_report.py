"""Reports: latency to parity, numbers equal to the validator's, files written."""

from __future__ import annotations

import json

import pytest
import torch

import spikecast
from spikecast.reporting import Report, build_report, write_report
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
