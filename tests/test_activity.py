"""Per-layer activity, operation counts and energy (spikecast.reporting.activity)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikecast
from spikecast.reporting.activity import EnergyModel, measure_activity


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.fixture(scope="module")
def setup(single_thread):
    torch.manual_seed(0)
    ann = Net().eval()
    x = torch.randn(24, 2, 6, 6)
    snn = spikecast.convert(ann, calib=x, correction="none", timesteps=8, progress=False)
    return ann, snn, x


def test_operation_counts_are_exact(setup):
    ann, snn, x = setup
    rep = measure_activity(ann, snn, x, [1, 3, 8], max_images=24)
    ops = {op.name: op for op in rep.operations}
    # dense MACs: conv1 4 out ch x 36 positions x (2 x 3 x 3) minus the zero-padding borders
    ones = torch.ones(1, 2, 6, 6)
    conv1_macs = float(F.conv2d(ones, torch.ones(4, 2, 3, 3), padding=1).sum())
    assert ops["conv1"].ann_macs == conv1_macs
    assert ops["conv1"].static and ops["conv1"].kind == "MAC"
    assert ops["conv1"].snn_ops[8] == ops["conv1"].snn_ops[1]  # static prefix: once per image
    # conv2 is fed by spikes: count the connections of every non-zero input, step by step
    neuron = snn.neurons()["relu[0]"]
    seen = []
    hook = neuron.register_forward_hook(lambda m, a, out: seen.append((out != 0).float()))
    snn.simulate(x, 8)
    hook.remove()
    per_step = [float(F.conv2d(s, torch.ones(6, 2, 3, 3), stride=2, padding=1, groups=2).sum()) / len(x) for s in seen]
    assert ops["conv2"].kind == "AC" and not ops["conv2"].static
    assert ops["conv2"].snn_ops[3] == pytest.approx(sum(per_step[:3]))
    assert ops["conv2"].snn_ops[8] == pytest.approx(sum(per_step))
    assert ops["fc"].kind == "MAC"  # fed by average pooling: analog values
    assert ops["fc"].ann_macs == 18.0


def test_rates_errors_and_energy(setup):
    ann, snn, x = setup
    rep = measure_activity(ann, snn, x, [1, 8, 64], max_images=16)
    assert rep.images == 16 and [layer.name for layer in rep.layers] == list(snn.neurons())
    for layer in rep.layers:
        assert all(0.0 <= r <= 1.0 for r in layer.firing_rate.values())
        assert layer.error[64] < layer.error[1]  # more steps, closer to the ANN
    e1, e64 = rep.energy(1), rep.energy(64)
    m = EnergyModel()
    assert e64["snn_memory_uj"] == pytest.approx(64 * e1["snn_memory_uj"])
    assert e1["ann_compute_uj"] == pytest.approx(rep.ann_macs() * m.e_mac_pj * 1e-6)
    ops64 = rep.snn_ops(64)
    assert e64["snn_compute_uj"] == pytest.approx((ops64["AC"] * m.e_ac_pj + ops64["MAC"] * m.e_mac_pj) * 1e-6)
    d = rep.to_dict()
    assert set(d["totals"]) == {"1", "8", "64"} and d["energy_model"]["e_ac_pj"] == 0.9


def test_bad_input(setup):
    ann, snn, x = setup
    with pytest.raises(ValueError, match="positive"):
        measure_activity(ann, snn, x, [0])
    with pytest.raises(ValueError, match="at least one"):
        measure_activity(ann, snn, [], [4])
