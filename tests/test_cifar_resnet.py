"""The shared CIFAR-10 ResNets, written as their authors wrote them, convert with no edits."""

from __future__ import annotations

import pytest
import torch

import spikecast
from spikecast.paths import shared_dir
from spikecast.recipe import recipe_of
from spikecast.zoo import create_model, model_info


def _need_shared(name: str):
    ckpt = shared_dir() / model_info(name).default_checkpoint
    data = shared_dir() / "data" / "cifar10-jpeg"
    if not ckpt.is_file() or not data.is_dir():
        pytest.skip(f"shared weights/data not found at {ckpt} / {data}: set SPIKECAST_SHARED")


# ResNet-20 converts through the same code on real data in tests/test_headline_guard.py (its accuracy
# against RESULTS.md); one depth here keeps the CI suite under 20 minutes on 2 cores.
@pytest.mark.parametrize("name", ["cifar10-resnet32"])
def test_shared_resnet_converts_and_tracks_ann(name):
    _need_shared(name)
    from spikecast.data import cifar10_tensors

    ann = create_model(name, pretrained=True)
    x_cal, _ = cifar10_tensors("train", limit=128)  # 128, not 256: the correction's cost scales with it
    x, y = cifar10_tensors("test", limit=200)
    snn = spikecast.convert(ann, calib=(x_cal,), progress=False)  # the default recipe, calibrated for T=32
    # every F.relu of the authors' code became a neuron: 1 stem + 2 per block
    blocks = (int(name.split("resnet")[1]) - 2) // 2
    assert len(snn.neurons()) == 1 + 2 * blocks
    assert snn.metadata["correction"]["timesteps"] == 32 and recipe_of(snn).thresholds == "mse"
    res = spikecast.validate(ann, snn, (x, y), timesteps=[8, 32], progress=False)
    # measured on these 200 images (128 calibration images, 2026-12-04): ResNet-32 agreement at T=32 95.5%,
    # top-1 86.0% vs the ANN's 85.0%
    assert res.agreement[32] >= 0.9, res.table()
    assert res.snn_accuracy[32] >= res.ann_accuracy - 0.03, res.table()
    # more steps, closer to the ANN
    assert res.cosine[32] > res.cosine[8]
