"""Time-batched execution (spikecast.nn.timebatch): chunks of steps through each layer give the
values of the step-by-step runtime bit for bit - per stateful type (run_steps, eager and fused), on
whole converted networks of every zoo family, and in integer arithmetic - and it steps aside where
it would change what someone observes (hooks, autograd, spike-encoded input)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import spikecast
from spikecast.nn import neuron as neuron_module
from spikecast.quant import int8_kernels, integer_network
from spikecast.runtime import network as network_module
from spikecast.nn.timebatch import TimeBatchedStep
from spikecast.zoo import create_model

from test_stateful import MODULES, _inputs

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("kind", sorted(MODULES))
@pytest.mark.parametrize("fused", [False, True])
def test_run_steps_equals_forward_per_step_in_chunks(kind, fused, monkeypatch):
    if fused:  # every tensor is "large": the compiled scans run (binary, signed, bipolar, multi-level)
        monkeypatch.setattr(neuron_module, "COMPILE_MIN_ELEMENTS", 0)
    xs = _inputs(7)
    stepped, chunked = MODULES[kind](), MODULES[kind]()
    with torch.inference_mode():
        reference = torch.stack([stepped(x) for x in xs])
        series = torch.stack(xs)
        # uneven chunks, and a constant-current chunk given as a broadcast view (a static input)
        parts = [chunked.run_steps(series[:1]), chunked.run_steps(series[1:5]), chunked.run_steps(series[5:])]
        assert torch.equal(torch.cat(parts), reference), kind
        assert all(torch.equal(a, b) for a, b in zip(stepped.get_state(), chunked.get_state()))
        stepped.reset(), chunked.reset()
        constant = xs[0].unsqueeze(0).expand(5, *xs[0].shape)
        assert torch.equal(chunked.run_steps(constant), torch.stack([stepped(xs[0]) for _ in range(5)]))


def _simulate_both(snn, x, budgets):
    outs = {}
    for batched in (False, True):
        snn.config = dataclasses.replace(snn.config, time_batched=batched)
        outs[batched] = snn.simulate(x, budgets)
    return outs


@pytest.fixture
def chunk_calls(monkeypatch):
    """Small chunks (several sizes per run) and a count of time-batched calls with their sizes."""
    monkeypatch.setattr(network_module, "TIME_BATCH_ELEMENTS", 1 << 20)
    calls: list[int] = []
    original = TimeBatchedStep.__call__

    def counting(self, steps, *args):
        calls.append(steps)
        return original(self, steps, *args)

    monkeypatch.setattr(TimeBatchedStep, "__call__", counting)
    return calls


@pytest.mark.parametrize("name", ["cifar10-resnet20", "cifar10-vit-tiny", "cifar10-convnext-nano", "digits-cnn"])
def test_converted_networks_give_identical_outputs(name, chunk_calls):
    """Integer arithmetic: bit for bit where every layer feeding a neuron sums integers (ResNet:
    exact whatever the batch). Float: a matrix product may sum in another order for another batch
    size (oneDNN picks kernels by shape), so outputs agree to float rounding (ViT: 6e-8 here), not
    bit for bit - as do integer forms with a float layer feeding a neuron (a dense input: after a
    normalisation in ViT / ConvNeXt, after a pool in digits-cnn)."""
    torch.manual_seed(0)
    ann = create_model(name, pretrained=False).eval()
    shape = (1, 8, 8) if name == "digits-cnn" else (3, 32, 32)
    x = torch.randn(12, *shape)
    snn = spikecast.convert(ann, calib=(x,), timesteps=8, progress=False,
                            recipe=spikecast.Recipe(correction="none", reconstruct="off"))
    exact = integer_network(snn, (x,))
    layers = exact.metadata["integer_arithmetic"]["layers"]
    # ResNet-20: only the classifier (reading the output, not feeding a neuron) is float
    all_integer = [layer for layer, kind in layers.items() if kind == "float"] == ["linear"]
    assert all_integer == (name == "cifar10-resnet20")
    for net, bitwise in ((exact, all_integer), (snn, False)):
        outs = _simulate_both(net, x[:3], [1, 3, 14])
        for T in (1, 3, 14):
            if bitwise:
                assert torch.equal(outs[False][T], outs[True][T]), (name, T)
            else:
                scale = float(outs[False][T].abs().mean())
                assert float((outs[False][T] - outs[True][T]).abs().mean()) <= 1e-3 * scale, (name, T)
    assert chunk_calls and len(set(chunk_calls)) > 1  # batched, in chunks of several sizes
    # two networks, 14 steps each, all in chunks: the step that measures a new image shape is forgotten
    assert sum(chunk_calls) == 28


def test_multilevel_signed_neurons(chunk_calls):
    torch.manual_seed(1)
    ann = create_model("cifar10-resnet20", pretrained=False).eval()
    x = torch.randn(12, 3, 32, 32)
    multi = spikecast.convert(ann, calib=(x,), timesteps=4, progress=False,
                              recipe=spikecast.Recipe(correction="none", reconstruct="off", levels=2, signed=True))
    outs = _simulate_both(multi, x[:4], [2, 9])
    assert all(torch.equal(outs[False][T], outs[True][T]) for T in (2, 9))
    assert chunk_calls


def test_steps_by_one_where_batching_would_change_what_is_observed(chunk_calls):
    torch.manual_seed(2)
    ann = create_model("digits-cnn", pretrained=False).eval()
    x = torch.randn(8, 1, 8, 8)
    snn = spikecast.convert(ann, calib=(x,), timesteps=8, progress=False,
                            recipe=spikecast.Recipe(correction="none", reconstruct="off"))
    neuron = next(iter(snn.neurons().values()))
    seen: list[int] = []
    handle = neuron.register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    try:
        snn.simulate(x[:2], 6)
    finally:
        handle.remove()
    assert seen == [2] * 6 and not chunk_calls  # a hook sees every step, one at a time
    x.requires_grad_(False)
    outs = list(snn.steps(x[:2], 5))  # autograd on (fine-tuning's call): step by step
    assert len(outs) == 5 and not chunk_calls
    with torch.inference_mode():
        # float sums in another batch size: equal to rounding (integer networks: bit for bit, above)
        assert torch.allclose(torch.stack(list(snn.steps(x[:2], 5))), torch.stack(outs).detach(), atol=1e-6)
    assert chunk_calls
    poisson = dataclasses.replace(snn.config, encoding="poisson", input_scale=3.0)
    encoded = network_module.SpikingNetwork(snn.graph_module, poisson, snn.metadata)
    assert encoded._batched is None  # the input changes every step


def _windowed_bptt(snn, x, horizon, window, cut):
    """Losses and parameter gradients of a truncated-BPTT pass (the distillation's loop: a loss on the
    running mean after every ``cut`` steps, backpropagation cut there)."""
    params = [p for p in snn.graph_module.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    total, losses = None, []
    for t, out in enumerate(snn.steps(x, horizon, window=window), start=1):
        total = out if total is None else total + out
        if t % cut == 0:
            loss = (total / t).float().logsumexp(-1).mean()
            loss.backward(retain_graph=t < horizon)
            snn.detach_state()
            total = total.detach()
            losses.append(float(loss.detach()))
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    snn.reset()
    return losses, grads


def test_windows_time_batch_under_autograd_with_the_same_gradients(chunk_calls):
    """``steps(..., window=W)`` (distillation, surrogate fine-tuning): chunks under autograd that never
    cross a multiple of W, with the losses and gradients of one step at a time (float rounding:
    another convolution batch size)."""
    torch.manual_seed(3)
    ann = create_model("cifar10-resnet20", pretrained=False).eval()
    x = torch.randn(12, 3, 32, 32)
    snn = spikecast.convert(ann, calib=(x,), timesteps=4, progress=False,
                            recipe=spikecast.Recipe(correction="none", reconstruct="off"))
    stepped_losses, stepped_grads = _windowed_bptt(snn, x[:4], 8, None, 4)
    assert not chunk_calls  # autograd without a window: one step at a time
    losses, grads = _windowed_bptt(snn, x[:4], 8, 4, 4)
    assert chunk_calls == [4, 4]  # chunks of the window, not one chunk of 8 across the cut
    assert losses == pytest.approx(stepped_losses, rel=1e-5)
    for a, b in zip(grads, stepped_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()) + 1e-12)
    assert any(float(g.abs().sum()) > 0 for g in grads)  # the surrogate path carried gradients
    chunk_calls.clear()
    list(snn.steps(x[:4], 8, window=3))  # chunks end at steps 3 and 6
    assert chunk_calls == [2, 1, 2, 1, 2]
    with pytest.raises(ValueError, match="window"):
        list(snn.steps(x[:4], 8, window=0))


def test_config_round_trip(tmp_path):
    ann = create_model("digits-cnn", pretrained=False).eval()
    x = torch.randn(8, 1, 8, 8)
    snn = spikecast.convert(ann, calib=(x,), timesteps=4, progress=False,
                            recipe=spikecast.Recipe(correction="none", reconstruct="off"))
    snn.config = dataclasses.replace(snn.config, time_batched=False)
    assert spikecast.load(snn.save(tmp_path / "net")).config.time_batched is False


def test_compiled_step_graph_gives_the_same_outputs():
    """config.compiled: the whole step graph through torch.compile (elementwise work fused between
    the layers, int8 kernels as opaque calls) - the same values as op by op, first step included."""
    torch.manual_seed(3)
    ann = create_model("digits-cnn", pretrained=False).eval()
    x = torch.randn(16, 1, 8, 8)
    snn = spikecast.convert(ann, calib=(x,), timesteps=8, progress=False,
                            recipe=spikecast.Recipe(correction="none", reconstruct="off"))
    fast = int8_kernels(integer_network(snn, (x,)))
    eager = fast.simulate(x[:6], [1, 4, 9])
    fast.config = dataclasses.replace(fast.config, compiled=True)
    got = fast.simulate(x[:6], [1, 4, 9])
    assert fast._compiled_step is not None
    assert all(torch.equal(eager[t], got[t]) for t in eager)
