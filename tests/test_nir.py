"""NIR export / import (spikecast.export.nir) and the other simulators that read NIR.

* the ``"nir"`` profile converts into NIR units; ``to_nir`` -> ``from_nir`` is bit-identical;
* what NIR cannot carry is refused with every offender's module path;
* the IF nodes state their semantics; thresholds are 1;
* sinabs (with the reader settings of READER_SETTINGS) gives identical spike counts per layer and
  image and identical predictions on all 450 digits test images; snnTorch's deviation is measured;
* a NIR graph written by sinabs imports, runs like sinabs, and validates against its ANN; LIF
  graphs written by snnTorch run spike for spike like snnTorch, CubaLIF ones follow forward Euler;
* residual networks: skips (identity and the option-A shortcut) export as 1x1 convolutions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import spikecast
from spikecast.cli import main
from spikecast.errors import UnsupportedOperationError
from spikecast.export import nir_readers
from spikecast.export.nir import IF_SEMANTICS, from_nir, nir_form, to_nir, to_nir_graph
from spikecast.quant.integer import integer_network
from spikecast.recipe import NIR_PROFILE, Recipe, build_recipe
from spikecast.zoo.digits import digits_tensors

nir = pytest.importorskip("nir")


@pytest.fixture(scope="module")
def digits():
    x, _ = digits_tensors("train")
    xt, yt = digits_tensors("test")
    return x, xt, yt


@pytest.fixture(scope="module")
def nir_snn(digits):
    x, _, _ = digits
    return spikecast.convert("zoo:digits-cnn", calib=(x,), progress=False, profile="nir", timesteps=16,
                             correction="light")


def test_nir_profile_fixes_its_fields_and_refuses_conflicts():
    recipe = build_recipe(profile="nir")
    assert all(getattr(recipe, k) == v for k, v in NIR_PROFILE.items())
    assert recipe.correction_config().potential is False and Recipe().correction_config().potential is True
    with pytest.raises(ValueError, match="signed=True"):
        build_recipe(profile="nir", signed=True)
    with pytest.raises(ValueError, match="unknown profile"):
        Recipe(profile="loihi")


def test_round_trip_is_bit_identical(nir_snn, digits, tmp_path):
    _, xt, _ = digits
    assert all(torch.all(n.threshold == 1) for n in nir_snn.neurons().values())
    path = to_nir(nir_snn, tmp_path / "digits.nir")
    back = from_nir(path)
    a, b = nir_snn.simulate(xt, [4, 16]), back.simulate(xt, [4, 16])
    assert all(torch.equal(a[t], b[t]) for t in (4, 16))
    assert back.metadata["recipe"] == nir_snn.metadata["recipe"]  # the recipe travels in the graph metadata
    # and the re-export writes the same weights
    first, second = to_nir_graph(nir_snn), to_nir_graph(back)
    for name, node in first.nodes.items():
        if hasattr(node, "weight"):
            assert np.array_equal(node.weight, second.nodes[name].weight), name


def test_profile_stays_close_to_the_unnormalised_network(digits):
    """nir_form only rescales: the network before it and after it agree on every prediction."""
    x, xt, _ = digits
    raw = spikecast.convert("zoo:digits-cnn", calib=(x,), progress=False, correction="none", signed=False,
                            v_init=0.0, compensate=False)
    formed = nir_form(raw)
    a, b = raw.simulate(xt, 16), formed.simulate(xt, 16)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert float((a - b).abs().max()) < 1e-4


def test_what_nir_cannot_carry_is_refused_by_module_path(digits):
    x, _, _ = digits
    snn = spikecast.convert("zoo:digits-cnn", calib=(x,), progress=False, correction="none")  # signed, v0 = theta/2
    with pytest.raises(UnsupportedOperationError) as info:
        to_nir_graph(snn)
    text = str(info.value)
    assert "cannot be exported to NIR" in text
    for path in ("features.2", "features.5", "classifier.2"):
        assert path in text
    assert "signed" in text and "initial membrane potential" in text
    assert len(info.value.sites) == 3  # the consequences downstream are not listed again


def test_if_nodes_state_their_semantics(nir_snn, tmp_path):
    graph = nir.read(to_nir(nir_snn, tmp_path / "d.nir", pooling="sum"))
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    assert {"Input", "Conv2d", "IF", "SumPool2d", "Flatten", "Affine", "Output"} <= kinds
    for node in graph.nodes.values():
        if isinstance(node, nir.IF):
            assert np.all(node.v_threshold == 1) and np.all(node.r == 1) and np.all(node.v_reset == 0)
            for key in ("reset", "v_initial", "spikes_per_step", "fire"):
                assert node.metadata[key] == IF_SEMANTICS[key]


def test_sinabs_runs_the_file_spike_for_spike(nir_snn, digits, tmp_path):
    pytest.importorskip("sinabs")
    _, xt, _ = digits
    [result] = nir_readers.check(nir_snn, xt, 32, tmp_path, which=["sinabs"])
    assert result.images == 450 and result.same_prediction == 450
    assert result.identical_counts == {k: 450 for k in result.identical_counts} and len(result.identical_counts) == 3
    assert result.max_output_difference < 1e-4
    # the importer's own defaults (several spikes per step, a membrane floor) do not
    [loose] = nir_readers.check(nir_snn, xt, 32, tmp_path, which=["sinabs"], exact=False)
    assert not loose.identical


def test_snntorch_deviation_is_measured(nir_snn, digits, tmp_path):
    pytest.importorskip("snntorch")
    _, xt, _ = digits
    [result] = nir_readers.check(nir_snn, xt, 16, tmp_path, which=["snntorch"])
    assert result.same_prediction >= 445  # strict v > threshold and another order of additions: rare flips
    total = sum(result.count_difference.values())
    assert total <= 1e-3 * float(sum(v.sum() for v in nir_readers.spikecast_run(nir_snn, xt, 16).spikes.values()))


def test_graph_written_by_sinabs_imports_and_validates():
    sinabs = pytest.importorskip("sinabs")
    import sinabs.layers as sl
    from sinabs.activation import SingleSpike

    torch.manual_seed(0)
    batch, T = 20, 16
    conv, fc1, fc2 = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(64, 8), nn.Linear(8, 3)
    model = nn.Sequential(conv, sl.IAFSqueeze(batch_size=batch, spike_fn=SingleSpike, spike_threshold=1.0),
                          sl.SumPool2d(2), nn.Flatten(), fc1,
                          sl.IAFSqueeze(batch_size=batch, spike_fn=SingleSpike, spike_threshold=0.5), fc2)
    x = torch.rand(batch, 1, 8, 8) * 2
    steps = x.unsqueeze(1).expand(batch, T, 1, 8, 8).reshape(batch * T, 1, 8, 8)
    graph = sinabs.to_nir(model, steps[:batch])
    for m in model.modules():
        if isinstance(m, sl.IAFSqueeze):
            m.reset_states()
    with torch.no_grad():
        ref = model(steps).reshape(batch, T, -1).mean(1)
    snn = from_nir(graph, reset="subtract")  # sinabs' IAF resets by subtraction (its graph does not say so)
    assert float((snn.simulate(x, T) - ref).abs().max()) < 1e-5
    ann = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), fc1, nn.ReLU(), fc2)
    result = spikecast.validate(ann, snn, (x, torch.zeros(batch, dtype=torch.long)), timesteps=[4, 16],
                                progress=False)
    assert set(result.snn_accuracy) == {4, 16}
    # without a stated reset, an IF node resets to v_reset as the NIR spec says
    spec = from_nir(graph)
    assert all(n.reset_mode == "zero" for n in spec.neurons().values())


def _snntorch_mlp(kind: str, reset: str, seed: int = 1):
    snn = pytest.importorskip("snntorch")
    torch.manual_seed(seed)
    if kind == "leaky":
        a = snn.Leaky(beta=torch.full((16,), 0.9), threshold=torch.ones(16), init_hidden=True, reset_mechanism=reset)
        b = snn.Leaky(beta=torch.rand(4) * 0.5 + 0.4, threshold=torch.full((4,), 0.5), init_hidden=True,
                      reset_mechanism=reset)
    else:
        a = snn.Synaptic(alpha=torch.full((16,), 0.7), beta=torch.full((16,), 0.9), threshold=torch.ones(16),
                         init_hidden=True, reset_mechanism=reset)
        b = snn.Synaptic(alpha=torch.full((4,), 0.5), beta=torch.rand(4) * 0.5 + 0.4, threshold=torch.full((4,), 0.5),
                         init_hidden=True, reset_mechanism=reset)
    net = nn.Sequential(nn.Linear(8, 16), a, nn.Linear(16, 4), b)
    with torch.no_grad():
        net[0].weight.mul_(3)
    return net


def _snntorch_run(net, x, T: int) -> torch.Tensor:
    from snntorch.utils import reset

    reset(net)
    with torch.no_grad():
        return torch.stack([net(x).clone() for _ in range(T)])


def test_lif_graph_written_by_snntorch_runs_spike_for_spike(tmp_path):
    from snntorch.export_nir import export_to_nir

    net, x, T = _snntorch_mlp("leaky", "zero"), torch.rand(200, 8), 100
    graph = export_to_nir(net, x[0])
    assert [type(n).__name__ for n in graph.nodes.values()].count("LIF") == 2
    snn = from_nir(graph, dt=1e-4)  # snnTorch writes Leaky for dt = 1e-4; reset_mechanism="zero" is the spec's
    ref, ours = _snntorch_run(net, x, T), torch.stack(list(snn.steps(x, T)))
    assert float(ref.sum()) > 1000 and torch.equal(ref, ours)
    ann = nn.Sequential(net[0], nn.ReLU(), net[2])
    result = spikecast.validate(ann, snn, (x, torch.zeros(len(x), dtype=torch.long)), timesteps=[8, 32],
                                progress=False)
    assert set(result.snn_accuracy) == {8, 32}
    with pytest.raises(ValueError, match="leaky neurons"):
        integer_network(snn, scale=1.0)
    # written back as it was read: LIF nodes with dt and the reset in their metadata
    back = from_nir(to_nir(snn, tmp_path / "lif.nir"))
    assert torch.equal(torch.stack(list(back.steps(x, T))), ours)
    saved = spikecast.SpikingNetwork.load(snn.save(tmp_path / "lif-snn"))
    assert torch.equal(torch.stack(list(saved.steps(x, T))), ours)
    # snnTorch's subtractive reset subtracts after the next step's decay, ours before it: measured, not hidden
    sub = _snntorch_mlp("leaky", "subtract")
    assert not torch.equal(_snntorch_run(sub, x, T),
                           torch.stack(list(from_nir(export_to_nir(sub, x[0]), dt=1e-4, reset="subtract").steps(x, T))))


def _euler_cuba(w1, b1, p1, w2, b2, p2, x, T):
    """NIR's CubaLIF by hand (numpy, float64): forward Euler, current before membrane, reset to v_reset."""
    def layer(params, current, state):
        i, v = state
        i = i + params["dt"] / params["tau_syn"] * (params["w_in"] * current - i)
        v = v + params["dt"] / params["tau_mem"] * (params["v_leak"] - v + params["r"] * i)
        s = (v > params["v_threshold"]).astype(np.float64)
        return s, (i, np.where(s > 0, params["v_reset"], v))

    xs, outs = x.numpy().astype(np.float64), []
    st1 = (np.zeros((len(xs), len(b1))), np.zeros((len(xs), len(b1))) + p1["v_leak"])
    st2 = (np.zeros((len(xs), len(b2))), np.zeros((len(xs), len(b2))) + p2["v_leak"])
    for _ in range(T):
        s1, st1 = layer(p1, xs @ w1.T + b1, st1)
        s2, st2 = layer(p2, s1 @ w2.T + b2, st2)
        outs.append(s2)
    return np.stack(outs)


def test_cuba_lif_follows_forward_euler_and_snntorch_synaptic_below_threshold():
    from snntorch.export_nir import export_to_nir

    net, x, T = _snntorch_mlp("synaptic", "zero"), torch.rand(50, 8), 60
    graph = export_to_nir(net, x[0])
    nodes = list(graph.nodes.values())
    assert [type(n).__name__ for n in nodes].count("CubaLIF") == 2
    snn = from_nir(graph, dt=1e-4)
    ours = torch.stack(list(snn.steps(x, T)))
    params = [{k: np.asarray(getattr(n, k), dtype=np.float64) for k in
               ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in")} | {"dt": 1e-4}
              for n in nodes if type(n).__name__ == "CubaLIF"]
    affine = [n for n in nodes if type(n).__name__ == "Affine"]
    ref = _euler_cuba(affine[0].weight, affine[0].bias, params[0], affine[1].weight, affine[1].bias, params[1], x, T)
    agree = float((ours.numpy() == ref).mean())
    assert ours.sum() > 100 and agree == 1.0  # float32 here, float64 there: no spike flips on this seed
    # below threshold (no resets) the discretisation is snnTorch's: syn = alpha syn + x, mem = beta mem + syn
    quiet = _snntorch_mlp("synaptic", "zero")
    for m in (quiet[1], quiet[3]):
        m.threshold.fill_(1e9)
    snn_quiet = from_nir(export_to_nir(quiet, x[0]), dt=1e-4)  # (exporting runs the net: simulate after)
    _snntorch_run(quiet, x, T)
    list(snn_quiet.steps(x, T))
    first = snn_quiet.graph_module.sites.get_submodule(list(dict(snn_quiet.graph_module.sites.named_children()))[0])
    torch.testing.assert_close(first.v, quiet[1].mem, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first.i, quiet[1].syn, rtol=1e-4, atol=1e-5)


def test_leaky_neurons_and_bad_files_are_refused(tmp_path):
    graph = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([3])}),
                                "lif": nir.LIF(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3),
                                               v_threshold=np.ones(3)),
                                "output": nir.Output(output_type={"output": np.array([3])})},
                         edges=[("input", "lif"), ("lif", "output")])
    with pytest.raises(ValueError, match="leaky neurons lif are differential equations.*dt=SECONDS"):
        from_nir(graph)
    assert list(from_nir(graph, dt=0.5).neurons()) == ["lif"]
    graph.nodes["lif"] = nir.LI(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3))
    with pytest.raises(ValueError, match="lif \\(LI\\)"):
        from_nir(graph)
    with pytest.raises(ValueError, match="dt must be a positive number"):
        from_nir(graph, dt=-1.0)
    bad = tmp_path / "not.nir"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="not a readable NIR file"):
        from_nir(bad)
    with pytest.raises(FileNotFoundError):
        from_nir(tmp_path / "missing.nir")


def test_residual_skips_export_as_one_by_one_convolutions(tmp_path):
    """A small option-A residual block (identity skip and strided skip with zero channels)."""
    from spikecast.zoo.cifar_resnet import BasicBlock

    torch.manual_seed(0)
    ann = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        BasicBlock(4, 4, 1), BasicBlock(4, 8, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 5)).eval()
    x = torch.randn(64, 3, 8, 8)
    snn = spikecast.convert(ann, calib=(x,), progress=False, profile="nir", timesteps=8, correction="none")
    graph = to_nir_graph(snn)
    skips = [n for name, n in graph.nodes.items() if name.endswith("_skip")]
    assert len(skips) == 2 and {tuple(n.stride) for n in skips} == {(1, 1), (2, 2)}
    path = to_nir(snn, tmp_path / "res.nir")
    back = from_nir(path)
    assert torch.equal(snn.simulate(x, 8), back.simulate(x, 8))


def test_cli_export_nir_runs_the_readers(nir_snn, tmp_path, capsys):
    nir_snn.save(tmp_path / "snn")  # a saved network no longer carries the traced input shape
    code = main(["export", "--snn", str(tmp_path / "snn"), "--model", "zoo:digits-cnn", "--nir", "--data", "digits:test",
                 "--eval-images", "60",
                 "--check-timesteps", "8", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "out" / "snn.nir").is_file()
    assert "sinabs" in out and "same top-1 60/60" in out
    back = from_nir(tmp_path / "out" / "snn.nir")
    x, _ = digits_tensors("test")
    assert torch.equal(back.simulate(x[:60], 8), nir_snn.simulate(x[:60], 8))
    assert main(["export", "--model", "zoo:digits-cnn", "--nir", "--out", str(tmp_path / "o2")]) == 2
    assert "--nir exports a spiking network" in capsys.readouterr().err


def test_weight_grid_makes_every_sum_exact(digits, tmp_path):
    """weight_bits=8: each layer's weights and biases are k * 2^-s with |k| < 128; with the input on a
    grid, the network's currents do not depend on the order of the additions (here: float64 vs float32)."""
    from spikecast.export.nir import on_input_grid

    x, xt, _ = digits
    snn = spikecast.convert("zoo:digits-cnn", calib=(x,), progress=False, profile="nir", timesteps=8,
                            correction="light", weight_bits=8)
    graph = to_nir_graph(snn)
    for name, node in graph.nodes.items():
        if hasattr(node, "weight"):
            shift = int(np.floor(np.log2(127 / np.abs(node.weight).max())))
            k = node.weight.astype(np.float64) * 2.0 ** shift
            assert np.array_equal(k, np.round(k)) and np.abs(k).max() < 128, name
    xq = on_input_grid(xt, 8, limit=float(x.abs().max()))
    assert torch.equal(on_input_grid(xq, 8, limit=float(x.abs().max())), xq)
    out32 = snn.simulate(xq, 8)
    out64 = from_nir(to_nir(snn, tmp_path / "g.nir")).double().simulate(xq.double(), 8)
    assert torch.equal(out32.double(), out64)
    with pytest.raises(ValueError, match="belongs to profile='nir'"):
        Recipe(weight_bits=8)
