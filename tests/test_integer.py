"""Integer-arithmetic networks: integer accumulators, bit-exact spikes in onnxruntime, clear errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import spikecast
from spikecast.nn import kernels
from spikecast.nn.kernels import int8_available
from spikecast.quant import int8_kernels, integer_network, quantize_weights
from spikecast.quant.integer import input_scale

pytestmark = pytest.mark.usefixtures("single_thread")

X = torch.randn(48, 3, 12, 12, generator=torch.Generator().manual_seed(1))


class ResidualNet(nn.Module):
    """Stem, a residual block, a depthwise conv, average pooling and a classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc = nn.Linear(16, 6)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = F.relu(h + self.conv2(F.relu(self.conv1(h))))
        h = F.relu(self.dw(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


@pytest.fixture(scope="module")
def snn():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # per-channel thresholds and the advanced correction: thresholds, biases and charges everywhere
        return spikecast.convert(ResidualNet().eval(), calib=X[:32], per_channel=True, timesteps=16, progress=False)


def accumulators(net, x):
    """Outputs of every reduction (conv / linear) whose input is integer by construction."""
    found = []

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            source = n.args[0] if n.op == "call_function" and n.args else None
            if (isinstance(source, fx.Node) and source.target in (torch.ops.aten.sign.default, torch.ops.aten.clamp.default)
                    and n.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)):
                found.append(out)
            return out

    static = Recorder(net._prefix).run(x)
    net.reset()
    Recorder(net._step).run(x, *static)
    return found


def test_every_layer_feeding_a_neuron_accumulates_integers(snn):
    net = integer_network(snn, X[:32])
    layers = net.metadata["integer_arithmetic"]["layers"]
    assert layers == {"stem": "input", "conv1": "spikes", "conv2": "spikes", "dw": "spikes", "fc": "float"}
    with torch.no_grad():
        sums = accumulators(net, X[:8])
    assert len(sums) == 4
    for s in sums:
        assert torch.equal(s, s.round()) and s.abs().max() < 2 ** 24
    for name, tensor in net.graph_module.named_buffers():
        if name.startswith("int_weight"):
            assert torch.equal(tensor, tensor.round()) and tensor.abs().max() <= 127


def test_integer_network_computes_the_same_function(snn):
    """Thresholds folded into the weights (per channel, grouped conv included) and the input grid
    change nothing but rounding: the integer network tracks the float SNN."""
    net = integer_network(snn, X[:32], input_bits=12)
    fake = quantize_weights(snn, 8)
    with torch.no_grad():
        a, b = net.simulate(X, 32), fake.simulate(X, 32)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
    assert (a - b).abs().mean() <= 0.05 * b.abs().mean()


def test_onnxruntime_reproduces_the_integer_network_bit_for_bit(snn, tmp_path):
    pytest.importorskip("onnxruntime")
    from spikecast.export import OnnxSpikingNetwork, export_snn_step

    exact = integer_network(snn, X[:32])
    # the int8-kernel form exports as the float computation its ops stand for: the same file's values
    for name, net in (("int", exact), ("int8", int8_kernels(exact))):
        path = export_snn_step(net, tmp_path / f"{name}.onnx", example=X[:2])
        driver = OnnxSpikingNetwork(path)
        assert driver.description["integer_arithmetic"] is True
        with torch.no_grad():
            ref = net.simulate(X, [1, 8, 16])
        got = driver.simulate(X, [1, 8, 16])
        for t in (1, 8, 16):
            # the classifier after pooling is a float reduction: equal to rounding, spikes equal exactly
            assert torch.allclose(ref[t], got[t], atol=1e-6, rtol=0), (name, t)
            assert torch.equal(ref[t].argmax(-1), got[t].argmax(-1))


def test_save_and_reload_keep_the_integer_network(snn, tmp_path):
    net = integer_network(snn, X[:32])
    net.save(tmp_path / "int")
    back = spikecast.load(tmp_path / "int")
    with torch.no_grad():
        assert torch.equal(net.simulate(X[:8], 8), back.simulate(X[:8], 8))
    assert back.metadata["integer_arithmetic"]["input_scale"] == pytest.approx(input_scale(X[:32]))


def test_errors_are_clear(snn):
    with pytest.raises(ValueError, match="calib images"):
        integer_network(snn)
    with pytest.raises(ValueError, match="2\\^24"):
        integer_network(snn, X[:32], input_bits=16)  # 27 x 127 x 32767 terms: beyond float32's exact integers
    with pytest.raises(ValueError, match="bits"):
        integer_network(snn, X[:32], bits=3)
    with pytest.raises(ValueError, match="NaN"):
        integer_network(snn, torch.full((2, 3, 12, 12), float("nan")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masked = spikecast.convert(ResidualNet().eval(), calib=X[:32], mask_ratio=0.2, correction="none",
                                   progress=False)
    with pytest.raises(ValueError, match="masking"):
        integer_network(masked, X[:32])


def test_int8_kernels_sum_the_same_integers(snn, tmp_path):
    """oneDNN's u8 x s8 -> int32 kernels in place of the float32 reductions of spike signs: the same
    integers, so the same outputs bit for bit (step by step and time-batched); saved and reloaded."""
    exact = integer_network(snn, X[:32])
    fast = int8_kernels(exact)
    layers = exact.metadata["integer_arithmetic"]["layers"]
    assert fast.metadata["integer_arithmetic"]["kernels"] == \
        f"int8 ({sum(1 for k in layers.values() if k == 'spikes')} layers)"
    targets = {n.target for n in fast.graph_module.graph.nodes if n.op == "call_function"}
    assert torch.ops.spikecast.spike_conv2d.default in targets
    with torch.inference_mode():
        ref = exact.simulate(X[:8], [1, 5, 16])
        got = fast.simulate(X[:8], [1, 5, 16])
    assert all(torch.equal(ref[t], got[t]) for t in ref)
    back = spikecast.load(fast.save(tmp_path / "int8"))
    with torch.inference_mode():
        assert torch.equal(back.simulate(X[:8], 16), ref[16])
    with pytest.raises(ValueError, match="integer_network"):
        int8_kernels(snn)
    if int8_available():  # the integer path really runs (not its float fallback)
        with torch.profiler.profile() as prof, torch.inference_mode():
            fast.simulate(X[:2], 2)
        assert any("qconv" in e.key for e in prof.key_averages())


def test_int8_kernel_ops_equal_their_float_reductions():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-1, 2, (6, 8, 9, 9), generator=g).float().contiguous(memory_format=torch.channels_last)
    for weight, groups, stride in ((torch.randint(-127, 128, (12, 8, 3, 3), generator=g).float(), 1, [2, 2]),
                                   (torch.randint(-127, 128, (8, 1, 3, 3), generator=g).float(), 8, [1, 1])):
        bias = torch.randn(weight.shape[0], generator=g)
        ref = F.conv2d(x, weight, bias, stride, [1, 1], [1, 1], groups)
        got = torch.ops.spikecast.spike_conv2d(kernels.spike_codes(x), weight, bias, stride, [1, 1], [1, 1], groups)
        assert torch.equal(ref, got)
    xl = torch.randint(-1, 2, (3, 5, 32), generator=g).float()
    wl = torch.randint(-127, 128, (7, 32), generator=g).float()
    assert torch.equal(torch.ops.spikecast.spike_linear(kernels.spike_codes(xl), wl, None), F.linear(xl, wl))
    not_int8 = torch.randn(12, 8, 3, 3, generator=g)  # falls back to the float computation
    assert torch.equal(torch.ops.spikecast.spike_conv2d(kernels.spike_codes(x), not_int8, None, [1, 1], [1, 1],
                                                        [1, 1], 1),
                       F.conv2d(x, not_int8, None, 1, 1))
    assert kernels.int8_available() in (True, False)
