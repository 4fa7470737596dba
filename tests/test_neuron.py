"""Tests of the integrate-and-fire neuron (spikecast.nn.neuron.IFNeuron).

All currents and thresholds below are dyadic rationals (k / 2**n) and all T are small, so every
membrane update is exact in float32 and the spike counts can be compared with the closed form
``clamp(floor(T*I/theta + v_init), 0, T)`` exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

from spikecast import IFNeuron

TIMESTEPS = (1, 2, 3, 4, 7, 8, 16, 31, 64)


def expected_count(T: int, current: float, theta: float, v_init: float = 0.5) -> int:
    return min(max(math.floor(T * current / theta + v_init), 0), T)


def run_constant(neuron: IFNeuron, current: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Drive ``neuron`` with a constant current for T steps; (spike counts, summed output)."""
    neuron.reset()
    spikes = torch.zeros_like(current)
    total = torch.zeros_like(current)
    theta = neuron.threshold
    for _ in range(T):
        out = neuron(current.clone())
        # every output is either 0 or exactly theta (one spike per step at most)
        is_spike = out != 0
        assert torch.equal(out[is_spike], theta.expand_as(out)[is_spike])
        spikes += is_spike
        total += out
    return spikes, total


# dyadic currents: negative, zero, tiny, exactly half-threshold multiples, at and above theta
CURRENTS = [-2.0, -1.0, -0.5, -1 / 64, 0.0, 1 / 128, 1 / 64, 3 / 64, 0.125, 0.25, 5 / 16, 0.375, 0.5,
            0.5 + 1 / 64, 0.625, 0.75, 7 / 8, 63 / 64, 1.0, 1.0 + 1 / 64, 1.5, 2.0, 8.0]


@pytest.mark.parametrize("theta", [1.0, 0.5, 2.0, 0.25])
def test_spike_count_matches_closed_form(theta):
    currents = torch.tensor([c * theta for c in CURRENTS] + [c for c in CURRENTS], dtype=torch.float32)
    neuron = IFNeuron(theta, "n")
    for T in TIMESTEPS:
        spikes, total = run_constant(neuron, currents, T)
        expected = torch.tensor([expected_count(T, float(c), theta) for c in currents])
        assert torch.equal(spikes.long(), expected), f"T={T}: {spikes.tolist()} != {expected.tolist()}"
        # each spike carries exactly theta
        assert torch.equal(total, expected.float() * theta)


def test_closed_form_examples_by_hand():
    # a few values worked out by hand, independent of expected_count
    n = IFNeuron(1.0)
    cur = torch.tensor([0.25, 0.5, 0.125, -0.25, 1.5, 0.75])
    spikes, _ = run_constant(n, cur, 4)
    # 0.25*4+0.5=1.5 ->1 ; 0.5*4+0.5=2.5 ->2 ; 0.125*4+0.5=1.0 ->1 (v >= theta fires) ; neg ->0 ;
    # 1.5 -> clipped to 4 ; 0.75*4+0.5 = 3.5 -> 3
    assert spikes.tolist() == [1, 2, 1, 0, 4, 3]


def test_mean_output_is_rounded_clipped_relu():
    """theta*N/T is I quantised to theta/T with round-half-up and clipped to [0, theta]."""
    theta, T = 2.0, 32
    cur = torch.arange(-64, 96, dtype=torch.float32) / 32.0  # step 1/32, from -2 to 3
    _, total = run_constant(IFNeuron(theta), cur, T)
    mean = total / T
    q = theta / T
    want = (torch.floor(cur / q + 0.5) * q).clamp(0.0, theta)
    assert torch.equal(mean, want)
    # the quantisation error is at most half a level inside the range
    inside = (cur >= 0) & (cur <= theta)
    assert (mean[inside] - cur[inside]).abs().max() <= q / 2


@pytest.mark.parametrize("v_init", [0.0, 0.25, 0.75, 0.875])
def test_v_init_changes_the_rounding(v_init):
    theta = 1.0
    currents = torch.tensor(CURRENTS, dtype=torch.float32)
    neuron = IFNeuron(theta, v_init=v_init)
    for T in TIMESTEPS:
        spikes, _ = run_constant(neuron, currents, T)
        expected = torch.tensor([expected_count(T, c, theta, v_init) for c in CURRENTS])
        assert torch.equal(spikes.long(), expected), f"v_init={v_init} T={T}"
    # v_init = 0 is floor (truncation): I = 0.75 theta for 1 step gives no spike, 0.5 start gives one
    assert run_constant(IFNeuron(1.0, v_init=0.0), torch.tensor([0.75]), 1)[0].item() == 0
    assert run_constant(IFNeuron(1.0, v_init=0.5), torch.tensor([0.75]), 1)[0].item() == 1


def test_initial_membrane_is_v_init_times_theta():
    n = IFNeuron(torch.tensor([[[2.0]], [[0.5]]]), v_init=0.25)
    out = n(torch.zeros(1, 2, 1, 1))
    assert torch.equal(out, torch.zeros(1, 2, 1, 1))
    assert torch.equal(n.v.flatten(), torch.tensor([0.5, 0.125]))


def test_per_channel_thresholds():
    thetas = torch.tensor([0.25, 0.5, 1.0, 4.0])
    neuron = IFNeuron(thetas.view(4, 1, 1), "conv")
    # batch 2, 4 channels, 3x5 map: currents are dyadic multiples of 1/64 in [-1, 5]
    gen = torch.Generator().manual_seed(3)
    cur = torch.randint(-64, 5 * 64, (2, 4, 3, 5), generator=gen).float() / 64
    for T in (1, 5, 16, 40):
        spikes, total = run_constant(neuron, cur, T)
        theta_full = thetas.view(1, 4, 1, 1).expand_as(cur)
        expected = torch.floor(T * cur / theta_full + 0.5).clamp(0, T)
        assert torch.equal(spikes, expected)
        assert torch.equal(total, expected * theta_full)
    # channels really differ: same current, different counts
    same = torch.full((1, 4, 1, 1), 0.5)
    spikes, _ = run_constant(neuron, same, 8)
    assert spikes.flatten().tolist() == [8, 8, 4, 1]


def test_reset_restores_state():
    neuron = IFNeuron(1.0)
    cur = torch.tensor([0.3125, 0.6875, 0.0, 1.25])
    first = [neuron(cur.clone()) for _ in range(5)]
    assert neuron.v is not None
    neuron.reset()
    assert neuron.v is None
    second = [neuron(cur.clone()) for _ in range(5)]
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    # without reset the state carries over and the next 5 steps differ from the first 5
    third = [neuron(cur.clone()) for _ in range(5)]
    assert any(not torch.equal(a, c) for a, c in zip(first, third))
    # reset also restarts a different input shape cleanly
    neuron.reset()
    out = neuron(torch.full((2, 3), 0.5))
    assert out.shape == (2, 3) and torch.equal(out, torch.ones(2, 3))


def test_soft_reset_keeps_the_residual():
    # reset by subtraction: the residue above threshold is kept, not discarded
    n = IFNeuron(1.0, v_init=0.0)
    out1 = n(torch.tensor([1.75]))
    assert out1.item() == 1.0 and n.v.item() == 0.75
    out2 = n(torch.tensor([0.25]))
    assert out2.item() == 1.0 and n.v.item() == 0.0


def test_record_counts_spikes_and_firing_rate():
    n = IFNeuron(1.0)
    n.record = True
    cur = torch.tensor([0.25, 0.5, 0.0, 2.0])
    spikes, _ = run_constant(n, cur, 8)
    assert n.spike_count == float(spikes.sum())
    assert n.neuron_steps == 4 * 8
    assert n.firing_rate == pytest.approx(float(spikes.sum()) / 32)
    n.reset()
    assert n.firing_rate == 0.0


def test_invalid_arguments():
    with pytest.raises(ValueError):
        IFNeuron(0.0)
    with pytest.raises(ValueError):
        IFNeuron(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError):
        IFNeuron(float("inf"))
    with pytest.raises(ValueError):
        IFNeuron(1.0, mask_ratio=1.0)
    with pytest.raises(ValueError):
        IFNeuron(1.0, mask_ratio=-0.1)


# ---------------------------------------------------------------------------- spike masking
def _masked_run(p: float, seed: int, T: int, cur: torch.Tensor, rescale: bool = True):
    neuron = IFNeuron(1.0, mask_ratio=p, mask_seed=seed, mask_rescale=rescale)
    neuron.record = True
    neuron.reset()
    outs = [neuron(cur.clone()) for _ in range(T)]
    return neuron, torch.stack(outs)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_masking_transmits_fraction_one_minus_p(p):
    T = 64
    cur = torch.full((4096,), 0.5)  # 32 spikes per neuron per 64 steps, exactly
    neuron, outs = _masked_run(p, seed=7, T=T, cur=cur)
    # the neuron itself still fires (and resets) on schedule: masking only hits transmission
    n_spikes = 4096 * expected_count(T, 0.5, 1.0)
    assert neuron.spike_count == n_spikes
    transmitted = int((outs != 0).sum())
    # binomial(n_spikes, 1-p): 6 sigma bound
    sigma = math.sqrt(n_spikes * p * (1 - p))
    assert abs(transmitted - n_spikes * (1 - p)) < 6 * sigma
    # it really masks something
    assert transmitted < n_spikes
    # rescaled: a transmitted spike carries theta/(1-p) ...
    values = outs[outs != 0].unique()
    assert values.numel() == 1 and values.item() == pytest.approx(1.0 / (1.0 - p))
    # ... so the mean output is unbiased: E[sum] = theta * N
    total = float(outs.sum())
    assert abs(total - n_spikes) < 6 * sigma / (1 - p)
    mean_rate = outs.mean(0)  # per-neuron mean output, expected 0.5
    assert abs(float(mean_rate.mean()) - 0.5) < 0.01


def test_masking_without_rescale_carries_theta():
    p = 0.5
    neuron, outs = _masked_run(p, seed=1, T=32, cur=torch.full((2048,), 0.75), rescale=False)
    values = outs[outs != 0].unique()
    assert values.tolist() == [1.0]
    n_spikes = neuron.spike_count
    expected_mean = (1 - p) * n_spikes
    assert abs(float(outs.sum()) - expected_mean) < 6 * math.sqrt(n_spikes * p * (1 - p))


def test_masking_is_deterministic_for_a_seed_and_restarts_at_reset():
    cur = torch.linspace(0.0, 1.0, 1000)
    _, a = _masked_run(0.3, seed=11, T=20, cur=cur)
    _, b = _masked_run(0.3, seed=11, T=20, cur=cur)
    assert torch.equal(a, b)
    # the same neuron object, two simulations separated by reset(): identical
    n = IFNeuron(1.0, mask_ratio=0.3, mask_seed=11)
    first = torch.stack([n(cur.clone()) for _ in range(20)])
    n.reset()
    second = torch.stack([n(cur.clone()) for _ in range(20)])
    assert torch.equal(first, second)
    assert torch.equal(first, a)
    # another seed gives another mask
    _, c = _masked_run(0.3, seed=12, T=20, cur=cur)
    assert not torch.equal(a, c)


def test_masking_off_by_default_is_exact():
    cur = torch.rand(500, generator=torch.Generator().manual_seed(0))
    n = IFNeuron(1.0)
    outs = torch.stack([n(cur.clone()) for _ in range(10)])
    assert set(outs.unique().tolist()) <= {0.0, 1.0}


def test_signed_neuron_keeps_the_constant_input_formula_and_retracts_transient_spikes():
    from spikecast.nn.neuron import IFNeuron

    theta, T = 0.5, 64
    currents = torch.tensor([-0.25, 0.0, 0.125, 0.1875, 0.5, 0.75])
    neuron = IFNeuron(theta, "signed", signed=True)
    total = sum(neuron(currents.clone()) for _ in range(T))
    expected = torch.clamp(torch.floor(T * currents / theta + 0.5), 0, T) * theta
    assert torch.equal(total, expected)
    # a positive kick then a negative drive of the same charge: the binary neuron keeps its spike,
    # the signed one takes it back, so its net output matches relu(mean input) = 0
    for signed, net in ((False, 1.0), (True, 0.0)):
        n = IFNeuron(1.0, "kick", signed=signed)
        out = n(torch.tensor([1.0])) + n(torch.tensor([-1.0])) + n(torch.tensor([0.0]))
        assert float(out) == net


# ---------------------------------------------------------------------------- calibration corrections
def test_bias_is_a_current_added_every_step_and_v_offset_an_initial_charge():
    current = torch.tensor(CURRENTS)
    for T in (4, 16):
        a = IFNeuron(1.0, "a")
        a.set_correction(bias=torch.tensor(0.125))
        b = IFNeuron(1.0, "b")
        _, out_a = run_constant(a, current, T)
        _, out_b = run_constant(b, current + 0.125, T)
        assert torch.equal(out_a, out_b)
        c = IFNeuron(1.0, "c")
        c.set_correction(v_offset=torch.tensor(0.25))
        counts, _ = run_constant(c, current, T)
        expected = [expected_count(T, float(i), 1.0, v_init=0.75) for i in CURRENTS]
        assert counts.tolist() == expected
    with pytest.raises(ValueError, match="finite"):
        IFNeuron(1.0, "bad").set_correction(bias=torch.tensor(float("nan")))


@pytest.mark.parametrize("signed", [False, True])
def test_fused_kernel_equals_eager_step(monkeypatch, signed):
    from spikecast.nn import neuron as neuron_module

    g = torch.Generator().manual_seed(0)
    theta = (torch.rand(1, 4, 1, 1, generator=g) + 0.5)
    currents = [torch.randn(3, 4, 5, 5, generator=g) * 0.6 for _ in range(12)]

    def run(min_elements):
        monkeypatch.setattr(neuron_module, "COMPILE_MIN_ELEMENTS", min_elements)
        n = IFNeuron(theta, "n", signed=signed)
        n.set_correction(bias=torch.full((1, 4, 1, 1), 0.03), v_offset=torch.full((1, 4, 1, 1), -0.1))
        return torch.stack([n(c) for c in currents])

    eager = run(1 << 40)
    fused = run(1)
    if not neuron_module._compile_state["enabled"]:
        pytest.skip("torch.compile is unavailable on this machine (the eager path is what runs)")
    assert torch.equal(eager, fused)


@pytest.mark.parametrize("kind, compiled", [({}, False), ({"signed": True}, False), ({"levels": 2, "signed": True}, False),
                                            ({"bipolar": True}, False), ({"signed": True}, True)])
def test_output_sum_is_the_sum_of_the_steps(monkeypatch, kind, compiled):
    """The rate-only path (compiled: a scan that keeps no spike train) gives the sum of the step
    outputs, continues the buffered state across calls, and accepts a broadcast input."""
    from spikecast.nn import neuron as neuron_module

    monkeypatch.setattr(neuron_module, "SUM_SCAN_MIN_ELEMENTS", 1 if compiled else 1 << 40)
    g = torch.Generator().manual_seed(1)
    theta = torch.rand(1, 4, 1, 1, generator=g) + 0.5
    currents = torch.randn(24, 3, 4, 5, 5, generator=g) * 0.6  # 24 steps: calls of 16 and 8, scans of 8

    def neuron():
        n = IFNeuron(theta, "n", **kind)
        n.set_correction(bias=torch.full((1, 4, 1, 1), 0.03), v_offset=torch.full((1, 4, 1, 1), -0.1))
        return n

    reference, n = neuron(), neuron()
    steps = torch.stack([reference(c) for c in currents])
    total = n.output_sum(currents[:16]) + n.output_sum(currents[16:])
    assert torch.allclose(total, steps.sum(0), atol=1e-5)
    assert torch.allclose(n.v, reference.v, atol=1e-5)
    constant = currents[0].expand(8, *currents.shape[1:])
    n.reset()
    reference.reset()
    expected = torch.stack([reference(c) for c in constant]).sum(0)
    assert torch.allclose(n.output_sum(constant), expected, atol=1e-5)
    if compiled and not neuron_module._compile_state["enabled"]:
        pytest.skip("torch.compile is unavailable on this machine (the eager path is what ran)")


def test_reset_to_zero_loses_the_surplus_charge():
    """reset='zero' (NIR's IF as specified): fire at v >= theta, then v = 0; forward equals step."""
    neuron = IFNeuron(1.0, "n", v_init=0.0, reset="zero")
    current = torch.tensor([0.7, 1.5, 0.3])
    outs = [neuron(current).clone() for _ in range(3)]
    # 0.7: v 0.7, 1.4 -> fire -> 0, 0.7 (soft reset: 0.4, 1.1 -> fires again); 1.5: every step; 0.3: never
    assert torch.equal(torch.stack(outs), torch.tensor([[0., 1., 0.], [1., 1., 0.], [0., 1., 0.]]))
    state = neuron.initial_state(current)
    for expected in outs:
        out, state = neuron.step(current, state)
        assert torch.equal(out, expected)
    soft = IFNeuron(1.0, "s", v_init=0.0)
    assert float(sum(soft(current) for _ in range(3))[0]) == 2.0 and float(sum(outs)[0]) == 1.0
    assert IFNeuron.from_config(neuron.config(), {"threshold": neuron.threshold}).reset_mode == "zero"
    with pytest.raises(ValueError, match="binary"):
        IFNeuron(1.0, "b", signed=True, reset="zero")
    with pytest.raises(ValueError, match="reset must be"):
        IFNeuron(1.0, "c", reset="hard")
