"""CIFAR-10 ResNet-20: spikecast vs SpikingJelly 2.0 ``RateCodingRecipe`` (accuracy per T, throughput).

Every row converts the same pretrained ResNet-20 (``spikecast.zoo`` ``cifar10-resnet20``) post-training
from the same 512 calibration images (``cifar10_tensors("train", limit=512)``; labels never used)
and is run on the same test images (``cifar10_tensors("test", limit=--images)``), with the same batch
size, torch threads and ``torch.inference_mode()``. Each test batch is simulated once for
``max(--timesteps)`` steps per row, and the top-1 after every T of ``--timesteps`` is read off that
one run. The settings of every row are written out in :func:`spikecast_rows` / :func:`sj_rows`
(no library default is inherited silently; row 2 is by definition spikecast's default recipe, and
its fields are read from the object and printed) and are fixed before any test image is seen:
nothing is chosen on the test set, every row run is reported.

Rows:

* ``1``  spikecast, the like-for-like row: percentile 99.99 thresholds, one per layer, binary spikes,
  no correction, membranes start at 0 (as SpikingJelly's ``IFNode(v_reset=None)``);
* ``1h`` the same with membranes starting at half threshold (pairs with SpikingJelly's
  half-threshold rows);
* ``2``  spikecast's default recipe, ``spikecast.Recipe(timesteps=--budget)``;
* ``3``-``9`` SpikingJelly ``RateCodingRecipe``: modes ``max`` (its default), ``99.9%``, ``99.99%``;
  99.99% with a half-threshold start, channel-wise, channel-wise + half threshold; and the recipe of
  its own ImageNet example (99.9%, channel-wise, half threshold).

SpikingJelly's recipe only converts ``nn.ReLU`` modules and only a fixed set of per-step-safe ops, so
it is given an ``nn.ReLU`` rewrite of the zoo architecture (:func:`relu_resnet20`, same
``state_dict``, checked to give identical predictions on every test image). Its option-A shortcut is
``x[:, :, ::2, ::2]`` plus ``torch.cat`` with zero channels (``F.pad`` is rejected by SpikingJelly's
step-mode adapter). spikecast converts the original zoo model as it is. SpikingJelly is run as its
ann2snn examples do (``examples/resnet18_cifar10.py`` ``val``, lines 11-32): ``functional.reset_net(net)``, then the
converted single-step network is called once per step and the outputs summed.

Throughput is a separate measurement after the accuracy runs: spikecast rows 1 and 2 against
SpikingJelly row 3 (its default settings) on the first ``--timing-images`` test images at max T,
``--repeats`` repetitions; inside each repetition the three alternate batch by batch, and which one
goes first rotates from batch to batch (and from repetition to repetition). Rates and ratios are
reported per repetition, then the median ratio and its min-max.

Run from the repository root::

    python benchmarks/bench_spikingjelly.py --images 1000 --timesteps 8 16 32 64

SpikingJelly is not a spikecast dependency; install it for this benchmark only, as in
``benchmarks/README.md``. Without it the script says so and exits 0 (RESULTS.md untouched).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import results_file  # noqa: E402  (benchmarks/results_file.py: the one writer of RESULTS.md)

SLUG = "spikingjelly"
HEADING = "ResNet-20: spikecast vs SpikingJelly"
MODEL = "cifar10-resnet20"
CALIB_IMAGES = 512
PERCENTILE = 99.99
SJ_VERSION_TESTED = "2.0.0"  # the option list below was read from this version's source


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000,
                   help="test images for the accuracy columns, class-balanced (default 1000; 10000 = full test set)")
    p.add_argument("--timesteps", type=int, nargs="+", default=[8, 16, 32, 64],
                   help="T of the accuracy columns; the largest is simulated (once per batch) and timed "
                        "(default 8 16 32 64)")
    p.add_argument("--timing-images", type=int, default=256,
                   help="first N test images of the throughput measurement (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="repetitions of the throughput measurement (default 3)")
    p.add_argument("--budget", type=int, default=32,
                   help="timesteps field of the spikecast recipes: the T the default recipe (row 2) is "
                        "calibrated for (default 32; rows 1/1h: no effect besides snn(x)'s default T)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="batch size of test and of calibration (SpikingJelly's per-batch statistics) (default 128)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--no-write", action="store_true", help="print only; do not update benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    args.timesteps = sorted({int(t) for t in args.timesteps})
    if args.timesteps[0] < 1:
        p.error("--timesteps must be positive")
    for name in ("images", "timing_images", "repeats", "budget", "batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    args.timing_images = min(args.timing_images, args.images)
    return args


# ----------------------------------------------------------------------------- the nn.ReLU rewrite
def relu_resnet20(zoo_model: nn.Module) -> nn.Module:
    """The zoo ResNet-20 rewritten with ``nn.ReLU`` / ``nn.AvgPool2d`` modules, same weights."""
    from spikecast.zoo.cifar_resnet import BasicBlock, CifarResNet

    class PadShortcut(nn.Module):
        """Option-A shortcut: every second pixel, ``pad`` zero channels on each side.

        Same values as ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))``, written with ops that
        SpikingJelly's step-mode adapter accepts (strided getitem, ``*``, ``torch.cat`` on dim 1).
        """

        def __init__(self, pad: int) -> None:
            super().__init__()
            self.pad = pad

        def forward(self, x):
            sub = x[:, :, ::2, ::2]
            zeros = sub[:, : self.pad] * 0.0
            return torch.cat((zeros, sub, zeros), 1)

    class ReluBlock(BasicBlock):
        def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
            super().__init__(in_planes, planes, stride, option="A")
            if not isinstance(self.shortcut, nn.Sequential):
                self.shortcut = PadShortcut(planes // 4)
            self.relu1 = nn.ReLU()
            self.relu2 = nn.ReLU()

        def forward(self, x):
            out = self.relu1(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out = out + self.shortcut(x)
            return self.relu2(out)

    class ReluResNet(CifarResNet):
        def __init__(self) -> None:
            super().__init__(ReluBlock, [3, 3, 3])
            self.relu = nn.ReLU()
            self.avgpool = nn.AvgPool2d(8)

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.layer3(self.layer2(self.layer1(out)))
            out = self.avgpool(out)
            out = out.view(out.size(0), -1)
            return self.linear(out)

    model = ReluResNet()
    model.load_state_dict(zoo_model.state_dict(), strict=True)  # same keys: raises otherwise
    return model.eval()


# ----------------------------------------------------------------------------- the rows
@dataclass
class Row:
    key: str  # "1", "1h", "2", "3".."9"
    library: str  # "spikecast" | "SpikingJelly"
    short: str  # one line for the table
    settings: str  # every setting, written out
    build: Callable[[], object]  # -> converted network
    simulate: Optional[Callable] = None  # (net, x, [T...]) -> {T: mean output}; set in main
    net: object = None
    convert_s: float = 0.0
    neurons: str = ""  # what the converted network holds (checked against the settings)
    correct: dict = field(default_factory=dict)
    agree: int = 0


def spikecast_recipes(budget: int):
    """Rows 1, 1h, 2: (key, short description, Recipe). Rows 1 / 1h pin every field of the Recipe
    (spikecast/recipe.py); row 2 is ``Recipe(timesteps=budget)``, spikecast's default recipe at the
    checked-out commit, and its fields are printed from the object."""
    from spikecast import Recipe

    like_for_like = dict(
        timesteps=budget,  # only snn(x)'s default T here: percentile ignores it, no correction runs
        thresholds="percentile", percentile=PERCENTILE, per_channel=False,
        correction="none", correction_form="current", signed=False, levels=1, v_init=0.0,
        mask_ratio=0.0, mask_sites=None, mask_seed=0,
        compensate=False,  # refuse any op that would need compensation: the SNN is IF neurons + affine ops only
        encoding="analog",  # the image is the input current of every step, as in SpikingJelly
        calib_images=CALIB_IMAGES,
        profile="default", weight_bits=None,  # spikecast's own neurons, float weights
    )
    r1 = Recipe(**like_for_like)
    r1h = Recipe(**{**like_for_like, "v_init": 0.5})
    r2 = Recipe(timesteps=budget)
    assert set(like_for_like) == set(r1.to_dict()), "a Recipe field is not pinned in rows 1/1h"
    return [
        ("1", f"spikecast percentile {PERCENTILE:g}, per layer, binary spikes, no correction, v0 = 0", r1),
        ("1h", f"spikecast percentile {PERCENTILE:g}, per layer, binary spikes, no correction, v0 = theta/2", r1h),
        ("2", f"spikecast default recipe ({r2.thresholds} thresholds, {r2.correction} correction, "
              f"{'signed' if r2.signed else 'binary'} spikes), calibrated for T={budget}", r2),
    ]


def recipe_text(recipe) -> str:
    return "Recipe(" + ", ".join(f"{k}={v!r}" for k, v in recipe.to_dict().items()) + ")"


def sj_row_settings():
    """Rows 3-9: SpikingJelly 2.0.0 ``RateCodingRecipe`` keyword arguments (all pinned) + neuron.

    The options, from ``spikingjelly/activation_based/ann2snn/recipes/rate_coding.py`` (2.0.0):
      * ``RateCodingRecipe.__init__(dataloader, mode="Max", momentum=0.1, fuse_flag=True,
        channel_wise=False, channel_dim=1, pre_spike_maxpool=False, half_threshold=False, eps=1e-6,
        neuron_factory=None)`` (lines 264-276); modes (``validate_rate_coding_mode``, lines 63-81):
        ``"max"`` (case-insensitive), ``"<p>%"`` with 0 <= p <= 100, or a float in (0, 1] (that
        fraction of the max).
      * layer-wise (``VoltageHook``, ann2snn/modules.py lines 85-123): per calibration batch
        ``torch.quantile`` of the ReLU output (zeros included) or its max, averaged over batches with
        ``momentum`` (scale <- (1 - m) scale + m s_t, the first batch taken as is);
      * channel-wise (``ChannelVoltageHook``, rate_coding.py lines 210-253): the same per channel,
        thresholds clamped to >= ``eps``;
      * ``half_threshold`` only acts with ``channel_wise=True`` (``_replace_channelwise``, lines
        643-645, ``neuron.HalfThresholdIFNode()``; docstring lines 352-353); the layer-wise path
        (``_replace_layerwise``, lines 590-594) ignores it and builds ``neuron_factory(scale)`` or,
        by default, ``IFNode(v_reset=None)``. A half-threshold start without channel-wise thresholds
        therefore goes through ``neuron_factory`` (row 6). ``channel_wise=True, half_threshold=True``
        refuses a ``neuron_factory`` (lines 372-376), so rows 8 and 9 take the recipe's own
        ``HalfThresholdIFNode()`` (threshold 1.0, v reset to 1.0 / 2: neuron/integrate_and_fire.py
        lines 275, 392-394);
      * ``pre_spike_maxpool`` only matters for ReLU -> MaxPool2d (lines 513-520); ResNet-20 has none;
      * ``fuse_flag``: Conv-BN fusion before calibration (lines 123-178).
    SpikingJelly's own settings: ``examples/resnet18_cifar10.py`` line 78 (``mode="Max"``),
    ``examples/cnn_mnist.py`` lines 136-139 / 183-253 (``"99.9%"``, ``"max"``, fractions of the max),
    ``examples/imagenet_resnet18_ltb.py`` lines 195-202 (``"99.9%"``, ``channel_wise=True,
    pre_spike_maxpool=True, half_threshold=True``: its "robust" recipe, row 9).
    ``ann2snn.estimate_delay_start`` (delayed readout, ann2snn/delay.py) is an evaluation option,
    not a conversion one, and depends on T: it is not used here (every T is read off one run).
    """
    base = dict(momentum=0.1, fuse_flag=True, channel_wise=False, channel_dim=1, pre_spike_maxpool=False,
                half_threshold=False, eps=1e-6)
    if_neuron = "IF"  # neuron_factory=sj_if_neuron: IFNode(v_threshold=1.0, v_reset=None), v0 = 0
    half_neuron = "half"  # neuron_factory=sj_half_neuron: HalfThresholdIFNode(v_threshold=1.0), v0 = 1/2
    builtin_half = "builtin-half"  # neuron_factory=None: the recipe's HalfThresholdIFNode()
    return [
        ("3", "SpikingJelly max, per layer, v0 = 0 (its default settings)",
         {"mode": "max", **base}, if_neuron),
        ("4", "SpikingJelly 99.9%, per layer, v0 = 0", {"mode": "99.9%", **base}, if_neuron),
        ("5", "SpikingJelly 99.99%, per layer, v0 = 0", {"mode": "99.99%", **base}, if_neuron),
        ("6", "SpikingJelly 99.99%, per layer, v0 = theta/2 (HalfThresholdIFNode via neuron_factory)",
         {"mode": "99.99%", **base}, half_neuron),
        ("7", "SpikingJelly 99.99%, channel-wise, v0 = 0", {"mode": "99.99%", **base, "channel_wise": True},
         if_neuron),
        ("8", "SpikingJelly 99.99%, channel-wise, half threshold",
         {"mode": "99.99%", **base, "channel_wise": True, "half_threshold": True}, builtin_half),
        ("9", "SpikingJelly 99.9%, channel-wise, half threshold, pre-spike max-pool (its ImageNet example's "
              "recipe; ResNet-20 has no max-pool)",
         {"mode": "99.9%", **base, "channel_wise": True, "half_threshold": True, "pre_spike_maxpool": True},
         builtin_half),
    ]


# ----------------------------------------------------------------------------- running
def batches(x: torch.Tensor, size: int):
    for start in range(0, len(x), size):
        yield start, x[start:start + size]


def sj_simulate(functional, net: nn.Module, x: torch.Tensor, timesteps: list[int]) -> dict[int, torch.Tensor]:
    """SpikingJelly's own evaluation loop (ann2snn examples): reset, call T times, sum the outputs."""
    wanted = set(timesteps)
    means = {}
    with torch.inference_mode():
        functional.reset_net(net)
        total = None
        for t in range(1, timesteps[-1] + 1):
            out = net(x)
            total = out if total is None else total + out
            if t in wanted:
                means[t] = total / t
    return means


def sc_simulate(net, x: torch.Tensor, timesteps: list[int]) -> dict[int, torch.Tensor]:
    return net.simulate(x, timesteps)  # one run of max(timesteps) steps, under torch.inference_mode


def describe_spikecast(snn) -> str:
    kinds = Counter()
    for n in snn.neurons().values():
        what = (f"IFNeuron(v_init={n.v_init:g}, signed={n.signed}, bipolar={n.bipolar}, levels={n.levels}, "
                f"{'per-channel' if n.threshold.numel() > 1 else 'per-layer'} threshold"
                + "".join(f", {k}" for k in ("bias", "v_offset") if getattr(n, k) is not None) + ")")
        kinds[what] += 1
    others = Counter(type(m).__name__ for m in snn.stateful_modules() if type(m).__name__ != "IFNeuron")
    parts = [f"{c} x {k}" for k, c in kinds.items()] + [f"{c} x {k}" for k, c in others.items()]
    return "; ".join(parts) or "no neuron"


def describe_sj(net: nn.Module) -> str:
    kinds = Counter()
    for m in net.modules():
        if hasattr(m, "v_threshold") and hasattr(m, "get_reset_value"):
            v0 = m.get_reset_value("v")
            kinds[f"{type(m).__name__}(v_threshold={float(m.v_threshold):g}, v_reset={m.v_reset}, "
                  f"v0={float(v0) if v0 is not None else 0.0:g})"] += 1
    scalers = Counter(type(m).__name__ for m in net.modules() if type(m).__name__.endswith("VoltageScaler"))
    return "; ".join([f"{c} x {k}" for k, c in kinds.items()] + [f"{c} x {k}" for k, c in scalers.items()])


def fmt_pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s"


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    run = results_file.start(threads=args.threads)  # command, commit, time, load average before any work
    try:
        from spikingjelly.activation_based import ann2snn, functional, neuron
    except Exception as exc:  # ImportError, or a missing dependency of spikingjelly (loguru...)
        print(f"NOTE: SpikingJelly is not importable ({type(exc).__name__}: {exc}).")
        print("This benchmark compares spikecast with SpikingJelly 2.0's RateCodingRecipe and needs it;")
        print("install it for the benchmark only, as in benchmarks/README.md:")
        print("    pip install --no-deps spikingjelly==2.0.0 'loguru>=0.7,<1'")
        print("Skipped; benchmarks/RESULTS.md left unchanged.")
        return 0
    from importlib.metadata import version as dist_version

    import spikecast
    import spikecast.data
    import spikecast.zoo

    sj_version = dist_version("spikingjelly")
    if sj_version != SJ_VERSION_TESTED:
        print(f"WARNING: spikingjelly {sj_version} installed; the options below were read from "
              f"{SJ_VERSION_TESTED}'s source (check they still mean the same)")
    try:  # quieten SpikingJelly's loguru INFO lines
        from spikingjelly.logger import logger as sj_logger
        sj_logger.remove()
        sj_logger.add(sys.stderr, level="WARNING")
    except Exception:
        pass

    torch.manual_seed(0)
    T = args.timesteps
    T_max = T[-1]
    print(f"{results_file.machine()}; torch threads {torch.get_num_threads()}; load average {run.load_before}")
    print(f"spikecast {spikecast.__version__} (commit {run.commit}), spikingjelly {sj_version}")

    # ---- data and models
    t0 = time.perf_counter()
    x_cal, _ = spikecast.data.cifar10_tensors("train", limit=CALIB_IMAGES)  # labels never used
    x_test, y_test = spikecast.data.cifar10_tensors("test", limit=args.images)  # class-balanced prefix order
    print(f"data: {len(x_cal)} calibration images (train split), {len(x_test)} test images "
          f"({time.perf_counter() - t0:.1f} s)")
    zoo = spikecast.zoo.create_model(MODEL, pretrained=True).eval()
    relu_model = relu_resnet20(zoo)
    ann_top, max_diff = [], 0.0
    with torch.inference_mode():
        for _, xb in batches(x_test, args.batch_size):
            a, b = zoo(xb), relu_model(xb)
            max_diff = max(max_diff, float((a - b).abs().max()))
            if not torch.equal(a.argmax(1), b.argmax(1)):
                print(f"ERROR: the nn.ReLU rewrite predicts differently from the zoo model (max |diff| {max_diff:.3g})")
                return 1
            ann_top.append(a.argmax(1))
    ann_top = torch.cat(ann_top)
    ann_acc = float((ann_top == y_test).float().mean())
    print(f"ANN top-1 {fmt_pct(ann_acc)}; nn.ReLU rewrite: identical predictions on all {len(x_test)} test images, "
          f"max |logit diff| {max_diff:.2g}")

    # ---- the rows (all settings fixed here, before any test image is simulated)
    cal_batches = [xb for _, xb in batches(x_cal, args.batch_size)]  # images only: no labels to SpikingJelly

    def sj_if_neuron(scale):  # = the recipe's own default (rate_coding.py lines 590-594), pinned
        return neuron.IFNode(v_threshold=1.0, v_reset=None)

    def sj_half_neuron(scale):  # the recipe's half-threshold neuron (lines 643-645), via neuron_factory
        return neuron.HalfThresholdIFNode(v_threshold=1.0)

    factories = {"IF": (sj_if_neuron, "neuron_factory=lambda scale: IFNode(v_threshold=1.0, v_reset=None)"),
                 "half": (sj_half_neuron, "neuron_factory=lambda scale: HalfThresholdIFNode(v_threshold=1.0)"),
                 "builtin-half": (None, "neuron_factory=None (the recipe builds HalfThresholdIFNode(), "
                                        "threshold 1.0, v0 = 0.5)")}
    rows: list[Row] = []
    for key, short, recipe in spikecast_recipes(args.budget):
        rows.append(Row(key, "spikecast", short,
                        f"`spikecast.convert(zoo_model, calib=<{len(x_cal)} images>, recipe={recipe_text(recipe)}, "
                        f"progress=False)`",
                        build=lambda recipe=recipe: spikecast.convert(zoo, calib=x_cal, recipe=recipe, progress=False),
                        simulate=sc_simulate))
    for key, short, kwargs, kind in sj_row_settings():
        factory, factory_text = factories[kind]
        text = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        rows.append(Row(key, "SpikingJelly", short,
                        f"`Converter(recipe=RateCodingRecipe(dataloader=<{len(cal_batches)} batches of the "
                        f"{len(x_cal)} images>, {text}, {factory_text}), device='cpu').convert(relu_model)`",
                        build=lambda kwargs=kwargs, factory=factory: ann2snn.Converter(
                            recipe=ann2snn.RateCodingRecipe(dataloader=cal_batches, neuron_factory=factory, **kwargs),
                            device="cpu").convert(copy.deepcopy(relu_model)).eval(),
                        simulate=lambda net, x, ts: sj_simulate(functional, net, x, ts)))

    # ---- conversion
    for row in rows:
        t0 = time.perf_counter()
        row.net = row.build()
        row.convert_s = time.perf_counter() - t0
        row.neurons = describe_spikecast(row.net) if row.library == "spikecast" else describe_sj(row.net)
        print(f"row {row.key}: converted in {row.convert_s:.1f} s: {row.neurons}", flush=True)
        print(f"    {row.settings}")
    theta_note = threshold_note(rows)
    print("thresholds:", theta_note)

    # ---- accuracy: every row on every test batch, one max(T)-step simulation per batch
    started = time.perf_counter()
    for row in rows:
        row.correct = {t: 0 for t in T}
        row_t0 = time.perf_counter()
        for start, xb in batches(x_test, args.batch_size):
            outs = row.simulate(row.net, xb, T)
            yb, ab = y_test[start:start + len(xb)], ann_top[start:start + len(xb)]
            for t in T:
                row.correct[t] += int((outs[t].argmax(1) == yb).sum())
            row.agree += int((outs[T_max].argmax(1) == ab).sum())
        seconds = time.perf_counter() - row_t0
        elapsed = time.perf_counter() - started
        print(f"row {row.key}: top-1 " + " / ".join(f"T={t} {fmt_pct(row.correct[t] / len(x_test))}" for t in T)
              + f"; agreement {fmt_pct(row.agree / len(x_test))}; {len(x_test) * T_max / seconds:.0f} image-steps/s "
              f"(not the throughput measurement); elapsed {elapsed / 60:.1f} min; load {results_file.load_average()}",
              flush=True)

    # ---- throughput: spikecast rows 1 and 2 vs SpikingJelly row 3, alternating batch by batch
    timed = [r for r in rows if r.key in ("1", "2", "3")]
    x_time = x_test[:args.timing_images]  # timing only
    for row in timed:  # warm-up: one batch each (the first timed batch, min(T_max, 8) steps)
        row.simulate(row.net, x_time[:args.batch_size], [min(T_max, 8)])
    reps = []
    for rep in range(args.repeats):
        seconds = {r.key: 0.0 for r in timed}
        for i, (_, xb) in enumerate(batches(x_time, args.batch_size)):
            shift = (i + rep) % len(timed)
            for row in timed[shift:] + timed[:shift]:  # who goes first rotates batch by batch
                t0 = time.perf_counter()
                row.simulate(row.net, xb, [T_max])
                seconds[row.key] += time.perf_counter() - t0
        rates = {k: len(x_time) * T_max / s for k, s in seconds.items()}
        reps.append((rates, results_file.load_average()))
        print(f"throughput repetition {rep + 1}/{args.repeats}: "
              + ", ".join(f"row {k} {v:.0f}" for k, v in rates.items())
              + f" image-steps/s; row 1 / row 3 {rates['1'] / rates['3']:.2f}x, row 2 / row 3 "
              f"{rates['2'] / rates['3']:.2f}x; load {reps[-1][1]}", flush=True)

    body = section_body(args, rows, reps, ann_acc, len(x_cal), len(x_test), len(x_time), max_diff, theta_note,
                        sj_version, spikecast.__version__, len(cal_batches))
    print()
    print(body)
    if args.no_write:
        print("\n(--no-write: benchmarks/RESULTS.md not touched)")
        return 0
    run.write(SLUG, HEADING, body)
    print(f"\nwrote section '{SLUG}' of {results_file.RESULTS}")
    return 0


def threshold_note(rows: list[Row]) -> str:
    """Per-layer thresholds of row 1 (spikecast, percentile 99.99) vs row 5 (SpikingJelly, 99.99%)."""
    by_key = {r.key: r for r in rows}
    sc = [float(n.threshold) for n in by_key["1"].net.neurons().values()]
    net = by_key["5"].net
    sj = [float(net.get_submodule(node.target).scale) for node in net.graph.nodes  # graph order
          if node.op == "call_module" and str(node.target).endswith(".scaler1")]
    if len(sc) != len(sj) or not sc:
        return f"neuron layers: row 1 {len(sc)}, row 5 {len(sj)}"
    ratios = sorted(j / s for j, s in zip(sj, sc))
    return (f"{len(sc)} neuron layers in each; per-layer threshold of row 5 (SpikingJelly 99.99%) / row 1 "
            f"(spikecast percentile 99.99): min {ratios[0]:.3f}, median {statistics.median(ratios):.3f}, "
            f"max {ratios[-1]:.3f}")


def section_body(args, rows, reps, ann_acc, n_cal, n_test, n_time, max_diff, theta_note, sj_version,
                 sc_version, n_cal_batches) -> str:
    T, T_max = args.timesteps, args.timesteps[-1]
    cols = " | ".join(f"T={t}" for t in T)
    acc = [f"| row | converter and settings | ANN top-1 | {cols} | agreement with ANN at T={T_max} | conversion time |",
           "|---|---|---:|" + "---:|" * len(T) + "---:|---:|"]
    drop = [f"| row | {cols} |", "|---|" + "---:|" * len(T)]
    for r in rows:
        accs = [r.correct[t] / n_test for t in T]
        acc.append(f"| {r.key} | {r.short} | {fmt_pct(ann_acc)} | " + " | ".join(fmt_pct(a) for a in accs)
                   + f" | {fmt_pct(r.agree / n_test)} | {fmt_s(r.convert_s)} |")
        drop.append(f"| {r.key} | " + " | ".join(f"{100 * (ann_acc - a):.2f}" for a in accs) + " |")

    keys = ["1", "2", "3"]
    thr = ["| repetition | " + " | ".join(f"row {k} image-steps/s" for k in keys)
           + " | row 1 / row 3 | row 2 / row 3 | load average after |",
           "|---:|" + "---:|" * (len(keys) + 3)]
    ratios = {"1": [], "2": []}
    for i, (rates, load) in enumerate(reps, 1):
        for k in ratios:
            ratios[k].append(rates[k] / rates["3"])
        thr.append(f"| {i} | " + " | ".join(f"{rates[k]:.0f}" for k in keys)
                   + f" | {ratios['1'][-1]:.2f}x | {ratios['2'][-1]:.2f}x | {load} |")
    summary = "; ".join(
        f"row {k} / row 3: median **{statistics.median(v):.2f}x** (min-max {min(v):.2f}x-{max(v):.2f}x)"
        for k, v in ratios.items())

    settings = [f"- **row {r.key}** ({r.library}): {r.settings}. Converted network: {r.neurons}." for r in rows]
    lines = [
        f"CIFAR-10 ResNet-20 (`spikecast.zoo` `{MODEL}`, shared JPEG images) converted post-training by spikecast "
        f"{sc_version} and by SpikingJelly {sj_version} `ann2snn.Converter(RateCodingRecipe(...))`. Every row: "
        f"the same {n_cal} calibration images (`cifar10_tensors(\"train\", limit={n_cal})`, class-balanced, "
        f"labels unused; SpikingJelly reads them as {n_cal_batches} batches of {args.batch_size}), the same "
        f"{n_test} test images (`cifar10_tensors(\"test\", limit={n_test})`, class-balanced), batch size "
        f"{args.batch_size}, {torch.get_num_threads()} torch threads, `torch.inference_mode()`. SNN top-1 at "
        f"every T is read off one {T_max}-step simulation per batch.",
        "",
        "**Nothing is chosen on the test set**: the settings of every row are fixed in the script before any "
        "test image is run, and every row the script runs is reported (no choice is made here, no best row is "
        "picked).",
        "",
        acc,
        "",
        f"Points below the ANN ({fmt_pct(ann_acc)} on these images), ANN top-1 minus SNN top-1:",
        "",
        drop,
        "",
        f"**Throughput** at T={T_max}, a separate measurement after the accuracy runs: spikecast rows 1 and 2 "
        f"against SpikingJelly row 3 (its default settings; every per-layer SpikingJelly row runs the same "
        f"modules) on the first {n_time} test images, image-steps/s = {n_time} x {T_max} / seconds, "
        f"{len(reps)} repetitions after one warm-up batch each. Inside a repetition the three alternate batch "
        f"by batch and which one goes first rotates from batch to batch, so all see the same machine load.",
        "",
        thr,
        "",
        f"Throughput ratio, {summary}.",
        "",
        "Settings of every row (as run; the spikecast default recipe is printed from the `Recipe` object, so "
        "this list follows the code):",
        "",
        *settings,
        "",
        "Notes:",
        "",
        f"- Like-for-like pairs: row 1 and row 5 (percentile 99.99 per layer, binary spikes, soft reset, "
        f"membranes start at 0, no correction); row 1h and row 6 (the same with a half-threshold start). "
        f"Thresholds: {theta_note}.",
        "- Differences of method that remain in those pairs: spikecast takes the percentile of the *positive* "
        f"activations pooled over all {n_cal} images (from a histogram); SpikingJelly takes `torch.quantile` of "
        "*all* ReLU outputs (zeros included) per calibration batch and averages batches with momentum 0.1 "
        "(the first batch taken as is). spikecast computes the input-only prefix (first conv + BN) once per "
        "image, SpikingJelly every step.",
        f"- SpikingJelly runs on an `nn.ReLU` rewrite of the zoo model (same state_dict; identical predictions "
        f"on all {n_test} test images, max |logit diff| {max_diff:.2g}); spikecast converts the zoo model itself. "
        "SpikingJelly is run as its ann2snn examples do: `functional.reset_net(net)`, then one call per step, "
        "outputs summed.",
        f"- Row 2's `timesteps={args.budget}` is the budget it "
        "calibrates for (mse thresholds and correction are chosen for it); the other T columns run the same "
        "network for more or fewer steps.",
        "- Conversion time: wall time of the one convert call (spikecast: trace, calibration and, for row 2, the "
        "layer-wise correction; SpikingJelly: trace, Conv-BN fusion, calibration, on a fresh copy of the rewrite).",
        f"- SPIKECAST_COMPILE={os.environ.get('SPIKECAST_COMPILE', 'unset (fused torch.compile neuron kernels on)')}.",
    ]
    return "\n".join("\n".join(x) if isinstance(x, list) else x for x in lines)


if __name__ == "__main__":
    sys.exit(main())
