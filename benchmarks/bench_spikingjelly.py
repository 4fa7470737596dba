"""CIFAR-10 ResNet-20: spikecast vs SpikingJelly 2.0 ``RateCodingRecipe`` (accuracy per T and throughput).

Both converters get the same pretrained ResNet-20 (``spikecast.zoo``), the same 512 class-balanced
calibration images of the train split, the same test images, batch size, torch threads and number
of steps. Each test batch is simulated once for ``max(--timesteps)`` steps by each library and the
accuracy after every T of ``--timesteps`` is read off that one run:

* spikecast: ``snn.simulate(x, timesteps)`` (one run, mean output after each T);
* SpikingJelly: exactly as in its ann2snn examples (``examples/cnn_mnist.py``,
  ``examples/resnet18_cifar10.py``): ``functional.reset_net(net)``, then call the converted
  single-step network once per step and sum the outputs (argmax of the sum = argmax of the mean).

SpikingJelly's recipe only recognises ``nn.ReLU`` modules and only a fixed set of per-step-safe ops,
so it is given an ``nn.ReLU`` rewrite of the zoo architecture (:class:`ReluResNet`, same
``state_dict`` keys, checked to give identical ANN logits). Its option-A shortcut is written as
``x[:, :, ::2, ::2]`` plus ``torch.cat`` with zero channels (``F.pad`` is rejected by SpikingJelly's
step-mode adapter). spikecast converts the original zoo model (``F.relu``, ``LambdaLayer``/``F.pad``,
in-place add, ``F.avg_pool2d``) as is.

Throughput (image-steps per second = images * T / seconds) is the wall time of the max(T)-step
simulations of the first ``--timing-images`` test images, after one warm-up batch per library. The
two libraries alternate batch by batch (and which goes first alternates too), so both see the same
machine load on a shared machine.

Run from the repository root::

    python benchmarks/bench_spikingjelly.py --images 2000

SpikingJelly is not a spikecast dependency; install it for this benchmark only as in
``benchmarks/README.md``. Without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import re
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn as nn

SECTION = "## ResNet-20: spikecast vs SpikingJelly"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
CALIB_IMAGES = 512
PERCENTILE = 99.99


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10000,
                   help="test images for the accuracy columns (default 10000 = full test set)")
    p.add_argument("--timing-images", type=int, default=1000,
                   help="first N test images whose simulation time gives the throughput (default 1000)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size of calibration and test (default 128)")
    p.add_argument("--timesteps", type=int, nargs="+", default=[16, 32, 64, 128],
                   help="T values of the accuracy columns; the largest is simulated and timed (default 16 32 64 128)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--no-write", action="store_true", help=f"print only; do not update {RESULTS.name}")
    args = p.parse_args(argv)
    args.timesteps = sorted({int(t) for t in args.timesteps})
    if args.timesteps[0] < 1:
        p.error("--timesteps must be positive")
    if args.images < 1 or args.batch_size < 1 or args.timing_images < 1:
        p.error("--images, --timing-images and --batch-size must be >= 1")
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


# ----------------------------------------------------------------------------- helpers
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def batches(x: torch.Tensor, y: torch.Tensor, size: int):
    for start in range(0, len(x), size):
        yield x[start:start + size], y[start:start + size]


def sj_simulate(net: nn.Module, x: torch.Tensor, timesteps: list[int], functional) -> dict[int, torch.Tensor]:
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


def spikecast_revision() -> str:
    """``git describe`` of the checkout spikecast is imported from (``+dirty`` with local changes)."""
    import subprocess

    import spikecast

    root = Path(spikecast.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "spikecast"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("+dirty" if dirty else "")) if rev else "unknown"


def fmt_pct(v: float) -> str:
    return f"{100 * v:.2f}%"


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import spikingjelly
        from spikingjelly.activation_based import ann2snn, functional
    except Exception as exc:  # ImportError, or a missing dependency of spikingjelly (loguru...)
        print(f"NOTE: SpikingJelly is not importable ({type(exc).__name__}: {exc}).")
        print("This benchmark compares spikecast with SpikingJelly 2.0's RateCodingRecipe and needs it;")
        print("install it for the benchmark only, as in benchmarks/README.md:")
        print("    pip install --no-deps spikingjelly==2.0.0 'loguru>=0.7,<1'")
        print(f"Skipped; {RESULTS.name} left unchanged.")
        return 0
    from importlib.metadata import version as dist_version

    sj_version = dist_version("spikingjelly")
    import spikecast
    import spikecast.data
    import spikecast.zoo

    try:  # quieten SpikingJelly's loguru INFO lines
        from spikingjelly.logger import logger as sj_logger
        sj_logger.remove()
        sj_logger.add(sys.stderr, level="WARNING")
    except Exception:
        pass

    revision = spikecast_revision()  # of the code imported now (the checkout may change during a long run)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    T_max = args.timesteps[-1]
    command = "python benchmarks/bench_spikingjelly.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    started_at = datetime.now(timezone.utc)
    load_start = loadavg()
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {load_start}")
    print(f"torch {torch.__version__}, spikingjelly {sj_version}, "
          f"spikecast {spikecast.__version__} (git {revision})")

    # ---- data and models
    t0 = time.perf_counter()
    x_cal, _ = spikecast.data.cifar10_tensors("train", limit=CALIB_IMAGES)
    # limit=N: deterministic class-balanced subset (classes interleaved, so every prefix is balanced too)
    x_test, y_test = spikecast.data.cifar10_tensors("test", limit=args.images)
    print(f"data: {len(x_cal)} calibration images, {len(x_test)} test images ({time.perf_counter() - t0:.1f} s)")

    zoo = spikecast.zoo.create_model("cifar10-resnet20", pretrained=True).eval()
    relu_model = relu_resnet20(zoo)
    with torch.inference_mode():
        check = x_test[:args.batch_size]
        a, b = zoo(check), relu_model(check)
    max_diff = float((a - b).abs().max())
    if not torch.equal(a.argmax(1), b.argmax(1)) or max_diff > 1e-5:
        print(f"ERROR: the nn.ReLU rewrite does not match the zoo model (max |diff| {max_diff:.3g})")
        return 1
    print(f"nn.ReLU rewrite: identical predictions, max |logit diff| {max_diff:.2g} on {len(check)} images")

    # ---- conversion (same calibration images, same batches)
    cal_batches = [x_cal[i:i + args.batch_size] for i in range(0, len(x_cal), args.batch_size)]
    t0 = time.perf_counter()
    sc_net = spikecast.convert(zoo, calib=(x_cal,), thresholds="percentile", percentile=PERCENTILE,
                               calib_images=len(x_cal), progress=False)
    sc_convert_s = time.perf_counter() - t0
    sj_recipe = ann2snn.RateCodingRecipe(dataloader=cal_batches, mode=f"{PERCENTILE}%")
    t0 = time.perf_counter()
    sj_net = ann2snn.Converter(recipe=sj_recipe, device="cpu").convert(copy.deepcopy(relu_model)).eval()
    sj_convert_s = time.perf_counter() - t0
    print(f"conversion: spikecast {sc_convert_s:.1f} s, SpikingJelly {sj_convert_s:.1f} s")

    sc_theta = [float(n.threshold.max()) for n in sc_net.neurons().values()]
    sj_theta = [float(sj_net.get_submodule(node.target).scale) for node in sj_net.graph.nodes  # graph order
                if node.op == "call_module" and str(node.target).endswith(".scaler1")]
    if len(sc_theta) == len(sj_theta) and sc_theta:
        ratios = sorted(j / s for j, s in zip(sj_theta, sc_theta))
        theta_note = (f"{len(sc_theta)} neuron layers each; SpikingJelly/spikecast threshold ratio "
                      f"min {ratios[0]:.3f}, median {ratios[len(ratios) // 2]:.3f}, max {ratios[-1]:.3f}")
    else:
        theta_note = f"neuron layers: spikecast {len(sc_theta)}, SpikingJelly {len(sj_theta)}"
    print("thresholds:", theta_note)

    # ---- warm-up once per library (first batch, a few steps)
    warm = x_test[:args.batch_size]
    sc_net.simulate(warm, min(4, T_max))
    sj_simulate(sj_net, warm, [min(4, T_max)], functional)

    # ---- accuracy + timing, libraries alternating batch by batch
    names = ("spikecast", "SpikingJelly")
    runners = {
        "spikecast": lambda xb: sc_net.simulate(xb, args.timesteps),
        "SpikingJelly": lambda xb: sj_simulate(sj_net, xb, args.timesteps, functional),
    }
    correct = {n: {t: 0 for t in args.timesteps} for n in names}
    correct_ann = 0
    agree = {n: 0 for n in names}  # top-1 equal to the ANN at T_max
    seconds = {n: 0.0 for n in names}  # all images
    timed_seconds = {n: 0.0 for n in names}  # first --timing-images images
    timed_images = 0
    done = 0
    n_batches = (len(x_test) + args.batch_size - 1) // args.batch_size
    run_started = time.perf_counter()
    for i, (xb, yb) in enumerate(batches(x_test, y_test, args.batch_size)):
        in_timing = done < args.timing_images
        with torch.inference_mode():
            ann_top = zoo(xb).argmax(1)
        correct_ann += int((ann_top == yb).sum())
        order = names if i % 2 == 0 else names[::-1]
        for n in order:
            t0 = time.perf_counter()
            outs = runners[n](xb)
            dt = time.perf_counter() - t0
            seconds[n] += dt
            if in_timing:
                timed_seconds[n] += dt
            for t in args.timesteps:
                correct[n][t] += int((outs[t].argmax(1) == yb).sum())
            agree[n] += int((outs[T_max].argmax(1) == ann_top).sum())
        if in_timing:
            timed_images += len(xb)
        done += len(xb)
        elapsed = time.perf_counter() - run_started
        eta = elapsed / done * (len(x_test) - done)
        accs = "; ".join(f"{n} " + "/".join(fmt_pct(correct[n][t] / done) for t in args.timesteps) for n in names)
        rates = ", ".join(f"{n} {done * T_max / seconds[n]:.0f}" for n in names)
        print(f"[{i + 1}/{n_batches}] {done} images, ANN {fmt_pct(correct_ann / done)}, "
              f"top-1 so far at T={args.timesteps}: {accs}; image-steps/s: {rates}; elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min, load {loadavg()}", flush=True)
    load_end = loadavg()
    ann_acc = correct_ann / len(x_test)

    # ---- report
    timing_n = timed_images
    thr = {n: timing_n * T_max / timed_seconds[n] for n in names}
    thr_all = {n: len(x_test) * T_max / seconds[n] for n in names}
    ratio = thr["spikecast"] / thr["SpikingJelly"]
    acc_cols = " | ".join(f"T={t}" for t in args.timesteps)
    lines = [
        f"| converter | ANN top-1 | {acc_cols} | agreement with ANN at T={T_max} | "
        f"image-steps/s at T={T_max} | time for {timing_n} images x {T_max} steps |",
        "|---|---:|" + "---:|" * len(args.timesteps) + "---:|---:|---:|",
    ]
    for n in names:
        accs = " | ".join(fmt_pct(correct[n][t] / len(x_test)) for t in args.timesteps)
        lines.append(f"| {n} | {fmt_pct(ann_acc)} | {accs} | {fmt_pct(agree[n] / len(x_test))} | "
                     f"{thr[n]:.1f} | {timed_seconds[n]:.1f} s |")
    table = "\n".join(lines)
    verdict = "meets" if ratio >= 1.5 else "does NOT meet"
    summary = (f"Throughput ratio spikecast / SpikingJelly at T={T_max}: **{ratio:.2f}x** "
               f"({verdict} the 1.5x target). Over all {len(x_test)} images: spikecast {thr_all['spikecast']:.1f}, "
               f"SpikingJelly {thr_all['SpikingJelly']:.1f} image-steps/s "
               f"({thr_all['spikecast'] / thr_all['SpikingJelly']:.2f}x).")
    print()
    print(table)
    print()
    print(summary)

    if args.no_write:
        return 0
    section = "\n".join([
        SECTION,
        "",
        f"CIFAR-10 ResNet-20 (`spikecast.zoo` `cifar10-resnet20`, shared JPEG test set) converted by spikecast "
        f"(`method=\"percentile\", percentile={PERCENTILE}`) and by SpikingJelly {sj_version} "
        f"`ann2snn.Converter(RateCodingRecipe(mode=\"{PERCENTILE}%\"))` with its default neuron "
        f"(`IFNode(v_reset=None)`: soft reset, v starts at 0). Same {CALIB_IMAGES} calibration images "
        f"(class-balanced, train split), same {len(x_test)} test images (`cifar10_tensors(\"test\", limit=N)`: class-balanced), "
        f"batch size {args.batch_size}, {torch.get_num_threads()} torch threads, `torch.inference_mode()`. "
        f"Accuracy at every T from one {T_max}-step simulation per batch.",
        "",
        table,
        "",
        summary,
        "",
        f"- Throughput: image-steps/s = images x {T_max} / seconds over the first {timing_n} test images, after "
        f"one warm-up batch each; the libraries alternate batch by batch so both see the same machine load.",
        f"- Conversion time (512 calibration images): spikecast {sc_convert_s:.1f} s, SpikingJelly {sj_convert_s:.1f} s.",
        f"- Thresholds: {theta_note}.",
        "- SpikingJelly runs on an `nn.ReLU` rewrite of the zoo model (same state_dict, identical ANN logits: "
        f"max |diff| {max_diff:.2g}); spikecast converts the zoo model itself.",
        "- Differences of method: spikecast takes the percentile of the *positive* activations pooled over all "
        "512 images and starts membranes at half threshold; SpikingJelly takes `torch.quantile` of *all* ReLU "
        "outputs (zeros included) per calibration batch, averages batches with momentum 0.1, and starts "
        "membranes at 0. spikecast computes the input-only prefix (first conv + BN) once per image, "
        "SpikingJelly every step.",
        f"- Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}, Python {platform.python_version()}, spikecast git {revision}. "
        f"Load average (1/5/15 min) "
        f"at start {load_start}, at end {load_end} (a shared machine: absolute rates vary with load, the "
        "interleaved ratio much less).",
        f"- Run {started_at:%Y-%m-%d %H:%M} UTC, {(time.perf_counter() - run_started) / 60:.1f} min of simulation: "
        f"`{command}`",
        "",
    ])
    try:  # the helper the other benchmark scripts share (benchmarks/results_file.py)
        from results_file import update_section
    except ImportError:
        write_section(RESULTS, section)
    else:
        update_section(SECTION[3:], section[len(SECTION):], RESULTS)
    print(f"\nwrote section '{SECTION[3:]}' of {RESULTS}")
    return 0


def write_section(path: Path, section: str) -> None:
    """Replace the section from ``SECTION`` to the next ``## `` heading (or append it); keep the rest."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        if text and not text.endswith("\n"):
            text += "\n"
        if text and not text.endswith("\n\n"):
            text += "\n"
        path.write_text(text + section)
        return
    end = next((j for j in range(start + 1, len(lines)) if re.match(r"## ", lines[j])), len(lines))
    path.write_text("".join(lines[:start]) + section + ("\n" if end < len(lines) else "") + "".join(lines[end:]))


if __name__ == "__main__":
    sys.exit(main())
