"""Per-layer activity, operation counts and energy (spikecast.reporting.activity)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikecast
from spikecast.reporting.activity import EnergyModel, count_ann_macs, equal_bits, measure_activity
from spikecast.zoo import create_model


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
    # ANN MACs by the convention: every output costs its whole kernel, zero-padding taps included
    assert ops["conv1"].ann_macs == 4 * 36 * (2 * 3 * 3)
    assert ops["conv2"].ann_macs == 6 * 9 * (2 * 3 * 3)  # groups=2: 2 of the 4 input channels
    # the SNN's static conv1 counts only the in-bounds taps of its non-zero inputs
    ones = torch.ones(1, 2, 6, 6)
    assert ops["conv1"].snn_ops[1] == float(F.conv2d(ones, torch.ones(4, 2, 3, 3), padding=1).sum())
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


def test_ann_macs_of_cifar_resnet20_are_the_conventional_40_55M(single_thread):
    # 19 3x3 convs (padding taps included, option-A shortcuts: no 1x1 convs) + the 64 x 10 linear
    # = 40,551,040 MACs per image; leaving the padding taps out gave 36.96M. Random weights: the
    # count depends on the architecture only.
    torch.manual_seed(0)
    macs = count_ann_macs(create_model("cifar10-resnet20"), torch.randn(2, 3, 32, 32))
    assert len(macs) == 20 and macs["linear"] == 640
    assert sum(macs.values()) == pytest.approx(40.55e6, rel=1e-3)
    assert sum(macs.values()) == 40_551_040


class PadNet(nn.Module):
    """conv1 outputs 1 everywhere (zero weights, bias 1), so its neurons fire at every step and
    conv2 sees a full spike map: the padding taps are easy to count by hand."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.bias.fill_(1.0)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_padding_taps_count_for_the_ann_but_are_no_snn_events(single_thread):
    torch.manual_seed(0)
    ann, x = PadNet().eval(), torch.randn(8, 1, 4, 4)
    snn = spikecast.convert(ann, calib=x, correction="none", timesteps=4, progress=False)
    rep = measure_activity(ann, snn, x, [1, 4], max_images=8)
    ops = {op.name: op for op in rep.operations}
    assert rep.layers[0].firing_rate[4] == 1.0  # every conv2 input spikes at every step
    # ANN, 4x4 outputs x 3x3 taps, padding included: conv1 16 x 9 x 1 x 2, conv2 16 x 9 x 2 x 3
    assert ops["conv1"].ann_macs == 288 and ops["conv2"].ann_macs == 864
    # SNN: per (c_in, c_out) pair a 4x4 map has (2+3+3+2)^2 = 100 in-bounds taps (a padded zero
    # never spikes): conv1 once (static prefix, analog non-zero input) 100 x 2, conv2 100 x 6 per step
    assert ops["conv1"].snn_ops == {1: 200.0, 4: 200.0}
    assert ops["conv2"].kind == "AC" and ops["conv2"].snn_ops == {1: 600.0, 4: 2400.0}
    assert rep.ann_macs() == rep.ann_layer_macs() == 288 + 864 + 6


class GeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.relu(self.fc1(x)))))


def test_compensated_op_costs_the_ann_once_without_the_running_means(single_thread):
    torch.manual_seed(0)
    ann, x = GeluNet().eval(), torch.randn(16, 4)
    snn = spikecast.convert(ann, calib=x, correction="none", timesteps=4, progress=False)
    rep = measure_activity(ann, snn, x, [1, 4], max_images=16)
    comp = [op for op in rep.operations if op.compensated]
    gelu = next(op for op in comp if "gelu" in op.name)
    helpers = next(op for op in comp if "running means" in op.name)
    # the ANN computes GELU once per image on its 8 features; the SNN at every step
    assert gelu.ann_macs == 8 and gelu.snn_ops == {1: 8.0, 4: 32.0}
    # running mean of fc2's 8 outputs + difference of GELU's 8: SNN only, every step
    assert helpers.ann_macs == 0 and helpers.snn_ops == {1: 16.0, 4: 64.0}
    assert rep.ann_layer_macs() == 4 * 6 + 6 * 8 + 8 * 3
    assert rep.ann_macs() == rep.ann_layer_macs() + 8
    m = rep.energy_model
    assert rep.energy(4)["ann_compute_uj"] == pytest.approx((96 + 8) * m.e_mac_pj * 1e-6)


def test_equal_bit_quantised_ann_energy():
    assert [equal_bits(t) for t in (1, 2, 3, 4, 7, 8, 15, 16, 32, 64)] == [1, 2, 2, 3, 3, 4, 4, 5, 6, 7]
    m = EnergyModel()
    assert m.e_qmac_pj(8) == pytest.approx(0.2 * 8 * 32 / 64 + 0.9)
    # the multiplier scaling reproduces Horowitz's 32-bit integer multiply (3.1 pJ) within 5%
    assert EnergyModel(weight_bits=32).e_qmac_pj(32) - m.e_ac_pj == pytest.approx(3.1, rel=0.05)
    with pytest.raises(ValueError):
        equal_bits(0)
