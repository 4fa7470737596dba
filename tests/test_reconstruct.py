"""Label-free reconstruction (spikecast.quant.reconstruct): the quantised twin learns the ANN,
the recipe turns it on for few steps, the result is recorded and saved."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikecast
from spikecast.calibrate.sample import as_calibration_set
from spikecast.calibrate.thresholds import calibrate
from spikecast.graph.sites import site_nodes
from spikecast.pipeline import prepare
from spikecast.quant.qcfs import DropMasks, QCFSSite, to_qcfs
from spikecast.quant.reconstruct import ReconstructionConfig, _draw_batch, distill, reconstruct
from spikecast.recipe import AUTO_PER_CHANNEL_LEVELS, AUTO_RECONSTRUCT_DROP, AUTO_RECONSTRUCT_LEVELS, \
    AUTO_RECONSTRUCT_TIMESTEPS, Recipe, recipe_of
from spikecast.zoo.digits import digits_tensors


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x)) + x
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # confident logits: the quantisation error shows in the softmax
        net.fc.weight.mul_(40)
    return net


def images(n=128, seed=0):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def kl(ann, graph, x):
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(graph(x), -1), F.log_softmax(ann(x), -1), log_target=True,
                              reduction="batchmean"))


def test_reconstruction_leaves_its_input_graphs_and_returns_a_trained_constant_twin(net):
    x = images()
    normalised = prepare(net, x[:2])
    calibrated, _ = calibrate(normalised, as_calibration_set(x), Recipe(timesteps=4).calibration_config(),
                              progress=False)
    before = {k: v.clone() for k, v in calibrated.state_dict().items()}
    teacher = {k: v.clone() for k, v in normalised.state_dict().items()}
    trained, record = reconstruct(normalised, calibrated, as_calibration_set(x), 4,
                                  ReconstructionConfig(steps=150, batch_size=32), progress=False)
    assert record["loss_last"] < record["loss_first"] and record["levels"] == 4 and record["steps"] == 150
    assert record["anytime"] == 2  # trained at 4 and 8 levels in turn; the result has the levels asked for
    for k, v in calibrated.state_dict().items():  # a pure pass: the input graphs are untouched
        assert torch.equal(v, before[k]), k
    for k, v in normalised.state_dict().items():
        assert torch.equal(v, teacher[k]), k
    assert kl(net, trained, x) < kl(net, to_qcfs(calibrated, 4), x)
    sites = [s for _, s in site_nodes(trained)]
    assert sites and all(isinstance(s, QCFSSite) and s.threshold is not None and s.levels == 4 for s in sites)
    assert not any(p.requires_grad for p in trained.parameters())


def test_reconstruction_raises_few_step_accuracy_on_unseen_digits():
    # the trained digits CNN, one step: post-training thresholds alone lose ~6 points; the
    # reconstructed twin (taught by the ANN on the unlabeled train images) recovers most of it
    x, _ = digits_tensors("train")
    xt, yt = digits_tensors("test")
    ann = spikecast.zoo.create_model("digits-cnn", pretrained=True).eval()
    acc = {}
    for mode in ("off", "on"):
        snn = spikecast.convert(ann, x, timesteps=1, reconstruct=mode, reconstruct_steps=150, correction="none",
                                progress=False)
        with torch.no_grad():
            acc[mode] = float(snn(xt, timesteps=1).argmax(-1).eq(yt).float().mean())
    assert acc["on"] >= acc["off"] + 0.02, acc


def test_reconstruction_is_deterministic(net):
    x = images()
    normalised = prepare(net, x[:2])
    calibrated, _ = calibrate(normalised, as_calibration_set(x), Recipe(timesteps=4).calibration_config(),
                              progress=False)
    cfg = ReconstructionConfig(steps=20, batch_size=16)
    a, _ = reconstruct(normalised, calibrated, as_calibration_set(x), 4, cfg, progress=False)
    b, _ = reconstruct(normalised, calibrated, as_calibration_set(x), 4, cfg, progress=False)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_recipe_reconstructs_few_steps_by_default_and_records_it():
    assert Recipe(timesteps=4).reconstructs and Recipe(timesteps=AUTO_RECONSTRUCT_LEVELS).reconstructs
    assert not Recipe(timesteps=16).reconstructs and not Recipe().reconstructs
    assert Recipe(timesteps=4, levels=2).reconstructs and not Recipe(timesteps=8, levels=2).reconstructs
    assert not Recipe(timesteps=4, reconstruct="off").reconstructs and Recipe(timesteps=32, reconstruct="on").reconstructs
    assert not spikecast.Recipe(timesteps=4, profile="nir", signed=False, v_init=0.0, compensate=False).reconstructs
    # a recipe saved before reconstruction existed did not reconstruct
    assert not Recipe.from_dict({"timesteps": 4}).reconstructs
    assert Recipe.from_dict(Recipe(timesteps=4).to_dict()) == Recipe(timesteps=4)
    with pytest.raises(ValueError, match="reconstruct mode"):
        Recipe(reconstruct="yes")
    with pytest.raises(ValueError, match="reconstruction steps"):
        Recipe(reconstruct_steps=0)


def test_thresholds_per_channel_by_default_where_the_reconstruction_starts_from_them_at_four_values():
    assert Recipe().per_channel == "auto" and not Recipe().per_channel_used
    assert Recipe(timesteps=AUTO_PER_CHANNEL_LEVELS).per_channel_used and Recipe(timesteps=2).per_channel_used
    assert Recipe(timesteps=2, levels=2).per_channel_used and not Recipe(timesteps=4, levels=2).per_channel_used
    # per channel follows the budget trained for: T=8 trains for 4 by default, per layer when it trains for 8
    assert Recipe(timesteps=8).per_channel_used and not Recipe(timesteps=8, reconstruct_timesteps=8).per_channel_used
    assert not Recipe(timesteps=4, reconstruct="off").per_channel_used  # without a twin to absorb them
    assert not Recipe(timesteps=4, per_channel=False).per_channel_used and Recipe(per_channel=True).per_channel_used
    assert Recipe(timesteps=4).calibration_config().per_channel and not Recipe().calibration_config().per_channel
    # a recipe recorded before "auto" existed chose per layer
    assert Recipe.from_dict({"timesteps": 4, "reconstruct": "on"}).per_channel is False
    assert Recipe.from_dict(Recipe(timesteps=4).to_dict()).per_channel == "auto"
    with pytest.raises(ValueError, match="per_channel must be"):
        Recipe(per_channel="yes")


def test_a_reconstruction_trains_for_at_most_four_steps_by_default_and_the_snn_runs_its_whole_budget():
    assert AUTO_RECONSTRUCT_TIMESTEPS == 4
    r = Recipe(timesteps=8)
    assert r.reconstruct_timesteps == "auto" and r.reconstructs and r.calibration_timesteps == 4
    assert r.calibration_config().timesteps == 4 and r.correction_config().timesteps == 4
    assert r.simulation_config().timesteps == 8  # the default T of snn(x)
    assert Recipe(timesteps=4, levels=2).calibration_config().timesteps == 8  # levels x steps trained for
    assert Recipe(timesteps=2).calibration_timesteps == 2 and Recipe(timesteps=6).calibration_timesteps == 4
    r = Recipe(timesteps=8, reconstruct_timesteps=8)
    assert r.calibration_timesteps == 8 and r.correction_config().timesteps == 8
    assert Recipe(timesteps=16).calibration_timesteps == 16  # no reconstruction: calibrated for its budget
    assert Recipe(timesteps=16, reconstruct="on").calibration_timesteps == 4
    assert Recipe(timesteps=16, reconstruct="on", reconstruct_timesteps=16).calibration_timesteps == 16
    for bad in (0, 9, True, "four", 4.5):
        with pytest.raises(ValueError, match="reconstruct_timesteps must be 'auto' or an integer in 1..timesteps"):
            Recipe(timesteps=8, reconstruct_timesteps=bad)
    with pytest.raises(ValueError, match="this recipe does not reconstruct"):
        Recipe(timesteps=16, reconstruct_timesteps=4)
    # round trip; a recipe recorded before the field existed trained for its whole budget
    assert Recipe.from_dict(Recipe(timesteps=8).to_dict()) == Recipe(timesteps=8)
    assert Recipe.from_dict({"timesteps": 8, "reconstruct": "on"}).calibration_timesteps == 8
    assert Recipe.from_dict({"timesteps": 16, "reconstruct": "auto"}).reconstruct_timesteps == "auto"


def test_qdrop_only_where_the_reconstruction_trains_for_fewer_steps_than_the_network_runs():
    assert Recipe().reconstruct_drop == "auto" and 0 < AUTO_RECONSTRUCT_DROP < 1
    assert Recipe(timesteps=4).reconstruction_config().drop == 0.0  # trained for its whole budget
    assert Recipe(timesteps=8).reconstruct_drop_used == AUTO_RECONSTRUCT_DROP  # trained for 4, runs 8
    assert Recipe(timesteps=8).reconstruction_config().drop == AUTO_RECONSTRUCT_DROP
    assert Recipe(timesteps=8, reconstruct_timesteps=8).reconstruction_config().drop == 0.0
    assert Recipe(timesteps=2, levels=2).reconstruction_config().drop == 0.0
    assert Recipe(timesteps=4, reconstruct_drop=0.25).reconstruction_config().drop == 0.25
    assert Recipe(timesteps=8, reconstruct_drop=0).reconstruction_config().drop == 0.0
    for bad in (1.0, -0.1, True, "half"):
        with pytest.raises(ValueError, match="reconstruct_drop must be 'auto' or a fraction"):
            Recipe(timesteps=8, reconstruct_drop=bad)
    with pytest.raises(ValueError, match="this recipe does not reconstruct"):
        Recipe(timesteps=16, reconstruct_drop=0.5)
    # round trip; a recipe recorded before the field existed dropped nothing
    assert Recipe.from_dict(Recipe(timesteps=8).to_dict()) == Recipe(timesteps=8)
    old = {k: v for k, v in Recipe(timesteps=8).to_dict().items() if k != "reconstruct_drop"}
    assert Recipe.from_dict(old).reconstruction_config().drop == 0.0
    assert Recipe.from_dict({"timesteps": 16}).reconstruct_drop == "auto"  # no reconstruction: nothing to pin


def test_a_network_trained_for_four_steps_and_run_for_eight_is_the_four_step_network(net):
    x = images()
    # the T=8 default drops AUTO_RECONSTRUCT_DROP of the twin's roundings; the same share at T=4 gives its network
    settings = dict(reconstruct_steps=20, distill_steps=4, progress=False)
    four = spikecast.convert(net, x, timesteps=4, reconstruct_drop=AUTO_RECONSTRUCT_DROP, **settings)
    eight = spikecast.convert(net, x, timesteps=8, **settings)
    assert eight.config.timesteps == 8 and four.config.timesteps == 4
    rebuilt = eight.metadata["reconstruction"]
    assert rebuilt["levels"] == 4 and rebuilt["distill"]["timesteps"] == 4 and rebuilt["drop"] == AUTO_RECONSTRUCT_DROP
    assert eight.metadata["correction"]["timesteps"] == 4
    assert recipe_of(eight) == Recipe(timesteps=8, **{k: v for k, v in settings.items() if k != "progress"})
    a, b = four.graph_module.state_dict(), eight.graph_module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same weights, thresholds, charges
    held_out = images(32, seed=1)
    assert torch.equal(eight(held_out), four(held_out, timesteps=8))
    # trained for its whole budget it is another network
    full = spikecast.convert(net, x, timesteps=8, reconstruct_timesteps=8, **settings)
    assert full.metadata["reconstruction"]["levels"] == 8 and full.metadata["correction"]["timesteps"] == 8
    assert not torch.equal(full(held_out), eight(held_out))


def test_convert_at_four_steps_reconstructs_and_the_snn_follows_the_twin(net, tmp_path):
    x, held_out = images(), images(64, seed=1)
    plain = spikecast.convert(net, x, timesteps=4, reconstruct="off", correction="none", progress=False)
    rebuilt = spikecast.convert(net, x, timesteps=4, reconstruct_steps=150, correction="none", progress=False)
    assert "reconstruction" not in plain.metadata
    assert rebuilt.metadata["reconstruction"]["steps"] == 150
    assert recipe_of(rebuilt) == Recipe(timesteps=4, reconstruct_steps=150, correction="none")
    # per-channel thresholds where the reconstruction starts from them (the recipe's "auto"), per layer without
    assert any(n.threshold.numel() > 1 for n in rebuilt.neurons().values())
    assert all(n.threshold.numel() == 1 for n in plain.neurons().values())
    with torch.no_grad():
        ann = net(held_out)
    err = {name: float((snn(held_out, timesteps=4) - ann).pow(2).mean()) for name, snn in
           (("plain", plain), ("rebuilt", rebuilt))}
    assert err["rebuilt"] < err["plain"], err
    rebuilt.save(tmp_path / "snn")
    back = spikecast.load(tmp_path / "snn")
    assert torch.equal(back(held_out, timesteps=4), rebuilt(held_out, timesteps=4))
    assert back.metadata["reconstruction"] == rebuilt.metadata["reconstruction"]


def test_distillation_trains_a_copy_of_the_snn_towards_the_ann_and_records_it(net):
    x = images()
    # a plain conversion leaves room to learn: after a reconstruction the calibration KL is 0.0018 and
    # 80 steps lowered it by 2% (CI, another summation order: not at all, so nothing was kept)
    snn = spikecast.convert(net, x, timesteps=4, reconstruct="off", correction="none", distill_steps=0,
                            progress=False)
    assert "distill" not in snn.metadata.get("reconstruction", {})
    before = {k: v.clone() for k, v in snn.graph_module.state_dict().items()}
    normalised = prepare(net, x[:2])
    distilled, record = distill(snn, normalised, as_calibration_set(x),
                                ReconstructionConfig(distill_steps=80, distill_lr=1e-3, distill_batch_size=32),
                                progress=False)
    for k, v in snn.graph_module.state_dict().items():  # the input network is untouched
        assert torch.equal(v, before[k]), k
    assert record["steps"] == 80 and record["timesteps"] == 4 and record["loss_last"] < record["loss_first"]
    _, shorter = distill(snn, normalised, as_calibration_set(x), ReconstructionConfig(distill_steps=1),
                         timesteps=2, progress=False)
    assert shorter["timesteps"] == 2  # a budget other than the network's default T
    assert record["kept"] == "distilled" and record["kl_after"] < 0.9 * record["kl_before"], record
    assert record["agreement_after"] >= record["agreement_before"], record  # the rule that kept it
    assert not any(p.requires_grad for p in distilled.graph_module.parameters())
    changed = [k for k, v in distilled.graph_module.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(k.endswith(("weight", "bias")) for k in changed), changed  # thresholds, charges stay

    def snn_kl(network):
        with torch.no_grad():
            return float(F.kl_div(F.log_softmax(network(x, timesteps=4), -1), F.log_softmax(net(x), -1),
                                  log_target=True, reduction="batchmean"))
    assert snn_kl(distilled) < snn_kl(snn)
    # a distillation that wrecks the network (absurd learning rates) is not kept: the caller gets the input
    # back, whether top-1 agreement falls or (every image still agreeing) only the KL divergence rises
    wrecked, record = distill(snn, normalised, as_calibration_set(x),
                              ReconstructionConfig(distill_steps=3, distill_lr=1e4), progress=False)
    assert record["kept"] == "converted" and wrecked is snn, record
    assert record["agreement_after"] < record["agreement_before"], record
    wrecked, record = distill(snn, normalised, as_calibration_set(x),
                              ReconstructionConfig(distill_steps=5, distill_lr=10.0), progress=False)
    assert record["kept"] == "converted" and wrecked is snn, record
    assert record["agreement_after"] == record["agreement_before"] and record["kl_after"] > record["kl_before"]


def test_convert_distills_by_default_at_few_steps_and_old_recipes_did_not():
    assert Recipe(timesteps=4).distill_steps == ReconstructionConfig().distill_steps > 0
    assert Recipe.from_dict({"timesteps": 4, "reconstruct": "on"}).distill_steps == 0
    with pytest.raises(ValueError, match="distill steps"):
        Recipe(distill_steps=-1)
    x, _ = digits_tensors("train")
    ann = spikecast.zoo.create_model("digits-cnn", pretrained=True).eval()
    snn = spikecast.convert(ann, x[:128], timesteps=2, reconstruct_steps=20, distill_steps=5, progress=False)
    assert snn.metadata["reconstruction"]["distill"]["steps"] == 5
    assert recipe_of(snn).distill_steps == 5


def test_mixup_replaces_the_last_fraction_of_a_batch_by_mixes_of_two_of_its_images():
    x = torch.rand(40, 3, 8, 8)
    plain = _draw_batch(x, 16, False, torch.Generator().manual_seed(3))
    mixed = _draw_batch(x, 16, False, torch.Generator().manual_seed(3), mixup=0.25)
    assert torch.equal(mixed[:12], plain[:12])  # the first 12 as drawn
    assert not torch.equal(mixed[12:], plain[12:])
    for image in mixed[12:]:  # each a convex mix of two images of the batch
        fits = []
        for i in range(16):
            for j in range(16):
                d = plain[i] - plain[j]
                lam = float(((image - plain[j]) * d).sum() / d.pow(2).sum().clamp_min(1e-12)) if i != j else 1.0
                fits.append((0.0 <= lam <= 1.0) and torch.allclose(lam * plain[i] + (1 - lam) * plain[j], image,
                                                                   atol=1e-5))
        assert any(fits)
    # mixing comes after the crop and flip: the images kept as drawn are the augmented ones
    assert torch.equal(_draw_batch(x, 16, True, torch.Generator().manual_seed(3), mixup=0.25)[:12],
                       _draw_batch(x, 16, True, torch.Generator().manual_seed(3))[:12])
    with pytest.raises(ValueError, match="mixup"):
        ReconstructionConfig(mixup=1.5)


def test_qdrop_passes_the_given_share_of_values_unrounded_and_only_while_reconstructing(net):
    site = QCFSSite("s", "relu", None, 4, 1.0)
    x = torch.rand(20000, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1
    rounded = site(x)
    assert not rounded.eq(torch.relu(x)).all()
    site.drop_masks = DropMasks(0.3, torch.Generator().manual_seed(0))
    out = site(x)
    again = site(x)  # another window of the pool: other values pass
    assert not torch.equal(out, again)
    # every value either rounded or as the ANN has it (relu: the site replaces a ReLU)
    assert (out.eq(rounded) | out.eq(torch.relu(x))).all()
    moved = out.ne(rounded)
    between = rounded.ne(torch.relu(x))  # where passing through shows at all
    assert 0.28 < float(moved.sum() / between.sum()) < 0.32
    # the reconstruction uses it and leaves every site of its result rounding again
    x_cal = images()
    normalised = prepare(net, x_cal[:2])
    calibrated, _ = calibrate(normalised, as_calibration_set(x_cal), Recipe(timesteps=4).calibration_config(),
                              progress=False)
    cfg = ReconstructionConfig(steps=20, batch_size=16, drop=0.5)
    a, _ = reconstruct(normalised, calibrated, as_calibration_set(x_cal), 4, cfg, progress=False)
    b, _ = reconstruct(normalised, calibrated, as_calibration_set(x_cal), 4,
                       ReconstructionConfig(steps=20, batch_size=16, drop=0.0), progress=False)
    assert all(s.drop_masks is None for _, s in site_nodes(a))
    assert any(not torch.equal(va, vb) for va, vb in zip(a.state_dict().values(), b.state_dict().values()))
    again, _ = reconstruct(normalised, calibrated, as_calibration_set(x_cal), 4, cfg, progress=False)
    assert all(torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="drop"):
        ReconstructionConfig(drop=1.0)
