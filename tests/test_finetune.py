"""QCFS (T = L equivalence, straight-through gradients), surrogate BPTT, the training loop's resume,
and weight quantisation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikecast
from spikecast.calibrate.thresholds import CalibrationConfig, calibrate
from spikecast.pipeline import prepare
from spikecast.nn.neuron import (IFNeuron, _binary_step, _multilevel_step, _multilevel_surrogate_step,
                                 _signed_step, _surrogate_step)
from spikecast.convert.spiking import NeuronConfig, to_spiking
from spikecast.graph.sites import site_nodes
from spikecast.quant.qcfs import DropMasks
from spikecast.quant import QCFSSite, integer_form, qcfs_thresholds, quantize_tensor, quantize_weights, to_qcfs
from spikecast.runtime.network import SimulationConfig, SpikingNetwork
from spikecast.train import FinetuneConfig, TrainConfig, finetune
from spikecast.errors import DeviceError
from spikecast.recipe import Recipe, recipe_of
from spikecast.train.loop import CHECKPOINT_FILE


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x)) + 0.5 * x.mean(1, keepdim=True)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def toy_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long() + (x[:, 0, 4:].mean((1, 2)) > 0.2).long()
    return x, y


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = Tiny().eval()
    with torch.no_grad():
        m.bn1.running_mean.uniform_(-0.2, 0.2)
        m.bn1.running_var.uniform_(0.5, 1.5)
    return m


# ------------------------------------------------------------------------------------ QCFS
@pytest.mark.parametrize("levels", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("signed", [False, True])
def test_if_neuron_at_T_equals_L_reproduces_qcfs_exactly(levels, signed):
    torch.manual_seed(levels)
    clip = torch.rand(1, 5, 1, 1) * 2 + 0.2  # per-channel clips
    x = torch.randn(64, 5, 6, 6) * 1.5
    q = QCFSSite("s", "aten.relu", None, levels, clip)(x)
    neuron = IFNeuron(clip, "s", signed=signed)
    count, total = torch.zeros_like(x), torch.zeros_like(x)
    with torch.no_grad():
        for _ in range(levels):
            out = neuron(x)
            count += torch.sign(out)  # net number of spikes
            total += out
    assert torch.equal(count, torch.round(q / clip * levels))  # spike count == QCFS level, exactly
    assert torch.allclose(total / levels, q, atol=1e-6)


def test_qcfs_layer_in_the_converted_network_spikes_exactly_its_level(tiny):
    """A layer of the converted QCFS network (the first: constant input current) fires, after
    T = L steps, exactly the QCFS network's level at every neuron."""
    levels = 4
    x = toy_data(32)[0]
    cal, _ = calibrate(prepare(tiny, x), x, CalibrationConfig(method="max"), progress=False)
    qgraph = to_qcfs(cal, levels)
    first_site = next(iter(site_nodes(qgraph)))[1]
    seen = {}
    handle = first_site.register_forward_hook(lambda m, a, out: seen.setdefault("q", out))
    qgraph(x)
    handle.remove()
    snn = SpikingNetwork(to_spiking(qcfs_thresholds(qgraph), NeuronConfig()), SimulationConfig(timesteps=levels))
    neuron = next(iter(snn.neurons().values()))
    counts = []
    hook = neuron.register_forward_hook(lambda m, a, out: counts.append(torch.sign(out)))
    snn.simulate(x, levels)
    hook.remove()
    spikes = torch.stack(counts).sum(0)
    assert torch.equal(spikes, torch.round(seen["q"].contiguous() / neuron.threshold * levels))


def test_qcfs_straight_through_gradients():
    lam, levels = 1.5, 4
    site = QCFSSite("s", "aten.relu", None, levels, lam)
    x = torch.tensor([-0.5, 0.1, 0.7, 1.2, 2.0], requires_grad=True)
    out = site(x)
    out.sum().backward()
    # d out / d x: 1 inside the clip range (floor passes the gradient straight through), 0 outside
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))
    # d out / d lambda: q/L - x/lambda inside, 1 above the clip, 0 below
    q = torch.clamp(torch.floor(x.detach() * levels / lam + 0.5), 0, levels)
    inside = (x.detach() > 0) & (x.detach() < lam)
    expected = torch.where(inside, q / levels - x.detach() / lam, (x.detach() >= lam).float())
    assert torch.allclose(site.clip.grad, expected.sum(), atol=1e-6)


def _composed_qcfs(x, lam, levels, lo, shift=0.5):
    """The QCFS site written as plain autograd ops (straight-through floor): the reference for the
    hand-written node."""
    v = torch.clamp(x / lam, lo, 1.0) * levels + shift
    return (v + (torch.floor(v) - v).detach()) / levels * lam


@pytest.mark.parametrize("bipolar", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("drop", [0.0, 0.4])
def test_qcfs_node_has_the_values_and_gradients_of_the_composed_ops(bipolar, per_channel, drop):
    g = torch.Generator().manual_seed(3)
    x0 = (torch.randn(8, 6, 5, 5, generator=g) * 1.5).contiguous(memory_format=torch.channels_last)
    x0[0, 0, 0, :3] = torch.tensor([0.0, 1.25, -1.25])  # on the clamp's edges (clip 1.25 below)
    clip = torch.linspace(0.8, 1.6, 6).view(6, 1, 1) if per_channel else torch.tensor(1.25)
    if per_channel:
        clip[0] = 1.25
    site = QCFSSite("s", "aten.relu", None, 4, clip, bipolar=bipolar)
    lo = -1.0 if bipolar else 0.0
    if drop:
        site.drop_masks = DropMasks(drop, torch.Generator().manual_seed(0))
    x = x0.clone().requires_grad_(True)
    weight = torch.randn(x0.shape, generator=g)
    out = site(x)
    (out * weight).sum().backward()
    if drop:  # the same masks again: a fresh pool drawn from the same seed
        rounded, passed = DropMasks(drop, torch.Generator().manual_seed(0))(x0)
        assert 0.3 < float(passed.mean()) < 0.5 and torch.equal(rounded + passed, torch.ones_like(x0))
    else:
        rounded, passed = torch.ones_like(x0), torch.zeros_like(x0)
    xr = x0.clone().requires_grad_(True)
    lam = clip.clone().requires_grad_(True)
    unrounded = xr if bipolar else torch.relu(xr)
    ref = _composed_qcfs(xr, lam, 4, lo) * rounded + unrounded * passed
    (ref * weight).sum().backward()
    assert torch.allclose(out, ref, atol=1e-6)
    # each value is either its level or (QDrop) the unrounded activation, exactly
    levels_out = _composed_qcfs(x0, clip, 4, lo)
    assert (out.eq(levels_out) | out.eq(unrounded.detach())).all()
    assert torch.allclose(x.grad, xr.grad, atol=1e-6)
    assert torch.allclose(site.clip.grad, lam.grad, atol=1e-4, rtol=1e-5)
    with torch.no_grad():  # the inference path: plain ops, same values
        site.drop_masks = DropMasks(drop, torch.Generator().manual_seed(0)) if drop else None
        assert torch.allclose(site(x0), out.detach(), atol=1e-6)


def test_qcfs_graph_needs_thresholds_and_keeps_its_input(tiny):
    x = toy_data(16)[0]
    normalised = prepare(tiny, x)
    with pytest.raises(ValueError, match="no threshold"):
        to_qcfs(normalised, 4)
    cal, _ = calibrate(normalised, x, CalibrationConfig(method="max"), progress=False)
    q = to_qcfs(cal, 4)
    assert all(isinstance(s, QCFSSite) for _, s in site_nodes(q))
    assert not any(isinstance(s, QCFSSite) for _, s in site_nodes(cal))
    with pytest.raises(ValueError, match="levels"):
        QCFSSite("s", "relu", None, 0, 1.0)


# ------------------------------------------------------------------------------------ surrogate
@pytest.mark.parametrize("signed", [False, True])
def test_surrogate_step_has_the_values_of_the_inference_step(signed):
    torch.manual_seed(1)
    theta, bias = torch.tensor(0.8), torch.tensor(0.05)
    v = torch.full((500,), 0.4)
    emitted = torch.zeros(500) if signed else None
    v2, e2 = v.clone(), (emitted.clone() if signed else None)
    for _ in range(12):
        current = torch.randn(500) * 0.6
        if signed:
            out, v, emitted = _signed_step(v, emitted, current, bias, theta)
        else:
            out, v = _binary_step(v, current, bias, theta)
        out2, v2, e2 = _surrogate_step(v2, e2, current.requires_grad_(), bias, theta)
        assert torch.equal(out, out2.detach()) and torch.equal(v, v2.detach())


@pytest.mark.parametrize("signed,bipolar", [(False, False), (True, False), (False, True)])
def test_multilevel_surrogate_step_has_the_values_of_the_inference_step(signed, bipolar):
    torch.manual_seed(2)
    theta, bias = torch.tensor(0.7), torch.tensor(0.02)
    v = torch.full((400,), 0.35)
    emitted = torch.zeros(400) if signed else None
    v2, e2 = v.clone(), (emitted.clone() if signed else None)
    grads = 0.0
    for _ in range(10):
        current = (torch.randn(400) * 1.5).requires_grad_()
        out, v, emitted = _multilevel_step(v, emitted, current.detach(), bias, theta, 3, bipolar)
        out2, v2, e2 = _multilevel_surrogate_step(v2, e2, current, bias, theta, 3, bipolar)
        assert torch.equal(out, out2.detach()) and torch.equal(v, v2.detach())
        assert signed == (e2 is not None) and (not signed or torch.equal(emitted, e2))
        out2.sum().backward()
        grads += float(current.grad.abs().sum())
    assert grads > 0


def test_surrogate_gradient_is_triangular_around_the_threshold():
    theta = torch.tensor(2.0)
    current = torch.tensor([0.0, 1.0, 1.5, 2.5, 5.0], requires_grad=True)
    out, _, _ = _surrogate_step(torch.zeros(5), None, current, torch.tensor(0.0), theta)
    out.sum().backward()
    # d out/d v = theta * max(0, 1 - |v - theta| / theta) / theta
    expected = torch.clamp(1 - (current.detach() - 2.0).abs() / 2.0, min=0)
    assert torch.allclose(current.grad, expected)


def test_surrogate_bptt_trains_and_truncation_bounds_the_graph(tiny):
    x, y = toy_data(64)
    snn = spikecast.convert(tiny, calib=x, timesteps=4, correction="none", progress=False)
    before = [p.clone() for p in snn.graph_module.parameters()]
    cfg = FinetuneConfig(method="surrogate", timesteps=4, bptt_window=2,
                         train=TrainConfig(epochs=1, lr=0.05, batch_size=32))
    tuned = finetune(snn, (x, y), cfg, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, snn.graph_module.parameters()))  # input untouched
    changed = [not torch.equal(a, b) for a, b in zip(before, tuned.graph_module.parameters())]
    assert all(changed)  # every weight got a gradient through the spikes
    assert not any(p.requires_grad for p in tuned.parameters())
    assert tuned.metadata["finetune"]["method"] == "surrogate"
    out = tuned.simulate(x[:4], 4)
    assert out.shape == (4, 3) and torch.isfinite(out).all()


def test_anytime_loss_trains_at_every_multiple_of_the_budget(tiny, monkeypatch):
    x, y = toy_data(32)
    snn = spikecast.convert(tiny, calib=x, timesteps=3, correction="none", progress=False)
    losses, runs = [], []
    real_loss, real_steps = F.cross_entropy, SpikingNetwork.steps
    monkeypatch.setattr(F, "cross_entropy", lambda logits, target: losses.append(1) or real_loss(logits, target))
    monkeypatch.setattr(SpikingNetwork, "steps",
                        lambda self, x, t, **kw: runs.append(int(t)) or real_steps(self, x, t, **kw))
    for anytime in (1, 3):
        losses.clear(), runs.clear()
        cfg = FinetuneConfig(method="surrogate", timesteps=3, anytime=anytime,
                             train=TrainConfig(epochs=1, lr=0.01, batch_size=32))
        tuned = finetune(snn, (x, y), cfg, progress=False)
        assert runs[0] == 3 * anytime and len(losses) == anytime  # one batch: the loss at T, 2T, ... anytime*T
        assert tuned.config.timesteps == 3  # the budget stays T
    with pytest.raises(ValueError, match="anytime must be a positive integer"):
        FinetuneConfig(method="surrogate", anytime=0)


def _kl_to(teacher, net, x, T=None):
    with torch.no_grad():
        out = net.simulate(x, T) if T else net(x)
        return float(F.kl_div(F.log_softmax(out, -1), F.log_softmax(teacher(x), -1), log_target=True,
                              reduction="batchmean"))


@pytest.mark.parametrize("method", ["qcfs", "surrogate"])
def test_distillation_alone_ignores_the_labels_and_moves_towards_the_teacher(tiny, method):
    x, y = toy_data(96)
    wrong = (y + 1) % 3
    start = tiny if method == "qcfs" else spikecast.convert(tiny, calib=x, timesteps=2, correction="none",
                                                            progress=False)
    cfg = FinetuneConfig(method=method, levels=2, timesteps=2, correction="none", distill=1.0, distill_temperature=2.0,
                         train=TrainConfig(epochs=2, lr=0.02, batch_size=32))
    kw = dict(progress=False, teacher=tiny, calib=x)
    a, b = finetune(start, (x, y), cfg, **kw), finetune(start, (x, wrong), cfg, **kw)
    for (k, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(u, v), k  # distill=1: the labels do not enter the loss
    assert a.metadata["finetune"]["config"]["distill"] == 1.0
    mixed = [finetune(start, (x, labels), replace(cfg, distill=0.5), **kw) for labels in (y, wrong)]
    assert any(not torch.equal(u, v) for u, v in zip(mixed[0].state_dict().values(), mixed[1].state_dict().values()))
    if method == "surrogate":  # trained on the teacher alone, the SNN's outputs come closer to the teacher's
        assert _kl_to(tiny, a, x, 2) < _kl_to(tiny, start, x, 2)


def test_distillation_needs_a_teacher_and_a_weight_in_range(tiny, tmp_path):
    x, y = toy_data(32)
    snn = spikecast.convert(tiny, calib=x, timesteps=2, correction="none", progress=False)
    with pytest.raises(ValueError, match="pass teacher="):
        finetune(snn, (x, y), method="surrogate", timesteps=2, distill=0.5, epochs=1, progress=False)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="distill must be a weight"):
            FinetuneConfig(distill=bad)
    with pytest.raises(ValueError, match="distill_temperature must be > 0"):
        FinetuneConfig(distill=0.5, distill_temperature=0.0)
    # a checkpoint of a distilled run is not resumed by an undistilled one
    ckpt = tmp_path / "ckpt"
    cfg = FinetuneConfig(method="surrogate", timesteps=2, correction="none", distill=0.5,
                         train=TrainConfig(epochs=1, lr=0.01, batch_size=32))
    finetune(snn, (x, y), cfg, teacher=tiny, checkpoint_dir=ckpt, progress=False)
    with pytest.raises(ValueError, match="different fine-tuning run"):
        finetune(snn, (x, y), replace(cfg, distill=0.0), checkpoint_dir=ckpt, progress=False)


# ------------------------------------------------------------------------------------ loop: resume
@pytest.mark.parametrize("method", ["qcfs", "surrogate"])
def test_run_interrupted_inside_an_epoch_resumes_from_that_batch_to_the_same_weights(tiny, tmp_path, method):
    x, y = toy_data(96)  # 3 batches per epoch
    cfg = FinetuneConfig(method=method, levels=4, timesteps=2, correction="none",
                         train=TrainConfig(epochs=3, lr=0.02, batch_size=32))
    full = finetune(tiny, (x, y), cfg, progress=False)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt, match="epoch 2, batch 2"):  # 1 + 2/3 epochs: step 5 of 9
        finetune(tiny, (x, y), cfg, checkpoint_dir=ckpt, progress=False, stop_after_epoch=5 / 3, checkpoint_minutes=0)
    state = torch.load(ckpt / CHECKPOINT_FILE, weights_only=True)
    assert (state["epoch"], state["batch"], state["step"], len(state["history"])) == (1, 2, 5, 1)
    resumed = finetune(tiny, (x, y), cfg, checkpoint_dir=ckpt, progress=False)
    history = resumed.metadata["finetune"]["history"]
    assert [e["epoch"] for e in history] == [1, 2, 3]
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    # the resumed epoch's loss and accuracy count its batches from before the interruption too
    assert history[1]["train_accuracy"] == full.metadata["finetune"]["history"][1]["train_accuracy"]
    assert history[1]["loss"] == pytest.approx(full.metadata["finetune"]["history"][1]["loss"])
    # a finished run's checkpoint is an epoch's: resuming it trains nothing more
    assert "batch" not in torch.load(ckpt / CHECKPOINT_FILE, weights_only=True)


def test_checkpoints_only_after_epochs_lose_the_unfinished_one(tiny, tmp_path):
    x, y = toy_data(96)
    cfg = FinetuneConfig(method="qcfs", levels=4, correction="none",
                         train=TrainConfig(epochs=2, lr=0.02, batch_size=32))
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny, (x, y), cfg, checkpoint_dir=ckpt, progress=False, stop_after_epoch=0.67,
                 checkpoint_minutes=None)
    assert not (ckpt / CHECKPOINT_FILE).exists()
    with pytest.raises(ValueError, match="checkpoint_minutes must be >= 0"):
        finetune(tiny, (x, y), cfg, progress=False, checkpoint_minutes=-1)


@pytest.mark.parametrize("method", ["qcfs", "surrogate"])
def test_interrupted_finetune_resumes_to_the_same_weights(tiny, tmp_path, method):
    x, y = toy_data(96)
    cfg = FinetuneConfig(method=method, levels=4, timesteps=2, correction="none",
                         train=TrainConfig(epochs=3, lr=0.02, batch_size=32))
    full = finetune(tiny, (x, y), cfg, progress=False)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny, (x, y), cfg, checkpoint_dir=ckpt, progress=False, stop_after_epoch=1)
    assert (ckpt / CHECKPOINT_FILE).is_file()
    state = torch.load(ckpt / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 1
    resumed = finetune(tiny, (x, y), cfg, checkpoint_dir=ckpt, progress=False)
    assert len(resumed.metadata["finetune"]["history"]) == 3
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    if method == "qcfs":  # the correction runs after training: another correction resumes the same weights
        again = finetune(tiny, (x, y), replace(cfg, correction="light", correction_form="current"),
                         checkpoint_dir=ckpt, progress=False, calib=x)
        for (k, a), (_, b) in zip(full.state_dict().items(), again.state_dict().items()):
            if "sites." not in k:  # the neurons carry the new correction
                assert torch.equal(a, b), k
    # a different run must not pick up this checkpoint
    other = FinetuneConfig(method=method, levels=8, timesteps=3, correction="none",
                           train=TrainConfig(epochs=3, lr=0.02, batch_size=32))
    with pytest.raises(ValueError, match="different fine-tuning run"):
        finetune(tiny, (x, y), other, checkpoint_dir=ckpt, progress=False)


def test_qcfs_finetune_improves_the_snn_at_T_equals_L(tiny):
    x, y = toy_data(256, seed=3)
    xv, yv = toy_data(256, seed=4)
    ptq = spikecast.convert(tiny, calib=x, timesteps=2, correction="none", progress=False)
    tuned = finetune(tiny, (x, y), levels=2, correction="none", epochs=4, lr=0.05, batch_size=32, val=(xv, yv),
                     progress=False)
    acc = lambda net: float((net.simulate(xv, 2).argmax(-1) == yv).float().mean())  # noqa: E731
    assert acc(tuned) > acc(ptq)
    assert tuned.config.timesteps == 2
    assert "val_accuracy" in tuned.metadata["finetune"]["history"][-1]


def test_finetune_rejects_bad_settings(tiny):
    with pytest.raises(TypeError, match="unknown setting"):
        finetune(tiny, toy_data(16), epoch=2)
    with pytest.raises(ValueError, match="method"):
        FinetuneConfig(method="magic")
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment="rotate")
    with pytest.raises(TypeError, match="SpikingNetwork"):
        x, y = toy_data(16)
        finetune(spikecast.convert(tiny, calib=x, correction="none", progress=False), (x, y), FinetuneConfig())


def test_finetune_honours_its_device_and_records_the_convert_schema(tiny):
    x, y = toy_data(32)
    with pytest.raises(DeviceError, match="cuda:99"):
        finetune(tiny, (x, y), device="cuda:99", epochs=1, progress=False)
    tuned = finetune(tiny, (x, y), device="cpu", levels=2, correction="light", epochs=1, batch_size=16,
                     val=(x, y), val_batch_size=5, progress=False, calib=(b for b in [x[:20], x[20:]]))
    assert recipe_of(tuned) == Recipe(timesteps=2, correction="light", correction_form="charge",
                                      signed=FinetuneConfig().signed, reconstruct="off")
    assert {"source", "recipe", "calibration_set", "sites", "correction", "seconds", "finetune"} <= set(tuned.metadata)
    assert tuned.metadata["calibration_set"]["images_read"] == 32
    assert "val_accuracy" in tuned.metadata["finetune"]["history"][-1]


# ------------------------------------------------------------------------------------ weights
@pytest.mark.parametrize("bits", [8, 4])
def test_symmetric_per_channel_weight_quantisation(bits):
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3) * torch.tensor([0.01, 0.1, 1, 3, 0, 0.5]).view(6, 1, 1, 1)
    qw = quantize_tensor(w, bits)
    qmax = 2 ** (bits - 1) - 1
    assert qw.q.dtype == torch.int8 and int(qw.q.abs().max()) <= qmax
    assert torch.equal(qw.q[4], torch.zeros_like(qw.q[4]))  # an all-zero channel stays zero
    err = (qw.dequantize() - w).abs().reshape(6, -1).amax(1)
    assert (err <= qw.scale / 2 + 1e-7).all()  # rounding: at most half a step per channel
    assert torch.allclose(qw.scale[:4], w.reshape(6, -1).abs().amax(1)[:4] / qmax)


def test_quantised_snn_stays_close_and_integer_form_gives_the_same_spikes(tiny):
    x = toy_data(64)[0]
    snn = spikecast.convert(tiny, calib=x, timesteps=8, correction="none", progress=False)
    q8 = quantize_weights(snn, 8)
    assert q8.metadata["weight_quantization"]["bits"] == 8
    ref, out = snn.simulate(x, 8), q8.simulate(x, 8)
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    # integer form: the quantised weight is exactly scale * int, and the neuron's threshold in
    # accumulator units times the scale is its threshold
    form = integer_form(q8)
    assert form, "the first conv feeds a neuron directly"
    gm = q8.graph_module
    conv_weight = [n for n in gm.graph.nodes if n.op == "get_attr" and "conv1" in str(n.target)
                   and str(n.target).endswith("weight")][0]
    weight = dict(gm.named_parameters(), **dict(gm.named_buffers()))[conv_weight.target]
    name, entry = next(iter(form.items()))
    scale = entry["scale"].view(-1, 1, 1, 1)
    assert torch.equal(entry["weight"].float() * scale, weight)
    neuron = q8.neurons()[name]
    per_channel = torch.broadcast_to(neuron.threshold.reshape(-1), (len(scale),))  # one per layer or per channel
    assert torch.allclose(entry["threshold"].reshape(-1) * entry["scale"], per_channel)
