"""CUDA smoke test (skipped without a GPU): every runtime path runs with the network on the GPU -
state in buffers, no CPU-only op in the step - and gives the CPU's values. Seen on an H200: in float32
cuDNN's rounding, a few ulps off the CPU's, moves a membrane across its threshold now and then, and
the flipped spike changes the output by a whole spike's weight; so float networks are compared in
float64 (rounding ~1e-16 flips nothing). Integer-arithmetic networks keep float32: their integer
layers are exact on any kernel, so no spike can flip, and only the layers left in float (the
classifier after the average pool) round differently - their outputs agree to rounding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import spikecast
from spikecast.devices import device_of
from spikecast.export import OnnxSpikingNetwork, export_snn_step
from spikecast.quant import int8_kernels, integer_network
from spikecast.reporting.activity import measure_activity
from spikecast.zoo import create_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def no_tf32():
    # TF32 would round the integer sums; spikecast's exactness claims are for float32
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_every_runtime_runs_on_the_gpu_with_the_cpu_values():
    torch.manual_seed(0)
    ann = create_model("cifar10-resnet20", pretrained=False).eval()
    x = torch.randn(16, 3, 32, 32)
    snn = spikecast.convert(ann, calib=(x,), timesteps=8, progress=False,
                            recipe=spikecast.Recipe(correction="none", reconstruct="off"))
    exact = integer_network(snn, (x,))
    for net, dtype in ((snn, torch.float32), (snn, torch.float64), (exact, None), (int8_kernels(exact), None)):
        inputs = x[:8].to(dtype or torch.float32)
        net.to(dtype or torch.float32)
        reference = net.simulate(inputs, [4, 8])
        net.to("cuda")
        for time_batched in (False, True):
            net.config = dataclasses.replace(net.config, time_batched=time_batched)
            got = net.simulate(inputs.cuda(), [4, 8])
            for t in (4, 8):
                assert got[t].device.type == "cuda" and got[t].dtype == reference[t].dtype
                assert torch.isfinite(got[t]).all()
                if dtype is None:  # integer arithmetic: one flipped spike would move an output by ~0.1
                    assert torch.allclose(got[t].cpu(), reference[t], rtol=1e-5, atol=1e-5), (t, time_batched)
                elif dtype == torch.float64:  # rounding ~1e-16 flips no spike
                    assert torch.allclose(got[t].cpu(), reference[t], atol=1e-6), (t, time_batched)
        assert all(b.device.type == "cuda" for m in net.stateful_modules() for b in m.buffers())
        net.to("cpu")


def test_validate_on_the_gpu():
    torch.manual_seed(1)
    ann = create_model("digits-cnn", pretrained=False).eval()
    x = torch.randn(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))
    snn = spikecast.convert(ann, calib=(x,), timesteps=8, progress=False, device="cuda")
    result = spikecast.validate(ann, snn, (x, y), timesteps=[2, 8], device="cuda", progress=False)
    assert set(result.snn_accuracy) == {2, 8}


def test_a_loaded_network_measures_activity_and_exports_on_the_gpu(tmp_path):
    # a saved SNN loads with its weights as buffers (no parameters): the activity measurement and
    # the ONNX export must find its device through the buffers too, or they feed it CPU tensors
    torch.manual_seed(2)
    ann = create_model("digits-cnn", pretrained=False).eval()
    x = torch.rand(32, 1, 8, 8)
    snn = spikecast.convert(ann, calib=(x,), timesteps=4, progress=False,
                            recipe=spikecast.Recipe(correction="none", reconstruct="off"))
    snn.save(tmp_path / "net")
    on_cpu = spikecast.load(tmp_path / "net")
    on_gpu = spikecast.load(tmp_path / "net", device="cuda")
    assert not list(on_gpu.parameters())  # the case under test: buffers only
    assert device_of(on_gpu).type == "cuda"

    cpu_report = measure_activity(ann, on_cpu, (x,), [2, 4], max_images=16)
    gpu_report = measure_activity(ann, on_gpu, (x,), [2, 4], max_images=16)
    for c, g in zip(cpu_report.layers, gpu_report.layers):
        assert c.name == g.name
        for t in (2, 4):
            assert abs(c.firing_rate[t] - g.firing_rate[t]) < 1e-3, (c.name, t)
    assert next(ann.parameters()).device.type == "cpu"  # the caller's ANN is put back

    path = export_snn_step(on_gpu, tmp_path / "step.onnx", example=x[:2])
    got = OnnxSpikingNetwork(path, threads=1).simulate(x[:8], [4])[4]
    reference = on_cpu.simulate(x[:8], [4])[4]
    assert torch.allclose(torch.as_tensor(got), reference, atol=1e-4)
