"""The stateful-module protocol (spikecast.nn.stateful): one registry, buffered state that moves with
the module, a pure step equal to forward, config round trips; the fused-kernel fallback only for
compiler failures; network copies that own their state."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikecast
from spikecast.convert.compensation import compensated_nodes
from spikecast.graph.normalize import fresh_copy
from spikecast.nn import neuron as neuron_module
from spikecast.nn.compensation import ExpectationDifference, RunningMean
from spikecast.nn.leaky import LeakyNeuron
from spikecast.nn.maxpool import SpikingMaxPool
from spikecast.nn.neuron import IFNeuron, _binary_step, run_fused
from spikecast.nn.stateful import STATEFUL_TYPES, StatefulModule
from spikecast.quant import quantize_weights
from spikecast.quant.integer import integer_network
from spikecast.runtime.network import SpikingNetwork

pytestmark = pytest.mark.usefixtures("single_thread")

X = torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _neuron(**kw) -> IFNeuron:
    g = torch.Generator().manual_seed(1)
    n = IFNeuron(torch.rand(1, 4, 1, 1, generator=g) + 0.25, "n", **kw)
    n.set_correction(bias=torch.full((1, 4, 1, 1), 0.02), v_offset=torch.full((1, 4, 1, 1), -0.05))
    return n


MODULES = {
    "binary": lambda: _neuron(),
    "signed": lambda: _neuron(signed=True),
    "bipolar": lambda: _neuron(bipolar=True),
    "multilevel": lambda: _neuron(levels=3),
    "multilevel-signed": lambda: _neuron(levels=2, signed=True),
    "maxpool": lambda: SpikingMaxPool("max_pool2d", [[2, 2], [2, 2]], "pool"),
    "maxpool-padded": lambda: SpikingMaxPool("max_pool2d", [[3, 3], [2, 2], [1, 1]], "pool"),
    "running-mean": lambda: RunningMean("mean"),
    "difference": lambda: ExpectationDifference("diff"),
    "lif": lambda: _leaky(),
    "cuba-lif-subtract": lambda: _leaky(tau_syn=torch.full((4, 1, 1), 2e-3), w_in=torch.full((4, 1, 1), 1.5),
                                        reset="subtract"),
}


def _leaky(**kw) -> LeakyNeuron:
    g = torch.Generator().manual_seed(3)
    shape = (4, 1, 1)  # per channel, broadcast over positions
    return LeakyNeuron(tau_mem=torch.rand(shape, generator=g) * 4e-3 + 1e-3, r=torch.full(shape, 2.0),
                       v_leak=torch.full(shape, 0.1), v_threshold=torch.rand(shape, generator=g) + 0.5,
                       v_reset=torch.zeros(shape), dt=1e-3, name="leaky", **kw)


def _inputs(steps: int = 7) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(2, 4, 6, 6, generator=g) * 0.7 for _ in range(steps)]


# ---------------------------------------------------------------------------- registry
def test_every_builtin_type_is_registered_by_subclassing():
    for cls in (IFNeuron, SpikingMaxPool, RunningMean, ExpectationDifference):
        assert STATEFUL_TYPES[cls.__name__] is cls and issubclass(cls, StatefulModule)
    assert "_Compensation" not in STATEFUL_TYPES  # abstract bases opt out
    assert IFNeuron.emits_spikes and SpikingMaxPool.emits_spikes
    assert not RunningMean.emits_spikes and not ExpectationDifference.emits_spikes


def test_a_new_subclass_registers_itself_and_runs_with_the_default_forward():
    class StepCounter(StatefulModule):
        state_buffers = ("n",)

        def initial_state(self, x):
            return (torch.zeros((), dtype=x.dtype),)

        def step(self, x, state):
            return x + state[0], (state[0] + 1,)

    try:
        assert STATEFUL_TYPES["StepCounter"] is StepCounter
        m = StepCounter()
        outs = [m(torch.zeros(2)) for _ in range(3)]
        assert [float(o[0]) for o in outs] == [0.0, 1.0, 2.0] and float(m.n) == 3.0
        assert "n" not in m.state_dict()
        m.reset()
        assert m.n is None and m.get_state() is None
    finally:
        STATEFUL_TYPES.pop("StepCounter", None)
    with pytest.raises(TypeError, match="IFNeuron"):
        class IFNeuron(StatefulModule):  # noqa: F811 - a second type with a saved type's name
            pass
    assert STATEFUL_TYPES["IFNeuron"] is neuron_module.IFNeuron


# ---------------------------------------------------------------------------- the protocol, per type
@pytest.mark.parametrize("kind", sorted(MODULES))
def test_forward_equals_the_pure_step(kind):
    module, xs = MODULES[kind](), _inputs()
    with torch.inference_mode():
        eager = [module(x) for x in xs]
        buffered = module.get_state()
        fresh = MODULES[kind]()
        state, pure = fresh.initial_state(xs[0]), []
        for x in xs:
            old, snapshot = state, [s.clone() for s in state]
            out, state = fresh.step(x, old)
            assert all(torch.equal(a, b) for a, b in zip(old, snapshot)), "step mutated its input state"
            pure.append(out)
    assert fresh.get_state() is None  # nor the module's buffers
    assert all(torch.equal(a, b) for a, b in zip(eager, pure)), kind
    assert len(buffered) == len(state) == len(module.state_names())
    assert all(torch.equal(a, b) for a, b in zip(buffered, state))
    assert any(e.abs().sum() > 0 for e in eager)


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_state_is_non_persistent_and_reset_and_config_round_trip(kind):
    module, xs = MODULES[kind](), _inputs(4)
    with torch.inference_mode():
        first = [module(x) for x in xs]
    keys = set(module.state_dict())
    assert not keys & set(module.state_buffers)  # state never saved
    names = dict(module.named_buffers())
    assert set(module.state_names()) <= set(names)  # but registered: .to() moves it
    module.reset()
    assert module.get_state() is None and all(getattr(module, n) is None for n in module.state_buffers)
    clone = type(module).from_config(json.loads(json.dumps(module.config())), dict(module.state_dict()))
    assert type(clone) is type(module)
    with torch.inference_mode():
        again, cloned = [module(x) for x in xs], [clone(x) for x in xs]
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(first, again, cloned))


def test_detach_state_cuts_the_history():
    for kind in ("signed", "maxpool", "running-mean", "difference"):
        module = MODULES[kind]()
        x = _inputs(1)[0].requires_grad_()
        module(x)
        module(x)
        assert any(s.requires_grad for s in module.get_state() if s.is_floating_point()), kind
        module.detach_state()
        assert not any(s.requires_grad for s in module.get_state()), kind


def test_state_buffers_follow_dtype_and_device_moves():
    for kind in MODULES:
        module = MODULES[kind]()
        with torch.inference_mode():
            module(_inputs(1)[0])
        module.to(torch.float64)
        for name, tensor in zip(module.state_names(), module.get_state()):
            expected = torch.float64 if name != "t" else torch.int64  # step counts stay integers
            assert tensor.dtype == expected, (kind, name)
        module.to("meta")  # a device move that needs no accelerator
        assert all(t.device.type == "meta" for t in module.get_state()), kind


# ---------------------------------------------------------------------------- fused kernels
@pytest.fixture
def fake_kernel(monkeypatch):
    """Make run_fused call ``kernel(fn, *args)`` (set on the returned dict) for every tensor size."""
    holder: dict = {}
    monkeypatch.setitem(neuron_module._compile_state, "enabled", True)
    monkeypatch.setattr(neuron_module, "COMPILE_MIN_ELEMENTS", 1)
    monkeypatch.setattr(neuron_module, "_fused", lambda fn: lambda *args: holder["kernel"](fn, *args))
    return holder


def _args(channels: int = 4):
    return torch.zeros(3, 4), torch.full((3, channels), 0.75), torch.zeros(()), torch.tensor(1.0)


def test_a_user_error_propagates_and_keeps_compilation_on(fake_kernel):
    import torch._dynamo.exc as dynamo_exc

    def kernel(fn, *args):  # Dynamo wraps an error of the traced function in its own type
        try:
            return fn(*args)
        except RuntimeError as exc:
            raise dynamo_exc.TorchRuntimeError(f"Dynamo failed to run FX node with fake tensors: {exc}") from None

    fake_kernel["kernel"] = kernel
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no "falling back" warning
        with pytest.raises(RuntimeError, match="must match the size") as info:
            run_fused(_binary_step, *_args(channels=5))
    assert not isinstance(info.value, dynamo_exc.TorchDynamoException)  # the step's own error
    assert neuron_module._compile_state["enabled"]
    # through the neuron too: its second step gets a current of another shape
    neuron = IFNeuron(1.0, "n")
    neuron(torch.zeros(3, 4))
    with pytest.raises(RuntimeError, match="must match the size"):
        neuron(torch.zeros(3, 5))
    assert neuron_module._compile_state["enabled"]


def test_an_unknown_kernel_failure_is_raised_not_hidden(fake_kernel):
    def kernel(fn, *args):
        raise ValueError("not a compiler problem")

    fake_kernel["kernel"] = kernel
    with pytest.raises(ValueError, match="not a compiler problem"):
        run_fused(_binary_step, *_args())
    assert neuron_module._compile_state["enabled"]


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_compiler_failure_falls_back_to_eager_once(fake_kernel, wrapped):
    from torch._inductor.exc import InvalidCxxCompiler

    def kernel(fn, *args):
        if wrapped:
            raise RuntimeError("backend failed") from InvalidCxxCompiler()
        raise InvalidCxxCompiler()

    fake_kernel["kernel"] = kernel
    with pytest.warns(RuntimeWarning, match="fused neuron kernels unavailable"):
        out = run_fused(_binary_step, *_args())
    expected = _binary_step(*_args())
    assert all(torch.equal(a, b) for a, b in zip(out, expected))
    assert not neuron_module._compile_state["enabled"]


# ---------------------------------------------------------------------------- copies own their state
class MixedNet(nn.Module):
    """Neurons, a max-pool of a time-varying current (spiking max-pool), GELU and LayerNorm
    (compensated) in the spiking part."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(F.max_pool2d(self.conv2(h), 2))
        h = self.norm(F.gelu(self.fc1(h.flatten(1))))
        return self.fc2(h)


@pytest.fixture(scope="module")
def mixed():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snn = spikecast.convert(MixedNet().eval(), X[:16], thresholds="max", correction="none", timesteps=8,
                                progress=False)
    kinds = {type(m) for m in snn.stateful_modules()}
    assert kinds == {IFNeuron, SpikingMaxPool, RunningMean, ExpectationDifference}
    assert compensated_nodes(snn._step)
    return snn


def test_fresh_copy_owns_every_called_module(mixed):
    gm = mixed.graph_module
    copy = fresh_copy(gm)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            a, b = gm.get_submodule(node.target), copy.get_submodule(node.target)
            assert a is not b and type(a) is type(b), node.target
    # weights and other graph constants stay shared (passes never edit them in place)
    constants = [str(n.target) for n in gm.graph.nodes if n.op == "get_attr"]
    assert constants and all(_tensor(gm, c) is _tensor(copy, c) for c in constants)


def _tensor(module: nn.Module, target: str) -> torch.Tensor:
    for part in target.split("."):
        module = getattr(module, part)
    return module


def test_copies_simulated_step_by_step_side_by_side_equal_each_run_alone(mixed, tmp_path):
    mixed.save(tmp_path / "snn")
    nets = {"float": mixed, "int8 weights": quantize_weights(mixed, bits=8),
            "integer": integer_network(mixed, X[:16]), "loaded": SpikingNetwork.load(tmp_path / "snn")}
    for name, net in nets.items():
        if net is not mixed:
            own = {id(m) for m in net.stateful_modules()}
            assert not own & {id(m) for m in mixed.stateful_modules()}, name
    x, T = X[16:], 6
    with torch.inference_mode():
        alone = {name: [o.clone() for o in net.steps(x, T)] for name, net in nets.items()}
        runs = {name: net.steps(x, T) for name, net in nets.items()}
        for t in range(T):
            for name, run in runs.items():  # one step of each network in turn
                assert torch.equal(next(run), alone[name][t]), (name, t)
    assert all(torch.equal(a, b) for a, b in zip(alone["float"], alone["loaded"]))
    assert not all(torch.equal(a, b) for a, b in zip(alone["float"], alone["int8 weights"]))


def test_network_state_moves_with_the_network():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snn = spikecast.convert(MixedNet().eval(), X[:16], thresholds="max", correction="none", timesteps=4,
                                progress=False)
    with torch.inference_mode():
        run = snn.steps(X[:3], 4)
        next(run)
    assert all(m.get_state() is not None for m in snn.stateful_modules())
    assert not any(k.endswith((".v", ".acc", ".sum", ".previous")) for k in snn.state_dict())
    snn.to(torch.float64)
    for m in snn.stateful_modules():
        for name, tensor in zip(m.state_names(), m.get_state()):
            # counts stay integers: a step counter, and a signed neuron's spike count (a byte: 4 steps reserved)
            expected = {"t": torch.int64, "emitted": torch.uint8}.get(name, torch.float64)
            assert tensor.dtype == expected, (m, name)
    ref = snn.simulate(X[:3].double(), 4)  # a fresh simulation in the new dtype
    assert ref.dtype == torch.float64
