"""CUDA smoke test (skipped without a GPU): every runtime path runs with the network on the GPU -
state in buffers, no CPU-only op in the step - and gives the CPU's values (integer networks bit for
bit: their sums are exact in float32 whatever the kernel; float networks to rounding)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import spikecast
from spikecast.quant import int8_kernels, integer_network
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
    for net, bitwise in ((snn, False), (exact, True), (int8_kernels(exact), True)):
        reference = net.simulate(x[:8], [4, 8])
        net.to("cuda")
        for time_batched in (False, True):
            net.config = dataclasses.replace(net.config, time_batched=time_batched)
            got = net.simulate(x[:8].cuda(), [4, 8])
            for t in (4, 8):
                assert got[t].device.type == "cuda"
                if bitwise:
                    assert torch.equal(got[t].cpu(), reference[t]), (t, time_batched)
                else:
                    assert torch.allclose(got[t].cpu(), reference[t], atol=1e-3), (t, time_batched)
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
