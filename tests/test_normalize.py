"""Tests of stage 2 (graph normalisation) and of end-to-end conversion of every supported form.

* BatchNorm folding is exact (to float rounding) and removes the BN op; a BN with no foldable
  predecessor stays and is still exact.
* Every functional spelling of ReLU / pooling / reshaping / residual ops converts, with one IF
  neuron per ReLU-like op, and the SNN approximates the ANN at large T.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikecast
from spikecast import IFNeuron
from spikecast.calibrate.thresholds import CalibrationConfig, calibrate
from spikecast.nn.maxpool import SpikingMaxPool
from spikecast.convert.spiking import to_spiking
from spikecast.graph import ops
from spikecast.graph.normalize import fold_batchnorm, normalize, remove_identities
from spikecast.graph.sites import ActivationSite, site_nodes
from spikecast.graph.trace import trace
from spikecast.runtime.network import SpikingNetwork

aten = torch.ops.aten


pytestmark = pytest.mark.usefixtures("single_thread")


BN_OPS = {aten._native_batch_norm_legit_no_training, aten.batch_norm, aten._native_batch_norm_legit,
          aten.native_batch_norm}


def randomize_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 2 + 0.25)
        if bn.affine:
            bn.weight.copy_(torch.randn(bn.num_features, generator=g))
            bn.bias.copy_(torch.randn(bn.num_features, generator=g))
    return bn


def bn_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and ops.packet(n) in BN_OPS]


def graph_ops(gm):
    return [ops.packet(n) for n in gm.graph.nodes if n.op == "call_function"]


# ============================================================================ BatchNorm folding
class ConvBN(nn.Module):
    def __init__(self, bias: bool, affine: bool, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 5, 3, padding=1, bias=bias)
        self.bn = randomize_bn(nn.BatchNorm2d(5, affine=affine, eps=1e-3), seed)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(5, 4, 1, bias=not bias)
        self.bn2 = randomize_bn(nn.BatchNorm2d(4, affine=affine), seed + 1)

    def forward(self, x):
        return self.bn2(self.conv2(self.relu(self.bn(self.conv(x)))))


class LinearBN(nn.Module):
    def __init__(self, bias: bool, affine: bool):
        super().__init__()
        torch.manual_seed(1)
        self.fc1 = nn.Linear(12, 7, bias=bias)
        self.bn = randomize_bn(nn.BatchNorm1d(7, affine=affine), 3)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_conv_bn_folding_is_exact(bias, affine):
    model = ConvBN(bias, affine, seed=int(bias) + 2 * int(affine)).eval()
    x = torch.randn(6, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    traced = trace(model, x)
    assert len(bn_nodes(traced)) == 2  # the traced graph does have the BNs
    folded = fold_batchnorm(traced)
    assert bn_nodes(folded) == []
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(traced(x), ref, atol=1e-5, rtol=1e-5)
        assert torch.allclose(folded(x), ref, atol=1e-5, rtol=1e-5)
        # the full pipeline as well
        assert torch.allclose(normalize(traced)(x), ref, atol=1e-5, rtol=1e-5)
    # the folding changed the weights (BN stats are not the identity) but not the input graph
    assert len(bn_nodes(traced)) == 2
    assert torch.allclose(traced(x), ref, atol=1e-5, rtol=1e-5)
    folded_w = dict(folded.named_parameters()) | dict(folded.named_buffers())
    assert not torch.allclose(folded_w["conv.weight"], model.conv.weight)
    # the folded bias exists even when the conv had none
    convs = [n for n in folded.graph.nodes if n.op == "call_function" and ops.packet(n) is aten.conv2d]
    assert all(len(n.args) > 2 and n.args[2] is not None for n in convs)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_linear_bn1d_folding_is_exact(bias, affine):
    model = LinearBN(bias, affine).eval()
    x = torch.randn(10, 12, generator=torch.Generator().manual_seed(1))
    gm = normalize(trace(model, x))
    assert bn_nodes(gm) == []
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-5, rtol=1e-5)


class BNAfterCat(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.bn = randomize_bn(nn.BatchNorm2d(8), 5)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.head(F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))


class BNFirst(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.bn0 = randomize_bn(nn.BatchNorm2d(3), 6)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(F.relu(self.bn0(x)))


class DenseLayer(nn.Module):
    """DenseNet pre-activation order: BN -> ReLU -> conv, then concatenation."""

    def __init__(self, cin, growth, seed):
        super().__init__()
        self.norm = randomize_bn(nn.BatchNorm2d(cin), seed)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(self.relu(self.norm(x)))], 1)


class TinyDenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stem_relu = nn.ReLU()
        self.layer1 = DenseLayer(4, 4, 10)
        self.layer2 = DenseLayer(8, 4, 11)
        self.norm_final = randomize_bn(nn.BatchNorm2d(12), 12)
        self.fc = nn.Linear(12, 5, bias=False)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem_relu(self.stem(x))))
        x = F.relu(self.norm_final(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SharedConvBN(nn.Module):
    """The conv feeds the BN and something else: folding would change the other user."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = randomize_bn(nn.BatchNorm2d(4), 7)

    def forward(self, x):
        y = self.conv(x)
        return F.relu(self.bn(y)) + y


@pytest.mark.parametrize("model_cls, kept", [(BNAfterCat, 1), (BNFirst, 1), (TinyDenseNet, 3), (SharedConvBN, 1)])
def test_unfoldable_bn_is_kept_and_exact(model_cls, kept):
    model = model_cls().eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    gm = normalize(trace(model, x))
    assert len(bn_nodes(gm)) == kept
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-5, rtol=1e-5)


def test_kept_bn_runs_in_the_snn():
    """DenseNet order: BNs inside the spiking part are per-step affine maps; the SNN still works."""
    model = TinyDenseNet().eval()
    x = torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    snn = spikecast.convert(model, calib=x, thresholds="max", progress=False)
    assert len(bn_nodes(snn.graph_module)) == 3
    assert len(all_neurons(snn)) == 4  # stem, two dense layers, final
    check_close(model, snn, x[:4], T=256)


def test_remove_identities_drops_dropout():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.drop = nn.Dropout(0.5)
            self.drop2d = nn.Dropout2d(0.3)

        def forward(self, x):
            return self.drop2d(self.drop(F.relu(self.conv(x))))

    model = M().eval()
    x = torch.randn(2, 3, 4, 4)
    gm = remove_identities(trace(model, x))
    assert not any(p in ops.DROPOUTS | {aten.clone} for p in graph_ops(gm))
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))


# ============================================================================ functional forms
def all_neurons(snn):
    return [m for m in snn.graph_module.modules() if isinstance(m, IFNeuron)]


def cosine(a, b):
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def check_close(model, snn, x, T, min_cos=0.999, max_rel=0.02):
    """The SNN at T steps approximates the ANN, and much better than at 8 steps."""
    with torch.no_grad():
        ref = model(x)
    outs = snn.simulate(x, [8, T])
    out = outs[T]
    assert out.shape == ref.shape
    rel = {t: float((o - ref).norm() / ref.norm()) for t, o in outs.items()}
    assert cosine(out, ref) > min_cos, f"cosine {cosine(out, ref):.5f}"
    assert rel[T] < max_rel, f"relative error {rel}"
    assert rel[T] < 0.5 * rel[8], f"no convergence with T: {rel}"
    return out, ref


class FormNet(nn.Module):
    """conv1 -> <form> -> head; `body(self, x)` writes the forward with the op under test."""

    def __init__(self, body, c=6, fc_in=6, **modules):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.fc = nn.Linear(fc_in, 5, bias=False)  # no bias: the output is all signal
        for name, mod in modules.items():
            self.add_module(name, mod)
        self._body = body

    def forward(self, x):
        return self._body(self, x)


def gap_fc(m, h):
    return m.fc(h.mean((2, 3)))


def _residual(m, x):
    h = F.relu(m.conv1(x))
    out = m.conv2(h)
    out += h
    out = F.relu(out)
    return gap_fc(m, out)


FORMS = {
    # name: (body, n_relu_like, extra modules, FormNet kwargs)
    "F.relu": (lambda m, x: gap_fc(m, F.relu(m.conv2(F.relu(m.conv1(x))))), 2, {}, {}),
    "F.relu_": (lambda m, x: gap_fc(m, F.relu_(m.conv2(F.relu_(m.conv1(x))))), 2, {}, {}),
    "torch.relu": (lambda m, x: gap_fc(m, torch.relu(m.conv2(torch.relu(m.conv1(x))))), 2, {}, {}),
    "nn.ReLU(inplace)": (lambda m, x: gap_fc(m, m.act2(m.conv2(m.act1(m.conv1(x))))), 2,
                         {"act1": nn.ReLU(inplace=True), "act2": nn.ReLU(inplace=True)}, {}),
    "F.pad": (lambda m, x: gap_fc(m, F.relu(m.conv2(F.pad(F.relu(m.conv1(x)), (1, 2, 0, 1))))), 2, {}, {}),
    "slicing": (lambda m, x: gap_fc(m, F.relu(m.conv2(F.relu(m.conv1(x))[:, :, ::2, ::2]))), 2, {}, {}),
    "F.avg_pool2d": (lambda m, x: gap_fc(m, F.relu(m.conv2(F.avg_pool2d(F.relu(m.conv1(x)), 2)))), 2, {}, {}),
    "nn.AdaptiveAvgPool2d": (lambda m, x: m.fc(m.gap(F.relu(m.conv2(F.relu(m.conv1(x))))).flatten(1)), 2,
                             {"gap": nn.AdaptiveAvgPool2d(1)}, {}),
    "F.adaptive_avg_pool2d": (lambda m, x: m.fc(F.adaptive_avg_pool2d(F.relu(m.conv2(F.relu(m.conv1(x)))),
                                                                    (2, 1)).flatten(1)), 2, {}, {"fc_in": 12}),
    "torch.flatten": (lambda m, x: m.fc(torch.flatten(F.avg_pool2d(F.relu(m.conv2(F.relu(m.conv1(x)))), 4), 1)),
                      2, {}, {"fc_in": 24}),
    "view": (lambda m, x: (lambda h: m.fc(h.view(h.size(0), -1)))(
        F.avg_pool2d(F.relu(m.conv2(F.relu(m.conv1(x)))), 4)), 2, {}, {"fc_in": 24}),
    "out += shortcut": (_residual, 2, {}, {}),
    "torch.cat": (lambda m, x: (lambda h: gap_fc(m, F.relu(m.conv3(torch.cat([h, F.relu(m.conv2(h))], 1)))))(
        F.relu(m.conv1(x))), 3, {"conv3": nn.Conv2d(12, 6, 1)}, {}),
    "nn.Dropout": (lambda m, x: gap_fc(m, m.drop(F.relu(m.conv2(m.drop(F.relu(m.conv1(x))))))), 2,
                   {"drop": nn.Dropout(0.5)}, {}),
    "nn.Identity": (lambda m, x: gap_fc(m, m.ident(F.relu(m.conv2(m.ident(F.relu(m.conv1(x))))))), 2,
                    {"ident": nn.Identity()}, {}),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_functional_form_converts(form):
    body, n_relu, modules, kwargs = FORMS[form]
    torch.manual_seed(list(FORMS).index(form))
    model = FormNet(body, **kwargs, **modules).eval()
    x = torch.rand(32, 3, 8, 8) * 2 - 1
    # the normalised graph replaces each ReLU-like op by a site and is still exact
    gm = normalize(trace(model, x))
    assert len(list(site_nodes(gm))) == n_relu
    assert not any(p in (aten.relu, aten.relu_, aten.hardtanh, aten.clamp) for p in graph_ops(gm))
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-5, rtol=1e-4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the stages of spikecast.convert, from the graph traced above (tracing is the slow part)
        calibrated, _ = calibrate(gm, x, CalibrationConfig(), progress=False)
        snn = SpikingNetwork(to_spiking(calibrated))
    # none of these forms needs an approximation, and every neuron fires on the data
    assert not [str(w.message) for w in caught if "max-pool" in str(w.message) or "never fired" in str(w.message)]
    neurons = all_neurons(snn)
    assert len(neurons) == n_relu
    assert len(snn.neurons()) == n_relu  # readable names are unique
    assert snn.static_prefix_ops > 0  # conv1 is computed once
    check_close(model, snn, x[:4], T=256)


class TimmBNAct(nn.Module):
    def __init__(self):
        super().__init__()
        from timm.layers import BatchNormAct2d

        torch.manual_seed(6)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = randomize_bn(BatchNormAct2d(6), 8)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = randomize_bn(BatchNormAct2d(6), 9)
        self.fc = nn.Linear(6, 5, bias=False)

    def forward(self, x):
        return self.fc(self.bn2(self.conv2(self.bn1(self.conv1(x)))).mean((2, 3)))


def test_timm_batchnormact2d_converts():
    model = TimmBNAct().eval()
    x = torch.rand(32, 3, 8, 8) * 2 - 1
    gm = normalize(trace(model, x))
    assert bn_nodes(gm) == []  # both BNs folded into their convs
    assert len(list(site_nodes(gm))) == 2
    # the site names say where the activation was
    names = [site.name for _, site in site_nodes(gm)]
    assert any(n.startswith("bn1") for n in names) and any(n.startswith("bn2") for n in names), names
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-5, rtol=1e-4)
    snn = spikecast.convert(model, calib=x, progress=False)
    assert len(all_neurons(snn)) == 2
    check_close(model, snn, x[:4], T=256)


# ---------------------------------------------------------------------------- ReLU6 / hardtanh
CLIPPED = {
    "nn.ReLU6": lambda m, x: gap_fc(m, m.act(m.conv2(m.act(m.conv1(x))))),
    "F.hardtanh(0,6)": lambda m, x: gap_fc(m, F.hardtanh(m.conv2(F.hardtanh(m.conv1(x), 0.0, 6.0)), 0.0, 6.0)),
    "F.relu6": lambda m, x: gap_fc(m, F.relu6(m.conv2(F.relu6(m.conv1(x))))),
}


@pytest.mark.parametrize("form", list(CLIPPED))
def test_relu6_sites_get_thresholds_at_most_6(form):
    torch.manual_seed(7)
    model = FormNet(CLIPPED[form], act=nn.ReLU6()).eval()
    with torch.no_grad():
        model.conv1.weight.mul_(20.0)  # pre-activations well above 6: the clip matters
        model.conv2.weight.mul_(5.0)
    x = torch.rand(32, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        pre = model.conv1(x)
    assert (pre > 6).float().mean() > 0.05
    gm = normalize(trace(model, x))
    sites = [site for _, site in site_nodes(gm)]
    assert len(sites) == 2 and all(s.upper == 6.0 for s in sites)
    snn = spikecast.convert(model, calib=x, thresholds="max", correction="none", progress=False)
    neurons = all_neurons(snn)
    assert len(neurons) == 2
    thresholds = [float(n.threshold) for n in neurons]
    assert all(0 < t <= 6.0 for t in thresholds), thresholds
    assert thresholds[0] == 6.0  # max of the first layer is far above 6: clipped to exactly 6
    check_close(model, snn, x[:4], T=256)
    # the default recipe refines thresholds per channel: never above the clip either
    refined = all_neurons(spikecast.convert(model, calib=x, progress=False))
    assert all(0 < float(n.threshold.max()) <= 6.0 for n in refined)


def test_hardtanh_with_other_range_is_not_a_relu():
    """hardtanh(-1, 1) is not ReLU-like: it must not silently become a neuron."""
    model = FormNet(lambda m, x: gap_fc(m, F.relu(m.conv2(F.hardtanh(F.relu(m.conv1(x)), -1.0, 1.0))))).eval()
    x = torch.rand(8, 3, 8, 8)
    gm = normalize(trace(model, x))
    sites = [site for _, site in site_nodes(gm)]
    # the two ReLUs, and a bipolar spike input for conv2 (it reads the hardtanh's analog output)
    assert [(s.name, s.bipolar) for s in sites] == [("relu[0]", False), ("conv2:input", True), ("relu[1]", False)]
    with pytest.raises(spikecast.UnsupportedOperationError, match="hardtanh"):
        spikecast.convert(model, calib=x, progress=False, compensate=False)
    # compensated: the hardtanh runs on the running mean of its input; the SNN tracks the ANN
    snn = spikecast.convert(model, calib=x, progress=False, thresholds="max", correction="none")
    out = snn.simulate(x, 256)
    with torch.no_grad():
        ref = model(x)
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99


# ---------------------------------------------------------------------------- max-pool
class PoolNet(nn.Module):
    def __init__(self, where: str):
        super().__init__()
        torch.manual_seed(8)
        self.where = where
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 2 * 2, 5, bias=False)

    def forward(self, x):
        if self.where == "first":  # pool directly after the first ReLU (input of the SNN is static)
            h = self.pool1(self.relu1(self.conv1(x)))
            h = self.relu2(self.conv2(h))
            h = F.avg_pool2d(h, 2)
        elif self.where == "deep":  # pool directly after a ReLU inside the spiking part
            h = F.avg_pool2d(self.relu1(self.conv1(x)), 2)
            h = self.pool2(self.relu2(self.conv2(h)))
        else:  # "not-after-relu": conv -> maxpool -> ReLU inside the spiking part
            h = F.avg_pool2d(self.relu1(self.conv1(x)), 2)
            h = self.relu2(self.pool2(self.conv2(h)))
        return self.fc(h.flatten(1))


def _pool_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and ops.packet(n) in ops.MAXPOOLS]


@pytest.mark.parametrize("where", ["first", "deep"])
def test_maxpool_after_relu_moves_before_the_neuron(where):
    model = PoolNet(where).eval()
    x = torch.rand(32, 3, 8, 8) * 2 - 1
    gm = normalize(trace(model, x))
    pools = _pool_nodes(gm)
    assert len(pools) == 1
    pool = pools[0]
    # the pool now feeds the site: relu(maxpool(x)) instead of maxpool(relu(x))
    (user,) = pool.users
    assert user.op == "call_module" and isinstance(gm.get_submodule(user.target), ActivationSite)
    assert not (pool.args[0].op == "call_module" and str(pool.args[0].target).startswith("sites."))
    assert len(list(site_nodes(gm))) == 2
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        snn = spikecast.convert(model, calib=x, thresholds="max", progress=False)
    assert len(all_neurons(snn)) == 2
    if where == "first":
        # the pool acts on the static first conv: exact, computed once, no approximation
        assert not [w for w in caught if "max-pool" in str(w.message)]
        assert not any(isinstance(m, SpikingMaxPool) for m in snn.graph_module.modules())
        prefix_ops = [ops.packet(n) for n in snn._prefix.graph.nodes if n.op == "call_function"]
        assert any(p in ops.MAXPOOLS for p in prefix_ops)
    else:
        # inside the spiking part the moved pool acts on a time-varying current, so the runtime
        # gates it (SpikingMaxPool on the current, before the neuron - never on spikes)
        (pool_mod,) = [m for m in snn.graph_module.modules() if isinstance(m, SpikingMaxPool)]
        (pool_node,) = [n for n in snn.graph_module.graph.nodes
                        if n.op == "call_module" and n.target.startswith("pools.")]
        (user,) = pool_node.users
        assert isinstance(snn.graph_module.get_submodule(user.target), IFNeuron)
    check_close(model, snn, x[:4], T=512, max_rel=0.02 if where == "first" else 0.05)


class ConcatPoolNet(nn.Module):
    """Two ReLU branches concatenated on channels, then an inception-style stride-1 max-pool branch
    next to a branch that reads the concatenation itself, and a stride-2 pool of the concatenation."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 2, 1)
        self.proj, self.side = nn.Conv2d(6, 5, 1), nn.Conv2d(6, 3, 1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        h = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        h = torch.cat([F.relu(self.proj(F.max_pool2d(h, 3, 1, 1))), F.relu(self.side(h))], 1)
        return self.fc(F.max_pool2d(h, 2).flatten(1))


def test_maxpool_of_a_concatenation_moves_before_new_neurons_of_each_part():
    from spikecast.graph.normalize import insert_activation_sites, move_maxpool_before_sites

    model = ConcatPoolNet().eval()
    x = torch.rand(16, 3, 8, 8) * 2 - 1
    gm = normalize(trace(model, x))
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-6)
    pools = _pool_nodes(gm)
    # each pool of a concatenation of two sites became one pool per part, each before its own site
    assert len(pools) == 4
    for pool in pools:
        (user,) = pool.users
        assert isinstance(gm.get_submodule(user.target), ActivationSite)
        assert not str(pool.args[0].target).startswith("sites.")
    # the stride-1 pool's parts are also read unpooled (by `side`): their pooled paths get new neurons;
    # the stride-2 pool is all that reads its parts, so they keep theirs
    assert sorted(p.meta["spikecast"]["maxpool"] for p in pools) == [
        "exact: moved through the concatenation before new neurons"] * 2 + [
        "exact: moved through the concatenation before the neuron"] * 2
    names = [gm.get_submodule(n.target).name for n, _ in site_nodes(gm)]
    assert len(names) == 6 and sum(name.endswith("@pooled") for name in names) == 2
    # off: the pools stay after the concatenation (and pool spikes in the SNN)
    plain = move_maxpool_before_sites(insert_activation_sites(fold_batchnorm(remove_identities(trace(model, x)))),
                                      through_concat=False)
    assert all(ops.packet(p.args[0]) is torch.ops.aten.cat for p in _pool_nodes(plain))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snn = spikecast.convert(model, calib=x, thresholds="max", correction="none", reconstruct="off",
                                progress=False)
    assert len(all_neurons(snn)) == 6
    check_close(model, snn, x[:4], T=512, max_rel=0.05)


def test_recipe_maxpool_chooses_where_pools_of_a_concatenation_go_and_how_they_spike(tmp_path):
    from spikecast.recipe import Recipe, recipe_of

    model = ConcatPoolNet().eval()
    x = torch.rand(16, 3, 8, 8) * 2 - 1
    snns = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in ("moved", "spikes", "gate"):
            snns[method] = spikecast.convert(model, calib=x, thresholds="max", correction="none", reconstruct="off",
                                             maxpool=method, progress=False)
    pools = {k: [m for m in snn.graph_module.modules() if isinstance(m, SpikingMaxPool)] for k, snn in snns.items()}
    # moved: the stride-1 pool's parts pool the static first convs (exact, computed once); the stride-2
    # pool's parts pool per-step currents (spiking max-pools before the neurons)
    assert len(all_neurons(snns["moved"])) == 6 and len(pools["moved"]) == 2
    assert not any(n.target.startswith("pools.") and "@pooled" in str(n.args[0]) for n in
                   snns["moved"].graph_module.graph.nodes if n.op == "call_module")
    for method in ("spikes", "gate"):  # the two pools stay after their concatenations and pool spikes
        assert len(all_neurons(snns[method])) == 4 and len(pools[method]) == 2
        assert {p.mode for p in pools[method]} == {"max" if method == "spikes" else "gate"}
        assert recipe_of(snns[method]) == Recipe(thresholds="max", correction="none", reconstruct="off", maxpool=method)
    check_close(model, snns["spikes"], x[:4], T=512, max_rel=0.05)
    back = spikecast.load(snns["gate"].save(tmp_path / "gate"))
    assert {p.mode for p in back.graph_module.modules() if isinstance(p, SpikingMaxPool)} == {"gate"}
    assert torch.equal(back(x[:4], timesteps=16), snns["gate"](x[:4], timesteps=16))
    with pytest.raises(ValueError, match="unknown maxpool method 'best'"):
        Recipe(maxpool="best")


def test_gate_passes_the_input_of_the_window_leader():
    gate = SpikingMaxPool("max_pool2d", [[2, 2], [2, 2]], mode="gate")
    x = torch.rand(5, 2, 3, 4, 4)
    acc = torch.zeros_like(x[0])
    for t in range(5):
        out = gate(x[t])
        _, index = F.max_pool2d(acc, 2, return_indices=True)  # the leader before this step (first on ties)
        expected = x[t].flatten(2).gather(2, index.flatten(2)).view_as(out)
        assert torch.equal(out, expected)
        acc = acc + x[t]


def test_a_pool_of_a_pool_inside_the_spiking_part_is_a_spiking_max_pool_too():
    class PoolPool(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c1, self.c2, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(64, 3)

        def forward(self, x):
            h = F.relu(self.c2(F.relu(self.c1(x))))
            h = F.max_pool2d(F.max_pool2d(h, 3, 2, 1), 3, 1, 1)  # both moved before the neuron: pool(pool(current))
            return self.fc(h.flatten(1))

    model = PoolPool().eval()
    x = torch.rand(16, 3, 8, 8) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snn = spikecast.convert(model, calib=x, thresholds="max", correction="none", reconstruct="off", progress=False)
    # the outer pool reads the inner one's per-step output (the increase of its window maxima): it must
    # accumulate it as well - a per-step max of increases is not the increase of the max
    assert sum(isinstance(m, SpikingMaxPool) for m in snn.graph_module.modules()) == 2
    check_close(model, snn, x[:4], T=512, max_rel=0.05)


def _neuron_depth(snn) -> int:
    """Neuron layers on the longest path from the input to the output (the SNN's latency in layers)."""
    depth = {}
    for node in snn.graph_module.graph.nodes:
        d = max([depth.get(a, 0) for a in node.all_input_nodes] + [0])
        is_neuron = node.op == "call_module" and isinstance(snn.graph_module.get_submodule(node.target), IFNeuron)
        depth[node] = d + is_neuron
    return max(depth.values())


def test_maxpool_decomposition_is_exact_in_the_ann_and_costs_neuron_layers(tmp_path):
    from spikecast.graph.normalize import MAXPOOL_REWRITES
    from spikecast.pipeline import prepare
    from spikecast.recipe import recipe_of

    model = ConcatPoolNet().eval()
    x = torch.rand(16, 3, 8, 8) * 2 - 1
    gm = prepare(model, x, maxpool=MAXPOOL_REWRITES["decompose"])
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-6)
    assert _pool_nodes(gm) == []  # both pools of concatenations became max(a, b) = b + relu(a - b) trees
    names = [gm.get_submodule(n.target).name for n, _ in site_nodes(gm)]
    # 3x3 window: 9 views -> 5 -> 3 -> 2 -> 1 (4 levels, 8 relus); 2x2: 4 -> 2 -> 1 (2 levels, 3 relus)
    decomposed = [n for n in names if "@max" in n]
    assert len(names) == 4 + 8 + 3 and len(decomposed) == 11
    assert {n.split("@max")[1].split("[")[0] for n in decomposed} == {"1", "2", "3", "4"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snns = {m: spikecast.convert(model, calib=x, thresholds="max", correction="none", reconstruct="off",
                                     maxpool=m, progress=False) for m in ("spikes", "decompose")}
    snn = snns["decompose"]
    assert recipe_of(snn).maxpool == "decompose"
    assert not any(isinstance(m, SpikingMaxPool) for m in snn.graph_module.modules())
    assert len(all_neurons(snn)) == 15
    assert _neuron_depth(snn) == _neuron_depth(snns["spikes"]) + 4 + 2  # the latency it costs, in layers
    check_close(model, snn, x[:4], T=512, max_rel=0.05)
    back = spikecast.load(snn.save(tmp_path / "decomposed"))
    # (a first call runs step by step, later ones time-batched: equal up to float rounding)
    assert torch.allclose(back(x[:4], timesteps=16), snn(x[:4], timesteps=16), rtol=0, atol=1e-6)
    # inspect says what became of each pool
    report = spikecast.inspect(model, example=x, maxpool="decompose")
    rows = [r for r in report.rows if "max-pool decomposition" in r.action]
    assert len(rows) == 11 and any("layer 4 of 4" in r.action for r in rows)
    with pytest.raises(ValueError, match="maxpool"):
        spikecast.inspect(model, example=x, maxpool="lateral")


def test_maxpool_of_a_concatenation_along_a_pooled_axis_stays():
    class WidthCat(nn.Module):
        def forward(self, x):
            return F.max_pool2d(torch.cat([F.relu(x), F.relu(-x)], 3), 2)

    x = torch.rand(2, 3, 4, 4)
    gm = normalize(trace(WidthCat().eval(), x))
    (pool,) = _pool_nodes(gm)
    assert ops.packet(pool.args[0]) is torch.ops.aten.cat  # windows straddle the two parts: not moved
    with torch.no_grad():
        assert torch.equal(gm(x), WidthCat()(x))


def test_maxpool_not_after_relu_warns_and_converts():
    model = PoolNet("not-after-relu").eval()
    x = torch.rand(32, 3, 8, 8) * 2 - 1
    with pytest.warns(UserWarning, match="max-pool") as record:
        snn = spikecast.convert(model, calib=x, thresholds="max", progress=False)
    messages = " ".join(str(w.message) for w in record)
    assert "pool2" in messages  # names the module of the approximated pool
    pools = [m for m in snn.graph_module.modules() if isinstance(m, SpikingMaxPool)]
    assert len(pools) == 1 and "pool2" in pools[0].name
    assert len(all_neurons(snn)) == 2
    check_close(model, snn, x[:4], T=512, max_rel=0.05)


@pytest.mark.parametrize("kind, args, ref", [
    ("max_pool2d", [[2, 2], [2, 2]], lambda a: F.max_pool2d(a, 2)),
    ("max_pool2d", [[3, 3], [2, 2], [1, 1]], lambda a: F.max_pool2d(a, 3, 2, 1)),
    ("max_pool2d", [[2, 2]], lambda a: F.max_pool2d(a, 2)),
    ("adaptive_max_pool2d", [[1, 1]], lambda a: F.adaptive_max_pool2d(a, 1)),
])
def test_spiking_maxpool_rate_is_the_max_of_the_accumulated_input(kind, args, ref):
    """After every T, the summed output of the spiking max-pool is the window maximum of the
    accumulated input - i.e. its rate is max-pool of the mean inputs, whichever element leads."""
    gen = torch.Generator().manual_seed(0)
    # integer inputs keep every sum exact; bursty element rates so the leader changes over time
    seq = [(torch.rand(2, 3, 6, 6, generator=gen) < torch.linspace(0.1, 0.9, 6)).float() * 2
           - (torch.rand(2, 3, 6, 6, generator=gen) < 0.2).float() for _ in range(40)]
    pool = SpikingMaxPool(kind, args, "p")
    total, acc = None, torch.zeros_like(seq[0])
    for t, x_t in enumerate(seq, 1):
        out = pool(x_t.clone())
        total = out.clone() if total is None else total + out
        acc += x_t
        assert torch.equal(total, ref(acc)), f"step {t}"
    # reset restarts the accumulation
    pool.reset()
    assert torch.equal(pool(seq[0].clone()), ref(seq[0]))
