"""Unsupported operations and untraceable models fail loudly, naming every offender's module path
(``compensate=False``: the strict mode that refuses non-linear ops inside the spiking part)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikecast
from spikecast import SpikecastError, TraceError, UnsupportedOperationError
from spikecast.graph.normalize import find_unsupported, normalize
from spikecast.graph.trace import trace


pytestmark = pytest.mark.usefixtures("single_thread")


X = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


class GatedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return F.relu(self.gate(self.conv(x)))


class Square(nn.Module):
    def forward(self, x):
        return x * x


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x))


class Net(nn.Module):
    """stem (ReLU) -> [block with sigmoid] -> [square] -> head; parts chosen by flags."""

    def __init__(self, sigmoid=False, square=False):
        super().__init__()
        torch.manual_seed(0)
        self.stem = Stem()
        self.use_sigmoid, self.use_square = sigmoid, square
        self.block = GatedBlock()
        self.block.square = Square()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.stem(x)
        if self.use_sigmoid:
            h = self.block(h)
        if self.use_square:
            h = self.block.square(h)
        return self.fc(h.mean((2, 3)))


def convert(model, **kw):
    # strict mode: without expectation compensation (tests/test_compensation.py covers the default,
    # where these ops are compensated instead)
    kw.setdefault("compensate", False)
    return spikecast.convert(model, calib=X, progress=False, **kw)


def test_sigmoid_in_spiking_part_is_reported_with_its_module_path():
    with pytest.raises(UnsupportedOperationError) as info:
        convert(Net(sigmoid=True))
    err = info.value
    assert isinstance(err, SpikecastError)
    msg = str(err)
    assert "block.gate" in msg and "aten.sigmoid" in msg
    assert [(s.path, s.op) for s in err.sites] == [("block.gate", "aten.sigmoid")]
    assert "1 operation(s)" in msg


def test_product_of_two_time_varying_tensors_is_reported():
    # x * x: the same spike train twice - all_input_nodes would see it once
    with pytest.raises(UnsupportedOperationError) as info:
        convert(Net(square=True))
    err = info.value
    assert [(s.path, s.op) for s in err.sites] == [("block.square", "aten.mul")]
    assert "block.square" in str(err) and "aten.mul" in str(err) and "product" in str(err)


class TwoTrains(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Stem()
        self.conv = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.stem(x)
        g = F.relu(self.conv(h))
        return self.fc((h * g).mean((2, 3)))


def test_product_of_two_different_spike_trains_is_reported():
    with pytest.raises(UnsupportedOperationError, match="product of two time-varying"):
        convert(TwoTrains())


def test_all_offenders_are_listed_not_just_the_first():
    with pytest.raises(UnsupportedOperationError) as info:
        convert(Net(sigmoid=True, square=True))
    err = info.value
    assert [(s.path, s.op) for s in err.sites] == [("block.gate", "aten.sigmoid"), ("block.square", "aten.mul")]
    msg = str(err)
    assert "2 operation(s)" in msg
    assert msg.index("block.gate") < msg.index("block.square")
    # the same list from the graph pass directly
    gm = normalize(trace(Net(sigmoid=True, square=True), X))
    assert [(s.path, s.op) for s in find_unsupported(gm)] == [("block.gate", "aten.sigmoid"),
                                                             ("block.square", "aten.mul")]


class Scaled(nn.Module):
    """Products and divisions with a *static* operand are linear in the spike train."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.stem = Stem()
        self.scale = nn.Parameter(torch.rand(1, 4, 1, 1) + 0.5)
        self.fc = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        h = self.stem(x)
        h = h * self.scale / 2.0
        h = h / (self.scale + 1.0)
        return self.fc(h.mean((2, 3)))


def test_products_with_static_operands_convert():
    model = Scaled().eval()
    snn = convert(model, thresholds="max")
    with torch.no_grad():
        ref = model(X)
    out = snn.simulate(X, 256)
    assert float((out - ref).norm() / ref.norm()) < 0.02


class DivideBySpikes(nn.Module):
    def __init__(self, numerator: str):
        super().__init__()
        self.stem = Stem()
        self.numerator = numerator
        self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.stem(x)
        if self.numerator == "tensor":
            y = self.scale / (h + 1.0)  # aten.div(static tensor, spike train)
        else:
            y = 1.0 / (h + 1.0)  # aten.reciprocal
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("numerator", ["tensor", "scalar"])
def test_division_by_a_time_varying_tensor_is_reported(numerator):
    # s / (h + 1): only one time-varying operand, but it is the divisor - not linear
    with pytest.raises(UnsupportedOperationError, match="div|reciprocal") as info:
        convert(DivideBySpikes(numerator))
    assert len(info.value.sites) == 1


class SigmoidPrefix(nn.Module):
    """A sigmoid on the input, before any ReLU: it only sees the (static) analog input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.pre = nn.Sigmoid()
        self.stem = Stem()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        h = self.stem(self.pre(x) * 4.0 - 2.0)
        h = F.relu(self.conv2(h))
        return self.fc(h.mean((2, 3)))


def test_sigmoid_in_static_prefix_is_fine_under_analog_encoding():
    model = SigmoidPrefix().eval()
    snn = convert(model, thresholds="max")
    prefix_targets = [str(n.target) for n in snn._prefix.graph.nodes if n.op == "call_function"]
    step_targets = [str(n.target) for n in snn._step.graph.nodes if n.op == "call_function"]
    assert any("sigmoid" in t for t in prefix_targets)  # computed once, on the analog input
    assert not any("sigmoid" in t for t in step_targets)
    with torch.no_grad():
        ref = model(X)
    outs = snn.simulate(X, [8, 256])
    rel = {t: float((o - ref).norm() / ref.norm()) for t, o in outs.items()}
    assert rel[256] < 0.02 and rel[256] < rel[8] / 2, rel


def test_sigmoid_on_the_input_is_unsupported_when_the_input_spikes():
    # with Poisson encoding the input varies per step: the same sigmoid is now in the spiking part
    with pytest.raises(UnsupportedOperationError) as info:
        convert(SigmoidPrefix(), encoding="poisson")
    assert [(s.path, s.op) for s in info.value.sites] == [("pre", "aten.sigmoid")]


# ---------------------------------------------------------------------------- tracing failures
class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor value: not traceable
            return self.conv(x)
        return -x


class UsesBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Stem()
        self.branch = nn.Sequential(nn.Identity(), DataDependent())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.branch(self.stem(x)).mean((2, 3)))


def test_trace_failure_names_the_module():
    with pytest.raises(TraceError) as info:
        convert(UsesBranch())
    err = info.value
    assert isinstance(err, SpikecastError)
    msg = str(err)
    assert "branch.1" in msg and "DataDependent" in msg, msg
    assert err.__cause__ is not None  # the original torch.export error is chained


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Stem()

    def forward(self, x):
        h = self.stem(x)
        return h.mean((2, 3)), h.amax((2, 3))


def test_multiple_outputs_are_a_trace_error():
    with pytest.raises(TraceError, match="one tensor output"):
        trace(TwoOutputs(), X)
