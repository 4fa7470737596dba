"""The calibration set (read once, bounded, chosen by content) and the one recipe / metadata schema."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import spikecast
from spikecast.calibrate.sample import calibration_set, image_digest
from spikecast.calibrate.statistics import collect_statistics
from spikecast.calibrate.thresholds import CalibrationConfig, calibrate
from spikecast.errors import CalibrationError
from spikecast.graph.sites import site_nodes
from spikecast.pipeline import prepare
from spikecast.recipe import Recipe, calibration_set_of, recipe_of

pytestmark = pytest.mark.usefixtures("single_thread")


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 3 * 3, 5)).eval()


def _images(n=120, seed=1):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _thresholds(gm, data, **kw):
    config = CalibrationConfig(method=kw.pop("method", "mse"), timesteps=8, **kw)
    out, _ = calibrate(gm, data, config, progress=False)
    return [site.threshold for _, site in site_nodes(out)]


def _state(snn):
    return {k: v.clone() for k, v in snn.state_dict().items()}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Counting:
    """An iterable of batches that counts how often it is iterated and how many batches it gave."""

    def __init__(self, batches):
        self.batches, self.iters, self.nexts = batches, 0, 0

    def __iter__(self):
        self.iters += 1
        for b in self.batches:
            self.nexts += 1
            yield b


# ------------------------------------------------------------------ same images, any source -> same set
def test_generator_dataloaders_and_batch_sizes_give_the_thresholds_of_the_tensor():
    x = _images()
    y = torch.arange(len(x)) % 5
    gm = prepare(_net(), x[:2])
    reference = _thresholds(gm, x)

    def generator():
        for i in range(0, len(x), 7):
            yield x[i:i + 7], y[i:i + 7]

    shuffled = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                          generator=torch.Generator().manual_seed(5))
    workers = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, num_workers=2,
                         generator=torch.Generator().manual_seed(6))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(2))
    for source in (generator(), shuffled, workers, [x[perm][i:i + 50] for i in range(0, len(x), 50)],
                   [x[i:i + 1] for i in range(len(x))], TensorDataset(x)):
        got = _thresholds(gm, source)
        assert all(a == b for a, b in zip(got, reference)), type(source).__name__
    # per channel too
    ref_pc = _thresholds(gm, x, per_channel=True)
    got_pc = _thresholds(gm, DataLoader(TensorDataset(x), batch_size=9, shuffle=True), per_channel=True)
    assert all(torch.equal(a, b) for a, b in zip(got_pc, ref_pc))


def test_convert_from_a_shuffled_loader_with_workers_equals_convert_from_the_tensor():
    x = _images(96)
    model = _net()
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=20, shuffle=True, num_workers=2)
    a = spikecast.convert(model, x, timesteps=4, correction="light", progress=False)
    b = spikecast.convert(model, loader, timesteps=4, correction="light", progress=False)
    _same(_state(a), _state(b))  # thresholds, bias and potential corrections: all identical
    assert a.metadata["calibration_set"]["images"] == b.metadata["calibration_set"]["images"] == 96
    assert b.metadata["calibration_set"]["batches_read"] == 5


def test_the_source_is_iterated_exactly_once():
    x = _images(90)
    source = Counting([(x[i:i + 30], torch.zeros(30)) for i in range(0, 90, 30)])
    snn = spikecast.convert(_net(), source, timesteps=4, correction="advanced", progress=False)
    assert (source.iters, source.nexts) == (1, 3)
    assert calibration_set_of(snn) == {"images": 90, "images_read": 90, "batches_read": 3, "max_images": 512,
                                       "shape": [3, 8, 8]}
    # a generator: its first batch is not eaten by tracing
    gen = (x[i:i + 45] for i in range(0, 90, 45))
    assert spikecast.convert(_net(), gen, correction="none", progress=False).metadata["calibration_set"]["images"] == 90


class _Stream(IterableDataset):
    def __init__(self, x):
        self.x = x

    def __iter__(self):
        return iter(self.x)  # single images, as a Dataset yields them


def test_max_images_keeps_the_bottom_k_by_content_hash_whatever_the_order():
    x = _images(300)
    expected = sorted(range(300), key=lambda i: image_digest(x[i]))[:40]
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(4))
    for source in (x, x.flip(0), [x[perm][i:i + 64] for i in range(0, 300, 64)], _Stream(x),
                   DataLoader(TensorDataset(x), batch_size=17, shuffle=True)):
        s = calibration_set(source, max_images=40)
        assert len(s) == 40 and s.images_read == 300 and s.shape == (3, 8, 8)
        assert torch.equal(s.images, x[expected]), type(source).__name__
    # asking for more keeps more; a set given again is cut, not re-read
    full = calibration_set(x, max_images=None)
    assert len(full) == 300 and torch.equal(calibration_set(full, max_images=40).images, x[expected])
    # memory: a long stream of small images never holds more than the bound
    stream = (torch.randn(100, 1, 2, 2) for _ in range(50))
    s = calibration_set(stream, max_images=16)
    assert len(s) == 16 and s.images_read == 5000 and s.batches_read == 50


# ------------------------------------------------------------------ bad data: one line each
def test_bad_data_gives_one_line_errors():
    x = _images(40)
    bad = x.clone()
    bad[25, 0, 0, :2] = float("nan")
    bad[30, 1, 1, 1] = float("inf")
    with pytest.raises(CalibrationError, match=r"calibration batch 1 holds 2 NaN and 1 Inf value\(s\)") as err:
        calibration_set([x[:20], bad[20:]])
    assert "\n" not in str(err.value)
    for empty in ([], (b for b in []), torch.zeros(0, 3, 8, 8), DataLoader(TensorDataset(torch.zeros(0, 3)))):
        with pytest.raises(CalibrationError, match="^the calibration data is empty: it yielded no images$"):
            calibration_set(empty)
    with pytest.raises(CalibrationError, match=r"batch 1 has images of shape \(3, 4, 4\).*\(3, 8, 8\)"):
        calibration_set([x[:4], torch.randn(4, 3, 4, 4)])
    with pytest.raises(CalibrationError, match="NaN"):
        spikecast.convert(_net(), bad, progress=False)


def test_a_value_above_the_first_pass_range_is_never_dropped():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(64, 8)
    gm = prepare(model, x[:2])
    site = next(s for _, s in site_nodes(gm))
    calls = []

    def drift(factor):
        def hook(module, args):
            calls.append(1)
            return (args[0] * (1.0 if len(calls) == 1 else factor),)  # pass 2 sees larger values
        return site.register_forward_pre_hook(hook)

    # within rounding: the larger value is counted in the top bin (torch.histc alone would drop it)
    handle = drift(1 + 5e-6)
    try:
        stats = collect_statistics(gm, x, progress=False)
    finally:
        handle.remove()
    s = stats[next(iter(stats))]
    assert int(s.histogram.sum()) == s.positive and s.histogram[-1] >= 1
    # beyond rounding: an error naming the site, not a silently smaller histogram
    calls.clear()
    handle = drift(2.0)
    try:
        with pytest.raises(CalibrationError, match=f"site {site.name}: the second calibration pass saw"):
            collect_statistics(gm, x, progress=False)
    finally:
        handle.remove()


# ------------------------------------------------------------------ one recipe, one metadata schema
def test_recipe_overrides_deprecated_names_and_metadata_schema(tmp_path):
    x = _images(48)
    with pytest.warns(DeprecationWarning) as caught:
        snn = spikecast.convert(_net(), x, method="max", calibration="light", timesteps=4, progress=False)
    assert {str(w.message) for w in caught} >= {"method= is deprecated: use thresholds= (same values)",
                                               "calibration= is deprecated: use correction= (same values)"}
    # (T=4: the label-free reconstruction runs by default and is recorded)
    assert set(snn.metadata) == {"source", "recipe", "calibration_set", "sites", "reconstruction", "correction",
                                 "seconds"}
    recipe = Recipe(thresholds="max", correction="light", timesteps=4)
    assert recipe_of(snn) == recipe and snn.metadata["recipe"] == recipe.to_dict()
    assert recipe_of(spikecast.load(snn.save(tmp_path / "snn"))) == recipe
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        again = spikecast.convert(_net(), x, recipe, progress=False)
    _same(_state(snn), _state(again))
    assert recipe_of(spikecast.convert(_net(), x, recipe, correction="none", progress=False)) == \
        recipe.replace(correction="none")
    with pytest.raises(TypeError, match="unknown recipe setting"):
        spikecast.convert(_net(), x, budget=8, progress=False)
    # the metadata of a network saved before the recipe existed
    old = {"source": "m", "calibration": {"method": "percentile", "percentile": 99.9, "per_channel": True,
                                          "level": "light", "timesteps": 16, "images": 1347},
           "neuron": {"v_init": 0.5, "mask_ratio": 0.0, "mask_sites": [], "mask_seed": 0, "signed": False,
                      "levels": 2, "compensate": True}}
    assert recipe_of(old) == Recipe(thresholds="percentile", percentile=99.9, per_channel=True, correction="light",
                                    timesteps=16, calib_images=1347, signed=False, levels=2, reconstruct="off",
                                    distill_steps=0)
    assert calibration_set_of(old) == {"images": 1347, "images_read": 1347, "batches_read": None}
    qcfs = {"calibration": {"method": "qcfs(L=4)", "level": "light", "timesteps": 4, "per_channel": False},
            "neuron": {"v_init": 0.5, "signed": True, "mask_ratio": 0.0}}
    assert recipe_of(qcfs) == Recipe(timesteps=4, correction="light", reconstruct="off", distill_steps=0,
                                     per_channel=False)
