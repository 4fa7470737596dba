"""A headline number guarded in CI: ResNet-20, default recipe, T=16, on a fixed 1,000-image test subset.

``python benchmarks/bench_calibration.py guard`` records the value in the ``headline-guard``
section of benchmarks/RESULTS.md; this test recomputes it with the code under test and fails when
it moves by more than 0.5 point - so a change that quietly costs accuracy cannot land while the
published numbers stay as they were.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import spikecast
from spikecast.data import TensorBatches, cifar10_tensors
from spikecast.paths import shared_dir
from spikecast.zoo import create_model

pytestmark = pytest.mark.slow

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "RESULTS.md"
TOLERANCE = 0.005


def recorded() -> tuple[dict, float]:
    text = RESULTS.read_text()
    match = re.search(r'<!-- BEGIN RESULTS section="headline-guard" .*?<!-- END RESULTS section="headline-guard" -->',
                      text, re.S)
    assert match, "RESULTS.md has no headline-guard section (python benchmarks/bench_calibration.py guard)"
    section = match.group(0)
    row = re.search(r"^\| (?P<model>[\w-]+) \| T=(?P<T>\d+) \| (?P<images>\d+) \| [\d.]+% \| guard value: "
                    r"(?P<value>[\d.]+)% \|$", section, re.M)
    calib = re.search(r'cifar10_tensors\("train", limit=(\d+)\)', section)
    assert row and calib, "the headline-guard section has no guard row"
    return ({"model": row["model"], "timesteps": int(row["T"]), "images": int(row["images"]),
             "calib_images": int(calib.group(1))}, float(row["value"]) / 100)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what the recorded run used
    yield
    torch.set_num_threads(before)


def test_resnet20_default_recipe_t16_matches_its_results_section(two_threads):
    setting, value = recorded()
    if not (shared_dir() / "data" / "cifar10-jpeg" / "test").is_dir():
        pytest.skip(f"shared CIFAR-10 not found under {shared_dir()}: set SPIKECAST_SHARED")
    torch.manual_seed(0)
    x_cal, _ = cifar10_tensors("train", limit=setting["calib_images"])
    x_test, y_test = cifar10_tensors("test", limit=setting["images"])
    ann = create_model(setting["model"], pretrained=True)
    snn = spikecast.convert(ann, x_cal, timesteps=setting["timesteps"], progress=False)
    res = spikecast.validate(ann, snn, TensorBatches(x_test, y_test, batch_size=250),
                             timesteps=[setting["timesteps"]], progress=False)
    got = res.snn_accuracy[setting["timesteps"]]
    assert abs(got - value) <= TOLERANCE, (f"{setting['model']} T={setting['timesteps']}: {100 * got:.2f}% now, "
                                          f"{100 * value:.2f}% recorded in RESULTS.md (headline-guard)")
