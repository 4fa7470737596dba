"""Post-conversion calibration: layer-wise runtime, bias/potential correction, refinement,
per-channel rescaling, determinism, early exit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.ops import aten
from torch.utils._python_dispatch import TorchDispatchMode
from torch import nn

import spikecast
from spikecast.calibrate.sample import calibration_set
from spikecast.convert.correction import CorrectionConfig, teacher_order
from spikecast.pipeline import correct
from spikecast.calibrate.rescale import unit_thresholds
from spikecast.calibrate.thresholds import CalibrationConfig, calibrate
from spikecast.pipeline import prepare
from spikecast.convert.spiking import NeuronConfig, to_spiking
from spikecast.errors import CalibrationError
from spikecast.graph.sites import site_nodes
from spikecast.convert.layerwise import LayerwiseSimulation
from spikecast.runtime.network import SimulationConfig, SpikingNetwork

pytestmark = pytest.mark.usefixtures("single_thread")


class _ResidualNet(nn.Module):
    """conv-BN-ReLU stem, one residual block with F.relu, pooling, linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1, self.conv2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 12, 3, padding=1, stride=2)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x)
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(y)) + x)
        x = F.relu(self.conv3(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _model_and_data(seed=0):
    torch.manual_seed(seed)
    model = _ResidualNet().eval()
    for m in model.modules():  # non-trivial BN statistics so folding matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    calib = torch.randn(96, 3, 12, 12)
    held_out = torch.randn(64, 3, 12, 12)
    return model, calib, held_out


def _snn(model, calib, T, level="none", signed=False, method="percentile", per_channel=False):
    # the correction alone (no label-free reconstruction before it, which "auto" runs at T <= 8)
    return spikecast.convert(model, calib=calib, timesteps=T, correction=level, signed=signed, thresholds=method,
                             per_channel=per_channel, reconstruct="off", progress=False)


def _site_rates(snn, x, T):
    """Per neuron, the time-mean output on x from the ordinary runtime (forward hooks)."""
    sums, hooks = {}, []
    for name, neuron in snn.neurons().items():
        hooks.append(neuron.register_forward_hook(
            lambda m, a, o, n=name: sums.__setitem__(n, o.double() if n not in sums else sums[n] + o)))
    try:
        snn.simulate(x, T)
    finally:
        for h in hooks:
            h.remove()
    return {n: s / T for n, s in sums.items()}


def test_layerwise_simulation_matches_the_runtime():
    model, calib, x = _model_and_data()
    snn = _snn(model, calib, 8, signed=True)
    reference = _site_rates(snn, x, 8)
    sim = LayerwiseSimulation(snn.graph_module, x, 8, snn.config, batch_size=24)  # batches that do not divide 64
    for k, node in enumerate(sim.nodes):
        rate = sim.commit(k)
        ref = reference[sim.neuron(k).name]
        ref_channel = ref.mean(dim=[d for d in range(ref.dim()) if d != 1])
        assert torch.allclose(rate, ref_channel, atol=1e-6), sim.neuron(k).name
    assert sim.recorded_bytes == 0  # every train freed once its last reader ran


class _ConvSamples(TorchDispatchMode):
    """Counts the samples every convolution processes (time batching makes fewer, larger calls:
    count samples, not calls)."""

    def __init__(self):
        super().__init__()
        self.samples = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (aten.convolution, aten.conv2d, aten._convolution, aten.mkldnn_convolution):
            self.samples += args[0].shape[0]
        return func(*args, **(kwargs or {}))


def test_layerwise_runs_after_the_first_reuse_the_input_currents():
    model, calib, x = _model_and_data()
    snn = _snn(model, calib, 8, signed=True)
    cached = LayerwiseSimulation(snn.graph_module, x, 8, snn.config, batch_size=24)
    seen = _ConvSamples()
    with seen:
        first = cached.run(0)
    after_first = seen.samples
    assert after_first == len(x)  # the stem's convolution of the analog input: once per image
    neuron = cached.neuron(0)
    neuron.set_correction(torch.full_like(neuron.threshold, 0.05), None)  # only the neuron changes
    with seen:
        second = cached.run(0)
    assert seen.samples == after_first  # no convolution ran again
    assert not torch.equal(first, second)
    # the same with no room to keep currents: recomputed, same values
    neuron.set_correction(None, None)
    uncached = LayerwiseSimulation(snn.graph_module, x, 8, snn.config, batch_size=24, cache_bytes=0)
    with seen:
        assert torch.equal(uncached.run(0), first)
        neuron.set_correction(torch.full_like(neuron.threshold, 0.05), None)
        assert torch.equal(uncached.run(0), second)
    assert seen.samples == 3 * after_first
    neuron.set_correction(None, None)


class _PooledBranchNet(nn.Module):
    """Inception-style: a spiking stem, two branches concatenated, then a stride-1 max-pool branch
    next to a branch that reads the concatenation unpooled - the pool moves before new neurons
    (``@pooled``) that read the branch convolutions' currents."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.a, self.b = nn.Conv2d(6, 4, 3, padding=1), nn.Conv2d(6, 3, 1)
        self.proj, self.side = nn.Conv2d(7, 5, 1), nn.Conv2d(7, 3, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        h = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        h = torch.cat([F.relu(self.proj(F.max_pool2d(h, 3, 1, 1))), F.relu(self.side(h))], 1)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_layerwise_pooled_neurons_read_the_kept_currents_of_their_unpooled_twin():
    torch.manual_seed(0)
    calib, x = torch.randn(48, 3, 10, 10), torch.randn(40, 3, 10, 10)
    snn = spikecast.convert(_PooledBranchNet().eval(), calib=calib, timesteps=8, correction="none", signed=True,
                            reconstruct="off", progress=False)
    reference = _site_rates(snn, x, 8)

    def commit_all(**kwargs):
        sim = LayerwiseSimulation(snn.graph_module, x, 8, snn.config, batch_size=16, **kwargs)
        seen = _ConvSamples()
        with seen:
            rates = {sim.neuron(k).name: sim.commit(k) for k in range(len(sim.nodes))}
        return sim, rates, seen.samples

    sim, rates, samples = commit_all()
    pooled = [k for k in range(len(sim.nodes)) if sim.neuron(k).name.endswith("@pooled")]
    assert len(pooled) == 2 and sorted(sim._shortcuts) == pooled
    for k in pooled:  # each right after the neuron whose currents it reads, in a valid order
        source = sim._shortcuts[k][0]
        assert source == k - 1 and sim.neuron(k).name == sim.neuron(source).name + "@pooled"
    for name, rate in rates.items():
        ref = reference[name]
        assert torch.allclose(rate, ref.mean(dim=[d for d in range(ref.dim()) if d != 1]), atol=1e-6), name
    # with no room to keep currents, the pooled neurons recompute the branch convolutions: same rates,
    # one more convolution of every image per pooled neuron
    _, recomputed, more = commit_all(cache_bytes=0)
    assert all(torch.allclose(recomputed[n], r, atol=1e-6) for n, r in rates.items())
    assert more - samples == 2 * len(x) * 8


class _LinearWork(TorchDispatchMode):
    """Counts the multiply-adds of every linear layer."""

    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is aten.linear:
            self.macs += args[0].numel() * args[1].shape[0]
        return func(*args, **(kwargs or {}))


def test_layerwise_cuts_the_residual_stream_of_a_transformer(monkeypatch):
    # a transformer's residual stream is no neuron: without cuts, every neuron's input part reaches
    # back through all earlier blocks, and every block's trains stay alive to the end
    from test_compensation import TinyViT, X

    model = TinyViT(depth=3).eval()
    calib = torch.randn(48, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    snn = spikecast.convert(model, calib=calib, timesteps=8, correction="none", reconstruct="off", progress=False)
    reference = _site_rates(snn, X, 8)

    def commit_all():
        sim = LayerwiseSimulation(snn.graph_module, X, 8, snn.config, batch_size=10)  # blocks that do not divide 24
        work, rates, peak = _LinearWork(), [], 0
        with work:
            for k in range(len(sim.nodes)):
                rates.append(sim.commit(k))
                peak = max(peak, sim.recorded_bytes)
        assert sim.recorded_bytes == 0
        return sim, rates, work.macs, peak

    sim, rates, macs, peak = commit_all()
    assert len(sim._cut_parts) >= 3  # the stream after each block's attention and MLP
    for k, rate in enumerate(rates):
        ref = reference[sim.neuron(k).name]
        cdim = 2 if ref.dim() == 3 else 1
        assert torch.allclose(rate, ref.double().mean(dim=[d for d in range(ref.dim()) if d != cdim]), atol=1e-6)
    monkeypatch.setattr(LayerwiseSimulation, "_find_cuts", lambda self, *a: frozenset())
    plain, plain_rates, plain_macs, plain_peak = commit_all()
    assert not plain._cut_parts and plain.bytes_per_image < sim.bytes_per_image  # the estimate counts cuts
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(rates, plain_rates))
    assert macs < 0.8 * plain_macs and peak < plain_peak


def test_layerwise_blocks_and_step_chunks_do_not_change_results(monkeypatch):
    from spikecast.convert import layerwise

    model, calib, x = _model_and_data()
    snn = _snn(model, calib, 8, signed=True)
    reference = LayerwiseSimulation(snn.graph_module, x, 8, snn.config, batch_size=64)
    rates = [reference.commit(k) for k in range(len(reference.nodes))]
    monkeypatch.setattr(layerwise, "BLOCK_ELEMENTS", 3000)  # a few images per block, chunks of steps
    monkeypatch.setattr(layerwise, "STEP_CHUNK", 3)  # chunks that do not divide T
    small = LayerwiseSimulation(snn.graph_module, x, 8, snn.config, batch_size=64)
    assert [len(list(small._blocks(k, len(x)))) > 1 for k in range(len(small.nodes))] == [True] * len(small.nodes)
    for k, rate in enumerate(rates):
        assert torch.allclose(small.commit(k), rate, atol=1e-9), k


def test_layerwise_currents_are_those_the_neuron_sees_and_fit_the_cache():
    model, calib, x = _model_and_data()
    snn = _snn(model, calib, 8, signed=True)

    def simulation(**kwargs):
        sim = LayerwiseSimulation(snn.graph_module, x, 8, snn.config, batch_size=16, **kwargs)
        sim.commit(0)  # neuron 1 reads neuron 0's spike train
        return sim

    sim = simulation()
    currents = sim.currents(1, 40)
    assert currents.shape[:2] == (8, 40)
    assert not torch.equal(currents[0], currents[-1])  # driven by spikes: changes with the step
    # replaying them through the neuron gives the runtime's rate on those images
    neuron = sim.neuron(1)
    neuron.reset()
    out = torch.stack([neuron(c) for c in currents])
    rate = out.double().mean(dim=(0, 1, 3, 4))
    assert torch.allclose(rate, sim.run(1, limit=40), atol=1e-9)
    # a cache with room for 20 images: the whole blocks that fit, at least one block
    per_image = 8 * currents[0, 0].numel() * 4
    block = next(sim._blocks(1, 40))[0].stop  # blocks of equal size: 14, 14, 12
    assert block == 14
    assert simulation(cache_bytes=20 * per_image).currents(1, 40).shape[1] == block
    assert torch.equal(simulation(cache_bytes=0).currents(1, 40), currents[:, :block])
    # the first neuron's current comes from the analog input alone: one step's worth, every step
    first = LayerwiseSimulation(snn.graph_module, x, 8, snn.config, batch_size=16).currents(0, 40)
    assert first.shape[:2] == (8, 40) and torch.equal(first[0], first[-1])


def _layer_errors(snn, ann_graph, x, T):
    """Per site, mean |channel mean of ANN activation - channel mean of SNN rate| on x."""
    acts, hooks = {}, []
    for _, site in site_nodes(ann_graph):
        hooks.append(site.register_forward_hook(lambda m, a, o, n=site.name: acts.__setitem__(n, o)))
    with torch.no_grad():
        ann_graph(x)
    for h in hooks:
        h.remove()
    rates = _site_rates(snn, x, T)
    errs = {}
    for n, r in rates.items():
        dims = [d for d in range(r.dim()) if d != 1]
        errs[n] = float((acts[n].double().mean(dim=dims) - r.mean(dim=dims)).abs().mean())
    return errs


def test_bias_correction_reduces_layer_error_on_held_out_data():
    model, calib, held_out = _model_and_data()
    T = 8
    gm = prepare(model, calib[:2])
    calibrated, _ = calibrate(gm, calib, CalibrationConfig(), progress=False)
    plain = SpikingNetwork(to_spiking(calibrated, NeuronConfig()), SimulationConfig(timesteps=T))
    fixed = correct(plain, calibrated, calib, CorrectionConfig(level="light", timesteps=T, potential=False),
                    progress=False)
    before = _layer_errors(plain, calibrated, held_out, T)
    after = _layer_errors(fixed, calibrated, held_out, T)
    assert sum(after.values()) < 0.5 * sum(before.values()), (before, after)
    assert all(after[n] < before[n] for n in before), (before, after)
    # and the network output gets closer to the ANN's
    with torch.no_grad():
        ref = model(held_out)
    assert (fixed(held_out) - ref).abs().mean() < (plain(held_out) - ref).abs().mean()
    # the input network is untouched; the corrected one says what was done
    assert all(n.bias is None for n in plain.neurons().values())
    info = fixed.metadata["correction"]
    assert info["bias"] and not info["potential"] and len(info["sites"]) == len(before)


def test_potential_and_refinement_set_their_parameters_and_save_load(tmp_path):
    model, calib, held_out = _model_and_data()
    snn = _snn(model, calib, 4, level="advanced", signed=True)
    neurons = snn.neurons()
    assert all(n.bias is not None and n.v_offset is not None for n in neurons.values())
    assert any(n.threshold.numel() > 1 for n in neurons.values())  # refined per channel
    snn.save(tmp_path / "snn")
    again = spikecast.load(tmp_path / "snn")
    assert torch.equal(snn(held_out), again(held_out))


def test_charge_form_corrects_with_initial_charge_only():
    model, calib, held_out = _model_and_data()
    T = 4
    gm = prepare(model, calib[:2])
    calibrated, _ = calibrate(gm, calib, CalibrationConfig(), progress=False)
    plain = SpikingNetwork(to_spiking(calibrated, NeuronConfig(signed=True)), SimulationConfig(timesteps=T))
    charged = correct(plain, calibrated, calib, CorrectionConfig(level="light", timesteps=T, form="charge"),
                      progress=False)
    assert all(n.bias is None and n.v_offset is not None for n in charged.neurons().values())
    assert charged.metadata["correction"]["form"] == "charge"
    # at its budget it corrects as well as the current form does (layer errors of the first T steps)
    before = _layer_errors(plain, calibrated, held_out, T)
    after = _layer_errors(charged, calibrated, held_out, T)
    assert sum(after.values()) < 0.7 * sum(before.values()), (before, after)
    # a charge given once fades: over a long run the rates tend to the uncorrected network's, while
    # the current form keeps adding T's correction at every step
    current = correct(plain, calibrated, calib, CorrectionConfig(level="light", timesteps=T), progress=False)

    def drift(snn, steps):
        ours, base = _site_rates(snn, held_out, steps), _site_rates(plain, held_out, steps)
        return sum(float((ours[n] - base[n]).abs().mean()) for n in base)

    assert drift(charged, 16 * T) < 0.3 * drift(charged, T)
    assert drift(charged, 16 * T) < 0.5 * drift(current, 16 * T)
    with pytest.raises(ValueError, match="correction form"):
        CorrectionConfig(form="voltage")
    with pytest.raises(ValueError, match="no initial membrane charge"):
        spikecast.Recipe(profile="nir", signed=False, v_init=0.0, compensate=False, correction_form="charge")


def test_correction_is_deterministic_and_independent_of_batch_order():
    model, calib, _ = _model_and_data()
    perm = torch.randperm(len(calib), generator=torch.Generator().manual_seed(3))
    a = _snn(model, [calib[i:i + 32] for i in range(0, 96, 32)], 4, level="advanced", method="mse")
    b = _snn(model, [calib[perm][i:i + 40] for i in range(0, 96, 40)], 4, level="advanced", method="mse")
    for (name, na), nb in zip(a.neurons().items(), b.neurons().values()):
        assert torch.equal(na.threshold, nb.threshold), name
        assert torch.equal(na.bias, nb.bias) and torch.equal(na.v_offset, nb.v_offset), name


def test_teacher_order_and_bad_calibration_data():
    x = torch.randn(10, 3, 4, 4)
    assert torch.equal(teacher_order(x), teacher_order(x.flip(0)))
    assert torch.equal(teacher_order(calibration_set(x).images), teacher_order(x))
    bad = x.clone()
    bad[3, 0, 0, 0] = float("inf")
    with pytest.raises(CalibrationError, match="1 Inf"):
        calibration_set(bad)
    with pytest.raises(CalibrationError, match="empty"):
        calibration_set([])
    with pytest.raises(ValueError, match="calibration level"):
        CorrectionConfig(level="heavy")


def test_per_channel_rescaling_keeps_the_ann_function():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(5 * 4 * 4, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    x = torch.randn(40, 3, 8, 8)
    gm = prepare(model, x[:2])
    calibrated, _ = calibrate(gm, x, CalibrationConfig(method="max", per_channel=True), progress=False)
    thetas = [site.threshold for _, site in site_nodes(calibrated)]
    assert all(isinstance(t, torch.Tensor) and t.numel() > 1 for t in thetas)
    rescaled, names = unit_thresholds(calibrated)
    # the first two sites feed convs/linears directly; the flatten between site 2 and the linear
    # stops that one; the third feeds a linear
    assert len(names) == 2
    with torch.no_grad():
        assert torch.allclose(rescaled(x), calibrated(x), rtol=1e-5, atol=1e-6)
        assert torch.allclose(rescaled(x), model(x), rtol=1e-5, atol=1e-6)
    assert [float(s.threshold) for _, s in site_nodes(rescaled) if s.name in names] == [1.0, 1.0]
    # the input graph is untouched and the SNNs agree step by step up to float rounding
    assert all(torch.equal(a, s.threshold) for a, (_, s) in zip(thetas, site_nodes(calibrated)))
    snn_a = SpikingNetwork(to_spiking(calibrated), SimulationConfig())
    snn_b = SpikingNetwork(to_spiking(rescaled), SimulationConfig())
    assert torch.allclose(snn_a(x, 16), snn_b(x, 16), atol=1e-3)


def test_early_exit_bounds():
    model, calib, held_out = _model_and_data()
    snn = _snn(model, calib, 8)
    labels = model(held_out).argmax(1)
    res = spikecast.validate(model, snn, (held_out, labels), timesteps=[1, 8], progress=False,
                             early_exit=[1.0, 1e-9, 0.5, 0.9])
    never, always, mid, high = res.early_exit
    assert never.mean_steps == 8 and never.exited == 0 and never.accuracy == res.snn_accuracy[8]
    assert always.mean_steps == 1 and always.accuracy == res.snn_accuracy[1] and always.exited == 1
    assert 1 <= mid.mean_steps <= high.mean_steps <= 8  # a higher confidence waits longer
    assert "Early exit" in res.table() and res.to_dict()["early_exit"][2]["confidence"] == 0.5
    one = spikecast.validate(model, snn, (held_out, labels), timesteps=[8], progress=False, early_exit=0.9)
    assert one.early_exit[0] == high
    with pytest.raises(ValueError, match="early_exit"):
        spikecast.validate(model, snn, held_out, timesteps=[8], progress=False, early_exit=1.5)


def test_memory_budget_caps_the_images_with_a_warning():
    model, calib, _ = _model_and_data()
    gm = prepare(model, calib[:2])
    calibrated, _ = calibrate(gm, calib, CalibrationConfig(), progress=False)
    snn = SpikingNetwork(to_spiking(calibrated, NeuronConfig()), SimulationConfig(timesteps=4))
    with pytest.warns(UserWarning, match="uses the first 16 of 96"):
        fixed = correct(snn, calibrated, calib, CorrectionConfig(level="light", timesteps=4, memory_budget=1),
                        progress=False)
    assert fixed.metadata["correction"]["images"] == 16


def test_a_site_that_never_fires_is_named_in_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[2].bias.fill_(-100.0)  # the second ReLU never passes anything
    x = torch.randn(64, 6)
    with pytest.warns(UserWarning) as caught:
        snn = spikecast.convert(model, calib=x, timesteps=8, progress=False)
    messages = " ".join(str(w.message) for w in caught)
    assert "never fired on the calibration data (threshold set to 1.0): 3" in messages  # the site: model[3]
    assert "never fired during correction at T=4: 3" in messages  # (T=8 reconstructs, trained for 4)
    assert len(snn.neurons()) == 2


class _CompensatedNet(nn.Module):
    """A GELU between two convolutions: the spiking graph has a stateful compensation module
    inside a neuron's input part."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(F.gelu(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_layerwise_resets_the_stateful_modules_of_an_input_part_between_blocks():
    torch.manual_seed(0)
    model = _CompensatedNet().eval()
    x = torch.randn(40, 3, 8, 8)
    snn = spikecast.convert(model, calib=x, timesteps=8, correction="none", reconstruct="off", progress=False)
    reference = _site_rates(snn, x, 8)
    sim = LayerwiseSimulation(snn.graph_module, x, 8, snn.config, batch_size=16)  # blocks 14, 14, 12
    assert any(sim._part_state), "no stateful module inside an input part: the test tests nothing"
    for k in range(len(sim.nodes)):
        rate = sim.commit(k)
        ref = reference[sim.neuron(k).name]
        assert torch.allclose(rate, ref.mean(dim=[d for d in range(ref.dim()) if d != 1]), atol=1e-6)
