"""Saving and loading a SpikingNetwork: bit-identical simulation, clear errors on bad folders."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikecast
from spikecast import SpikingNetwork
from spikecast.nn.maxpool import SpikingMaxPool


pytestmark = pytest.mark.usefixtures("single_thread")


class Net(nn.Module):
    """A kept BN (after a cat), a max-pool inside the spiking part (approximated), three ReLUs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.relu2 = nn.ReLU()
        self.bn = nn.BatchNorm2d(12)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.1, 0.3)
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        h = self.relu1(self.conv1(x))
        g = self.relu2(self.pool(self.conv2(h)))
        h = torch.cat([F.avg_pool2d(h, 2), g], 1)
        h = self.relu3(self.bn(h))
        return self.fc(h.mean((2, 3)))


X = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.fixture(scope="module")
def snn() -> SpikingNetwork:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the max-pool approximation warning
        net = spikecast.convert(Net(), calib=X, progress=False, mask_ratio=0.25, mask_sites=["relu2", "relu3"],
                                mask_seed=5, timesteps=12)
    # the network really has what this file is about
    ops = [str(n.target) for n in net.graph_module.graph.nodes if n.op == "call_function"]
    assert any("batch_norm" in t for t in ops)
    assert any(isinstance(m, SpikingMaxPool) for m in net.graph_module.modules())
    masks = {name: n.mask_ratio for name, n in net.neurons().items()}
    assert masks == {"relu1": 0.0, "relu2": 0.25, "relu3": 0.25}
    return net


@pytest.fixture(scope="module")
def saved(snn, tmp_path_factory):
    folder = tmp_path_factory.mktemp("snn") / "model"
    returned = snn.save(folder)
    assert returned == folder
    return folder


def test_saved_folder_contents(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["spikecast.json", "weights.safetensors"]
    doc = json.loads((saved / "spikecast.json").read_text())
    assert doc["format"] == "spikecast-snn"
    assert doc["simulation"]["timesteps"] == 12
    types = sorted(m["type"] for m in doc["modules"])
    assert types == ["IFNeuron", "IFNeuron", "IFNeuron", "SpikingMaxPool"]
    from safetensors.torch import load_file

    tensors = load_file(str(saved / "weights.safetensors"))
    assert any(k.endswith("threshold") for k in tensors)
    assert "bn.running_var" in tensors


def test_load_gives_bit_identical_simulation(snn, saved):
    loaded = spikecast.load(saved)
    assert isinstance(loaded, SpikingNetwork)
    a = snn.simulate(X[:4], [1, 7, 32])
    b = loaded.simulate(X[:4], [1, 7, 32])
    assert sorted(b) == [1, 7, 32]
    for t in (1, 7, 32):
        assert torch.equal(a[t], b[t]), f"T={t}"
    # masking is really active: another seed gives other outputs (so equality above is meaningful)
    other = spikecast.load(saved)
    for n in other.neurons().values():
        n.mask_seed += 1
    c = other.simulate(X[:4], 32)
    assert not torch.equal(c, a[32])
    # default-T forward is kept too
    assert torch.equal(loaded(X[:2]), snn.simulate(X[:2], 12))


def test_loaded_network_has_the_same_neurons(snn, saved):
    loaded = SpikingNetwork.load(saved)
    src, dst = snn.neurons(), loaded.neurons()
    assert list(src) == list(dst)
    for name in src:
        assert torch.equal(src[name].threshold, dst[name].threshold)
        assert src[name].config() == dst[name].config()
    assert loaded.static_prefix_ops == snn.static_prefix_ops
    assert loaded.metadata == json.loads(json.dumps(snn.metadata))
    assert loaded.config == snn.config


def test_save_is_repeatable_and_load_save_roundtrips(snn, saved, tmp_path):
    loaded = spikecast.load(saved)
    again = loaded.save(tmp_path / "again")
    assert json.loads((again / "spikecast.json").read_text()) == json.loads((saved / "spikecast.json").read_text())
    twice = spikecast.load(again)
    assert torch.equal(twice.simulate(X[:3], 9), snn.simulate(X[:3], 9))


def test_missing_folder_raises_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="spikecast.json"):
        spikecast.load(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a saved spikecast network"):
        spikecast.load(tmp_path / "empty")


def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_missing_file_raises_clear_error(saved, tmp_path):
    folder = _copy(saved, tmp_path / "m")
    (folder / "weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="weights.safetensors"):
        spikecast.load(folder)


@pytest.mark.parametrize("damage", ["json-garbage", "json-truncated", "json-other-format", "json-list",
                                    "weights-garbage", "weights-truncated", "weights-other-network"])
def test_corrupt_folder_raises_clear_error(saved, tmp_path, damage):
    folder = _copy(saved, tmp_path / "c")
    cfg, weights = folder / "spikecast.json", folder / "weights.safetensors"
    if damage == "json-garbage":
        cfg.write_text("{not json")
    elif damage == "json-truncated":
        cfg.write_text(cfg.read_text()[: len(cfg.read_text()) // 2])
    elif damage == "json-other-format":
        cfg.write_text(json.dumps({"format": "something-else"}))
    elif damage == "json-list":
        cfg.write_text("[1, 2, 3]")
    elif damage == "weights-garbage":
        weights.write_bytes(b"garbage")
    elif damage == "weights-truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "weights-other-network":
        from safetensors.torch import save_file

        save_file({"something.else": torch.zeros(3)}, str(weights))
    with pytest.raises(ValueError) as info:
        spikecast.load(folder)
    # the message says which file is wrong
    msg = str(info.value)
    assert ("spikecast.json" in msg) if damage.startswith("json") else ("weights.safetensors" in msg), msg
