"""ONNX export: ANN round trip, int8 QDQ baseline, and the explicit-state SNN step graph vs simulate."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import spikecast  # noqa: E402
from spikecast.pipeline import prepare  # noqa: E402
from spikecast.nn.maxpool import SpikingMaxPool  # noqa: E402
from spikecast.errors import CalibrationError  # noqa: E402
from spikecast.export import (METADATA_KEY, STEP_FORMAT, OnnxSpikingNetwork, export_ann, export_snn_step,  # noqa: E402
                              quantize_ann_int8, run_ann)

pytestmark = pytest.mark.usefixtures("single_thread")

X = torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


class TinyResNet(nn.Module):
    """conv-BN-ReLU, a residual block, max-pool, linear: the op mix of the zoo CNNs, tiny."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 5)
        for bn in (self.bn1, self.bn2):  # non-trivial running statistics, so folding BN matters
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.1, 0.1)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(h + self.bn2(self.conv2(h)))
        h = F.max_pool2d(h, 2)
        return self.fc(torch.flatten(h, 1))


class PoolNet(nn.Module):
    """A max-pool fed by a spiking layer (time-varying input): it becomes a SpikingMaxPool."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 4)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(self.conv2(h), 2)
        return self.fc(F.relu(h).flatten(1))


def convert(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return spikecast.convert(model, calib=X[:16], progress=False, **kw)


# ---------------------------------------------------------------------------- ANN
def test_ann_round_trip_module_and_graph(tmp_path):
    model = TinyResNet().eval()
    with torch.no_grad():
        ref = model(X[:7])
    path = export_ann(model, tmp_path / "ann.onnx", X[:2])
    m = onnx.load(str(path))
    assert [i.name for i in m.graph.input] == ["x"] and [o.name for o in m.graph.output] == ["logits"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    out = run_ann(path, X[:7], batch_size=3)  # batches of 3, 3, 1: not the example's 2
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5), float((out - ref).abs().max())
    # the normalised fx graph of convert (BN folded, sym-size views) exports with a dynamic batch too
    graph = prepare(model, X[:2])
    path2 = export_ann(graph, tmp_path / "graph.onnx", X[:2])
    assert torch.allclose(run_ann(path2, X[:7]), ref, atol=1e-5)


def test_int8_qdq_model_runs_and_tracks_fp32(tmp_path):
    model = TinyResNet().eval()
    fp32 = export_ann(model, tmp_path / "ann.onnx", X[:2])
    int8 = quantize_ann_int8(fp32, tmp_path / "ann-int8.onnx", X[:16], images=12)
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    ref, out = run_ann(fp32, X), run_ann(int8, X)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert float((out - ref).norm() / ref.norm()) < 0.1
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.8
    # calibration from an iterable of (x, y) batches works the same way
    int8b = quantize_ann_int8(fp32, tmp_path / "b.onnx", [(X[:8], None), (X[8:16], None)], per_channel=False)
    assert torch.isfinite(run_ann(int8b, X[:4])).all()


def test_int8_refuses_empty_calibration(tmp_path):
    fp32 = export_ann(TinyResNet().eval(), tmp_path / "ann.onnx", X[:2])
    for empty in (torch.zeros(0, 3, 8, 8), []):
        with pytest.raises(CalibrationError, match="empty"):
            quantize_ann_int8(fp32, tmp_path / "q.onnx", empty)
    assert not (tmp_path / "q.onnx").exists()


# ---------------------------------------------------------------------------- SNN step graph
@pytest.fixture(scope="module", params=["binary", "signed"])
def snn_and_onnx(request, tmp_path_factory):
    signed = request.param == "signed"
    snn = convert(PoolNet().eval(), signed=signed, per_channel=True, correction="light", timesteps=12)
    neurons = list(snn.neurons().values())
    assert all(n.signed == signed and n.threshold.numel() > 1 for n in neurons)  # per-channel thresholds
    assert all(n.bias is not None and n.v_offset is not None for n in neurons)  # light calibration
    assert any(isinstance(m, SpikingMaxPool) for m in snn.stateful_modules())
    path = export_snn_step(snn, tmp_path_factory.mktemp("snn") / "step.onnx", example=X[:2])
    return snn, OnnxSpikingNetwork(path, threads=1)


def test_step_graph_matches_simulate(snn_and_onnx):
    snn, net = snn_and_onnx
    x = X[:9]  # not the example's batch of 2
    ref, out = snn.simulate(x, 16), net.simulate(x, 16)
    assert isinstance(out, torch.Tensor) and out.shape == ref.shape
    assert float((out - ref).abs().max()) <= 1e-4
    assert torch.equal(out.argmax(1), ref.argmax(1))
    # the comparison is not vacuous: the mean output changes over time
    assert not torch.allclose(snn.simulate(x, 1), ref, atol=1e-3)


def test_budgets_and_callback_match_simulate(snn_and_onnx):
    snn, net = snn_and_onnx
    budgets = [16, 1, 5, 5]
    ref, out = snn.simulate(X[:5], budgets), net.simulate(X[:5], budgets)
    assert sorted(out) == [1, 5, 16] == sorted(ref)
    for t in ref:
        assert float((out[t] - ref[t]).abs().max()) <= 1e-4, t
    seen = []
    net.simulate(X[:5], 3, callback=lambda t, o: seen.append(t))
    assert seen == [1, 2, 3]
    assert torch.equal(net(X[:5]), net.simulate(X[:5], snn.config.timesteps))
    for bad in ([], [0], 0):
        with pytest.raises(ValueError):
            net.simulate(X[:2], bad)


def test_metadata_describes_the_states(snn_and_onnx):
    snn, net = snn_and_onnx
    meta = json.loads(onnx.load(str(net.path)).metadata_props[0].value)
    assert onnx.load(str(net.path)).metadata_props[0].key == METADATA_KEY
    assert meta["format"] == STEP_FORMAT and meta["spikecast_version"] == spikecast.__version__
    assert meta["timesteps"] == snn.config.timesteps == net.timesteps
    signed = next(iter(snn.neurons().values())).signed
    kinds = [s["kind"] for s in meta["states"]]
    assert kinds.count("v") == len(snn.neurons()) and kinds.count("acc") == kinds.count("pooled") == 1
    assert kinds.count("emitted") == (len(snn.neurons()) if signed else 0)
    assert {s["site"] for s in meta["states"] if s["kind"] == "v"} == set(snn.neurons())
    inputs = net.session.get_inputs()
    assert [i.name for i in inputs] == ["x", "start", *(s["name"] for s in meta["states"])]
    assert [o.name for o in net.session.get_outputs()] == ["out", *(s["name"] + "_next" for s in meta["states"])]
    for state, spec in zip(net.states(3), meta["states"]):
        assert state.shape == (3, *spec["shape"]) and state.dtype == np.dtype(spec["dtype"]) and not state.any()


def test_start_resets_whatever_state_is_passed(snn_and_onnx):
    snn, net = snn_and_onnx
    x = X[:3].numpy()
    zeros = net.states(3)
    junk = [np.full_like(s, 7.0) for s in zeros]
    out_zero, new_zero = net.step(x, zeros, start=True)
    out_junk, new_junk = net.step(x, junk, start=True)
    assert np.array_equal(out_zero, out_junk)
    assert all(np.array_equal(a, b) for a, b in zip(new_zero, new_junk))
    # without start the state is used as given
    out_cont, _ = net.step(x, junk, start=False)
    assert not np.array_equal(out_cont, out_zero)


def test_binary_network_without_calibration_matches_too(tmp_path):
    snn = convert(TinyResNet().eval(), signed=False, correction="none", thresholds="max", timesteps=8)
    net = OnnxSpikingNetwork(export_snn_step(snn, tmp_path / "s.onnx", example=X[:2]))
    ref, out = snn.simulate(X[:6], [4, 16]), net.simulate(X[:6], [4, 16])
    for t in (4, 16):
        assert float((out[t] - ref[t]).abs().max()) <= 1e-4


# ---------------------------------------------------------------------------- compensated (transformer) SNNs
class SoftmaxViT(nn.Module):
    """Patch embedding, class token, pre-norm blocks with explicit softmax attention (Q·Kᵀ,
    softmax, A·V) and a GELU MLP, final LayerNorm, token head: a timm ViT's ops, written out."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 5, dim) * 0.5)
        self.norm1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(self.norm(x)[:, 0])


def _timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=8, patch_size=4, in_chans=3, num_classes=5, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0)


@pytest.mark.parametrize("model,levels", [("softmax", 1), ("timm", 1), ("timm", 2)])
def test_compensated_vit_step_graph_matches_simulate(tmp_path, model, levels):
    from spikecast.convert.compensation import compensated_nodes

    ann = (SoftmaxViT() if model == "softmax" else _timm_vit()).eval()
    snn = convert(ann, thresholds="max", correction="none", levels=levels, timesteps=8)
    ops = {str(n.target) for n in compensated_nodes(snn._step)}
    expected = {"aten.softmax.int", "aten.gelu.default"} if model == "softmax" else {"aten.gelu.default"}
    assert expected <= ops and any("layer_norm" in o for o in ops), ops
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no size baked in, nothing refused
        path = export_snn_step(snn, tmp_path / "vit.onnx", example=X[:2])
    net = OnnxSpikingNetwork(path, threads=1)
    # running sums / previous values per sample, step counts as int64 scalars shared by the batch
    kinds = {(s.kind, s.batched, s.dtype) for s in net.state_specs}
    assert {("v", True, "float32"), ("sum", True, "float32"), ("previous", True, "float32"),
            ("t", False, "int64")} <= kinds
    assert all(s.shape == [] for s in net.state_specs if not s.batched)
    x = X[16:]  # batch 8, not the example's 2
    ref, out = snn.simulate(x, [1, 8]), net.simulate(x, [1, 8])
    for t in (1, 8):
        assert float((out[t] - ref[t]).abs().max()) <= 1e-4, t
        assert torch.equal(out[t].argmax(1), ref[t].argmax(1))
    assert not torch.allclose(ref[1], ref[8], atol=1e-3)  # the outputs do change over the steps
    # start re-initialises every state, the step counters included
    zeros = net.states(3)
    junk = [np.full_like(s, 7) for s in zeros]
    (a, new_a), (b, new_b) = net.step(x[:3].numpy(), zeros, start=True), net.step(x[:3].numpy(), junk, start=True)
    assert np.array_equal(a, b) and all(np.array_equal(p, q) for p, q in zip(new_a, new_b))
    assert all(int(s) == 1 for s, spec in zip(new_a, net.state_specs) if spec.kind == "t")


# ---------------------------------------------------------------------------- refusals
def test_masked_neurons_and_poisson_input_are_refused(tmp_path):
    masked = convert(PoolNet().eval(), mask_ratio=0.2, correction="none", thresholds="max")
    name = next(iter(masked.neurons()))
    with pytest.raises(ValueError, match="mask") as err:
        export_snn_step(masked, tmp_path / "m.onnx", example=X[:2])
    assert repr(name) in str(err.value)
    poisson = convert(PoolNet().eval(), encoding="poisson", correction="none", thresholds="max")
    with pytest.raises(ValueError, match="poisson"):
        export_snn_step(poisson, tmp_path / "p.onnx", example=X[:2])
    assert not any(tmp_path.iterdir())


def test_driver_rejects_a_plain_onnx_model(tmp_path):
    path = export_ann(TinyResNet().eval(), tmp_path / "ann.onnx", X[:2])
    with pytest.raises(ValueError, match="not a spikecast step graph"):
        OnnxSpikingNetwork(path)
