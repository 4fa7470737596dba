"""Simulation speed: one SNN time step against one fp32 ANN forward, measured side by side (issue 17).

Section ``speed``. For each model, the same converted network is run by every runtime on the same
images, batch size and torch threads, under ``torch.inference_mode()``:

* ``float, step by step``: the float SNN, one op call per layer per step (spikecast's runtime
  before time batching: ``SimulationConfig(time_batched=False)``);
* ``float, time-batched``: the float SNN, chunks of steps per layer call (the default);
* ``integer, float32 sums``: :func:`spikecast.quant.integer_network` (int8 weights, spike signs,
  sums of integers in float32), step by step;
* ``integer, int8 kernels``: :func:`spikecast.quant.int8_kernels` of it (oneDNN u8 x s8 -> int32),
  step by step;
* ``integer, int8 kernels, compiled step``: the same with ``SimulationConfig(compiled=True)`` (the
  step graph through ``torch.compile``: elementwise work fused between layers);
* ``SpikingJelly``: SpikingJelly 2.0 ``RateCodingRecipe`` at its default settings (mode ``max``,
  layer-wise, ``IFNode(v_reset=None)``), run as its ann2snn examples do (``reset_net``, one call per
  step), when it is installed and converts the model.

Timing: ``--repeats`` repetitions; in each, every runtime (in rotating order) simulates the timing
batch once for T steps after one warm-up run (compiles happen there), and the ANN forward of the same
batch runs ``--ann-calls`` times. Reported per runtime: milliseconds per step, image·steps per
second, and the ratio of a step to the ANN forward *of the same repetition*: the median over the
repetitions and its min-max. Peak memory: the growth of the resident set of a fresh process that
loads the network and simulates the timing batch once (Linux ``VmHWM`` after a reset, minus the
resident set before the run).

Check of the fast runtime: on ``--images`` test images at T, the compiled int8 runtime against the
integer-arithmetic SNN (op by op): top-1 of both and the number of images whose outputs are equal
bit for bit.

Models:

* ``cifar10-resnet20`` (pretrained): ``spikecast.convert(model, calib=<512 train images>,
  timesteps=32)`` (the default recipe), batch 128, T=32;
* timm ``resnet18`` at 224x224 (random weights; speed only): converted from 32 CIFAR train images
  resized to 224 with ``Recipe(correction="none", reconstruct="off")`` (correction does not change
  the work of a step), batch 32, T=8.

    python benchmarks/bench_speed.py                 # both models, 10,000-image check
    python benchmarks/bench_speed.py --images 500 --repeats 1 --no-write   # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import copy
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import spikecast
from spikecast.quant import int8_kernels, integer_network
from spikecast.zoo import create_model

import results_file
from bench_data import cifar10

RUNTIMES = ("float, step by step", "float, time-batched", "integer, float32 sums", "integer, int8 kernels",
            "integer, int8 kernels, compiled step")
SJ = "SpikingJelly 2.0, default settings"
TARGETS = {"cifar10-resnet20": 0.5, "resnet18-224": 0.6}  # issue 17: one step / one ANN forward


def build(model_name: str, work: Path):
    """``(ann, {runtime: network}, timing batch, T, description)``; networks saved in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    if model_name == "cifar10-resnet20":
        ann = create_model("cifar10-resnet20", pretrained=True).eval()
        x_cal, _ = cifar10("train", 512)
        x, _ = cifar10("test")
        batch, T = x[:128], 32  # timing only
        make = lambda: spikecast.convert(ann, calib=(x_cal,), timesteps=T, progress=False)  # noqa: E731
        text = "pretrained, `spikecast.convert(model, calib=<512 train images>, timesteps=32)` (default recipe)"
    else:
        import timm

        torch.manual_seed(0)
        ann = timm.create_model("resnet18", pretrained=False).eval()
        x_small, _ = cifar10("train", 64)
        x_big = F.interpolate(x_small, size=224, mode="bilinear", align_corners=False)
        x_cal, batch, T = x_big[:32], x_big[32:64], 8
        recipe = spikecast.Recipe(timesteps=T, correction="none", reconstruct="off")
        make = lambda: spikecast.convert(ann, calib=(x_cal,), recipe=recipe, progress=False)  # noqa: E731
        text = ("timm `resnet18`, random weights (seed 0), 224x224 (CIFAR images resized), "
                "`Recipe(timesteps=8, correction='none', reconstruct='off')`, 32 calibration images")
    path = work / "float"
    if (path / "spikecast.json").is_file():
        snn = spikecast.load(path)
    else:
        t0 = time.perf_counter()
        snn = make()
        snn.metadata["bench_convert_seconds"] = round(time.perf_counter() - t0, 1)
        snn.save(path)
    exact = integer_network(snn, (x_cal,))
    fast = int8_kernels(exact)
    nets = {
        RUNTIMES[0]: with_config(snn, time_batched=False, compiled=False),
        RUNTIMES[1]: with_config(snn, time_batched=True, compiled=False),
        RUNTIMES[2]: with_config(exact, time_batched=False, compiled=False),
        RUNTIMES[3]: with_config(fast, time_batched=False, compiled=False),
        RUNTIMES[4]: with_config(fast, time_batched=False, compiled=True),
    }
    for name, net in nets.items():
        net.save(work / slug(name))
    torch.save(batch, work / "batch.pt")
    return ann, nets, batch, T, text, x_cal


def with_config(snn, **changes):
    """The same network (shared weights) run with other simulation settings."""
    return spikecast.SpikingNetwork(snn.graph_module, dataclasses.replace(snn.config, **changes), snn.metadata)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def spikingjelly_recipe(batches):
    """SpikingJelly 2.0's ``RateCodingRecipe`` at its default settings, every one pinned (mode ``max``,
    layer-wise, ``IFNode(v_reset=None)``), calibrated on ``batches`` of images."""
    from spikingjelly.activation_based import ann2snn, neuron

    return ann2snn.RateCodingRecipe(dataloader=batches, mode="max", momentum=0.1, fuse_flag=True, channel_wise=False,
                                    channel_dim=1, pre_spike_maxpool=False, half_threshold=False, eps=1e-6,
                                    neuron_factory=lambda scale: neuron.IFNode(v_threshold=1.0, v_reset=None))


def spikingjelly_net(ann, x_cal, model_name: str):
    """SpikingJelly's default conversion, or ``(None, reason)``."""
    try:
        from spikingjelly.activation_based import ann2snn, functional
    except Exception as exc:  # not installed, or a missing dependency of it
        return None, f"not importable ({type(exc).__name__})"
    try:
        if model_name == "cifar10-resnet20":
            from bench_spikingjelly import relu_resnet20

            source = relu_resnet20(ann)
        else:
            source = ann
        recipe = spikingjelly_recipe([x_cal[i:i + 64] for i in range(0, len(x_cal), 64)])
        net = ann2snn.Converter(recipe=recipe, device="cpu").convert(copy.deepcopy(source)).eval()
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return None, f"does not convert it ({type(exc).__name__}: {str(exc)[:80]})"

    def simulate(x, T):
        with torch.inference_mode():
            functional.reset_net(net)
            total = None
            for _ in range(T):
                out = net(x)
                total = out if total is None else total + out
        return total / T

    return simulate, ""


def peak_memory_mb(path: Path, batch_path: Path, T: int, threads: int) -> float:
    """Peak growth of the resident set (MiB) of a fresh process while it simulates the batch once
    (Linux: the high-water mark is reset through /proc/self/clear_refs just before)."""
    code = ("import sys, torch, spikecast; torch.set_num_threads(int(sys.argv[4])); "
            "net = spikecast.load(sys.argv[1]); x = torch.load(sys.argv[2]); "
            "net.simulate(x, 2); "  # first calls, kernels and compiles before the baseline
            "kib = lambda key: int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1]); "
            "open('/proc/self/clear_refs', 'w').write('5'); base = kib('VmRSS:'); "
            "net.simulate(x, int(sys.argv[3])); print((kib('VmHWM:') - base) / 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(batch_path), str(T), str(threads)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def interleaved(runners: dict, ann_forward, T: int, repeats: int, ann_calls: int, label: str
                ) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """Time every runner (T steps) and the ANN forward side by side: one warm-up call each (first
    calls, kernels, compiles), then ``repeats`` repetitions, each the ANN forward ``ann_calls``
    times then every runner once, in rotating order. Returns ms per step and step / ANN forward
    per runner, and the ANN ms per repetition."""
    for fn in (*runners.values(), ann_forward):
        fn()
    per_step = {name: [] for name in runners}
    ratio = {name: [] for name in runners}
    ann_ms = []
    names = list(runners)
    for rep in range(repeats):
        t0 = time.perf_counter()
        for _ in range(ann_calls):
            ann_forward()
        forward = (time.perf_counter() - t0) / ann_calls
        ann_ms.append(1e3 * forward)
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            t0 = time.perf_counter()
            runners[name]()
            step = (time.perf_counter() - t0) / T
            per_step[name].append(1e3 * step)
            ratio[name].append(step / forward)
        print(f"{label} repetition {rep + 1}: ANN {ann_ms[-1]:.1f} ms; "
              + "; ".join(f"{n} {per_step[n][-1]:.1f} ms" for n in names), flush=True)
    return per_step, ratio, ann_ms


def run_model(model_name: str, args, work: Path) -> tuple[list[str], list[str]]:
    ann, nets, batch, T, text, x_cal = build(model_name, work)
    runners = {name: (lambda net=net: net.simulate(batch, T)) for name, net in nets.items()}
    sj, sj_note = spikingjelly_net(ann, x_cal, model_name)
    if sj is not None:
        runners[SJ] = lambda: sj(batch, T)

    def ann_forward():
        with torch.inference_mode():
            ann(batch)

    per_step, ratio, ann_ms = interleaved(runners, ann_forward, T, args.repeats, args.ann_calls, model_name)
    names = list(runners)
    memory = {}
    for name in nets:
        memory[name] = peak_memory_mb(work / slug(name), work / "batch.pt", T, torch.get_num_threads())
    rows = [f"| {model_name} | fp32 ANN forward (torch, NCHW) | {statistics.median(ann_ms):.1f} ms per forward | "
            f"{len(batch) / (statistics.median(ann_ms) / 1e3):.0f} images/s | 1 | - |"]
    for name in names:
        med = statistics.median(ratio[name])
        rows.append(f"| {model_name} | {name} | {statistics.median(per_step[name]):.1f} ms per step | "
                    f"{len(batch) / (statistics.median(per_step[name]) / 1e3):.0f} image-steps/s | "
                    f"{med:.2f}x ({min(ratio[name]):.2f}-{max(ratio[name]):.2f}) | "
                    + (f"{memory[name]:.0f} MiB |" if name in memory else "- |"))
    notes = [f"**{model_name}**: {text}; timing batch {len(batch)} images, T={T}."]
    if sj is None:
        notes.append(f"SpikingJelly: {sj_note}.")
    else:
        fastest = min(RUNTIMES, key=lambda n: statistics.median(per_step[n]))
        speedup = [s / f for s, f in zip(per_step[SJ], per_step[fastest])]
        notes.append(f"Fastest spikecast runtime ({fastest}) against SpikingJelly: {statistics.median(speedup):.2f}x "
                     f"its image-steps/s ({min(speedup):.2f}-{max(speedup):.2f}).")
    target = TARGETS.get(model_name)
    if target is not None:
        best = min(statistics.median(ratio[n]) for n in RUNTIMES)
        notes.append(f"Target (issue 17): one step <= {target}x one ANN forward: best {best:.2f}x, "
                     f"**{'met' if best <= target else 'not met'}**.")
    if model_name == "cifar10-resnet20" and args.images > 0:
        notes.append(check_fast(nets, T, args.images, args.batch_size))
    return rows, notes


def check_fast(nets, T: int, images: int, batch_size: int) -> str:
    x, y = cifar10("test", images if images < 10000 else None)
    reference, fast = nets[RUNTIMES[2]], nets[RUNTIMES[4]]
    same, top_ref, top_fast = 0, 0, 0
    t0 = time.perf_counter()
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        a, b = reference.simulate(xb, T), fast.simulate(xb, T)
        same += int((a == b).flatten(1).all(1).sum())
        top_ref += int((a.argmax(-1) == yb).sum())
        top_fast += int((b.argmax(-1) == yb).sum())
    n = len(x)
    return (f"Check on {n} test images at T={T} ({time.perf_counter() - t0:.0f} s): integer-arithmetic SNN (float32 "
            f"sums, op by op) top-1 {100 * top_ref / n:.2f}%, int8 kernels + compiled step {100 * top_fast / n:.2f}%; "
            f"outputs equal bit for bit on {same}/{n} images.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cifar10-resnet20,resnet18-224")
    parser.add_argument("--images", type=int, default=10000, help="test images of the ResNet-20 check (0: skip)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch of the check")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ann-calls", type=int, default=5)
    parser.add_argument("--work", default="/tmp/spikecast-bench-speed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    run = results_file.start(threads=args.threads)
    rows, notes = [], []
    for name in args.models.split(","):
        r, n = run_model(name, args, Path(args.work) / name)
        rows += r
        notes += n
    body = "\n".join([
        "One SNN time step against one fp32 ANN forward of the same batch, side by side in each repetition "
        f"(median of {args.repeats} interleaved repetitions, min-max in brackets); image-steps per second; peak "
        "memory of a fresh process simulating the timing batch once (growth of its resident set). Runtimes: see "
        "`benchmarks/bench_speed.py`.", "",
        "| model | runtime | time | throughput | step / ANN forward | peak memory |",
        "|---|---|---:|---:|---:|---:|", *rows, "", *notes])
    print(body)
    if not args.no_write:
        run.write("speed", "Simulation speed: a time step against an ANN forward", body)


if __name__ == "__main__":
    main()
