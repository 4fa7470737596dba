"""ImageNet-size models: conversion time, simulation speed and peak memory (issue 17, item 3).

Sections ``scale-<model>`` (one per model). Models: timm ``resnet50`` and ``vit_small_patch16_224``, random weights (seed 0;
speed and memory do not depend on the weights), at 224x224. Data: CIFAR-10 train / test JPEGs
resized to 224 (bilinear) and normalised with ImageNet's statistics, read through a torch
``DataLoader`` with ``--workers`` worker processes (nothing is loaded into memory up front).

* **Conversion**: ``spikecast.convert(model, calib=<DataLoader of 512 train images>)`` - the
  default recipe (T=32: mse thresholds, advanced layer-wise correction) - in a fresh process, timed
  end to end, with the peak resident set of that process (Linux ``VmHWM``). ``--baseline-src``
  runs the same conversion with another checkout's ``spikecast`` (its commit is reported): the time
  before the layer-wise runtime was time-batched.
* **SpikingJelly 2.0** (when installed): ``ann2snn.Converter`` with its ``RateCodingRecipe``
  defaults (mode ``max``) on the same DataLoader, timed the same way; a model in which it finds no
  ReLU to replace is reported as not converted (it would stay an ANN).
* **Simulation**: the converted network on ``--batch`` test images for ``--timesteps`` steps, by
  each runtime, against the fp32 ANN forward of the same batch in each of ``--repeats`` repetitions
  (medians; min-max in brackets): ms per step, image-steps per second, step / ANN forward, and the
  peak memory of a fresh process simulating the batch once (growth of its resident set).
* **validate through the DataLoader**: ``spikecast.validate`` on ``--eval-images`` test images
  streamed by the DataLoader at T = ``--timesteps`` (a smoke of the data path at this size; random
  weights, so the accuracy is chance).

    python benchmarks/bench_scale.py --baseline-src /tmp/old-checkout
    python benchmarks/bench_scale.py --models resnet50 --calib 32 --repeats 1 --no-write   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from spikecast.paths import shared_dir

import results_file
from bench_speed import interleaved, peak_memory_mb, slug, spikingjelly_recipe, with_config

MODELS = ("resnet50", "vit_small_patch16_224")
SJ = "SpikingJelly 2.0, default settings"
TARGET_SECONDS = {"resnet50": 600}  # issue 17: default-recipe conversion with 512 images <= 10 minutes


def loader(split: str, images: int, batch: int, workers: int):
    """A DataLoader over ``images`` CIFAR-10 JPEGs of ``split`` (a fixed random subset, seed 0),
    resized to 224 and normalised as ImageNet models expect."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(224, interpolation=transforms.InterpolationMode.BILINEAR),
                             transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    folder = datasets.ImageFolder(str(shared_dir() / "data" / "cifar10-jpeg" / split), transform=tf)
    index = torch.randperm(len(folder), generator=torch.Generator().manual_seed(0))[:images].tolist()
    return torch.utils.data.DataLoader(torch.utils.data.Subset(folder, index), batch_size=batch,
                                       num_workers=workers, shuffle=False)


def model(name: str) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False).eval()


# ---------------------------------------------------------------------------- one conversion, own process
def convert_one(args) -> None:
    """Child process: convert (spikecast or SpikingJelly), print one JSON line."""
    torch.set_num_threads(args.threads)
    ann = model(args.convert_one)
    data = loader("train", args.calib, 64, args.workers)
    result = {"torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    if args.tool == "spikecast":
        import spikecast

        snn = spikecast.convert(ann, calib=data, progress=False)
        result["seconds"] = time.perf_counter() - t0
        result["correction"] = (snn.metadata.get("correction") or {}).get("images")
        if args.save:
            snn.save(args.save)
    else:
        from spikingjelly.activation_based import ann2snn, neuron

        recipe = spikingjelly_recipe([x for x, _ in data])
        net = ann2snn.Converter(recipe=recipe, device="cpu").convert(ann)
        result["seconds"] = time.perf_counter() - t0
        result["spiking_neurons"] = sum(isinstance(m, neuron.BaseNode) for m in net.modules())
    result["peak_mib"] = int(next(line for line in open("/proc/self/status")
                                  if line.startswith("VmHWM:")).split()[1]) / 1024
    print("RESULT " + json.dumps(result), flush=True)


def run_convert(name: str, args, tool: str, src: Path, save: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--convert-one", name, "--tool", tool, "--calib", str(args.calib),
           "--workers", str(args.workers), "--threads", str(args.threads)]
    if save is not None:
        cmd += ["--save", str(save)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(Path(__file__).parent)]))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode < 0:  # SIGKILL: on Linux, most likely the kernel's out-of-memory killer
        return {"error": f"killed by signal {-out.returncode} (SIGKILL: out of memory, see the kernel log)"
                if out.returncode == -9 else f"killed by signal {-out.returncode}"}
    if out.returncode != 0 or line is None:
        errors = [x for x in out.stderr.strip().splitlines() if "Error" in x or "error" in x]
        return {"error": (errors or out.stderr.strip().splitlines() or ["?"])[-1][:160]}
    return json.loads(line[len("RESULT "):])


def commit_of(src: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ---------------------------------------------------------------------------- simulation speed
def spikingjelly_sim(ann, calib_batches):
    try:
        from spikingjelly.activation_based import ann2snn, functional, neuron
    except Exception as exc:  # noqa: BLE001
        return None, f"not importable ({type(exc).__name__})"
    try:
        recipe = spikingjelly_recipe(calib_batches)
        import copy

        net = ann2snn.Converter(recipe=recipe, device="cpu").convert(copy.deepcopy(ann)).eval()
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return None, f"does not convert it ({type(exc).__name__}: {str(exc)[:80]})"
    if not any(isinstance(m, neuron.BaseNode) for m in net.modules()):
        return None, "finds no ReLU to replace (0 spiking neurons: the result would stay an ANN)"

    def simulate(x, T):
        with torch.inference_mode():
            functional.reset_net(net)
            total = None
            for _ in range(T):
                out = net(x)
                total = out if total is None else total + out
        return total / T

    return simulate, ""


def run_model(name: str, args, work: Path) -> tuple[list[str], list[str], list[str]]:
    import spikecast

    work.mkdir(parents=True, exist_ok=True)
    saved = work / "snn"
    conv_rows, notes = [], []
    here = Path(__file__).resolve().parents[1]
    runs = [("spikecast " + commit_of(here), "spikecast", here, saved)]
    if args.baseline_src and name in args.baseline_models.split(","):
        runs.append((f"spikecast {commit_of(Path(args.baseline_src))} (before)", "spikecast",
                     Path(args.baseline_src), None))
    runs.append((SJ, "spikingjelly", here, None))
    for label, tool, src, save in runs:
        r = run_convert(name, args, tool, src, save)
        print(name, label, r, flush=True)
        if "error" in r:
            conv_rows.append(f"| {name} | {label} | failed: {r['error']} | - | - |")
        elif tool == "spikingjelly" and not r.get("spiking_neurons"):
            conv_rows.append(f"| {name} | {label} | not converted: no ReLU to replace (0 spiking neurons) | - | - |")
        else:
            extra = (f"correction on {r['correction']} images" if r.get("correction")
                     else f"{r.get('spiking_neurons')} IF neurons" if tool == "spikingjelly" else "-")
            conv_rows.append(f"| {name} | {label} | {r['seconds']:.0f} s | {r['peak_mib']:.0f} MiB | {extra} |")
            if tool == "spikecast" and save is not None and name in TARGET_SECONDS:
                target = TARGET_SECONDS[name]
                notes.append(f"Target (issue 17): default-recipe conversion of {name} with {args.calib} calibration "
                             f"images <= {target} s: {r['seconds']:.0f} s, "
                             f"**{'met' if r['seconds'] <= target else 'not met'}**.")

    # simulation speed, this checkout's network
    torch.set_num_threads(args.threads)
    ann = model(name)
    if not (saved / "spikecast.json").is_file():
        return conv_rows, [], notes + [f"{name}: no converted network to simulate."]
    snn = spikecast.load(saved)
    x, _ = next(iter(loader("test", args.batch, args.batch, 0)))
    T = args.timesteps
    nets = {"float, step by step": with_config(snn, time_batched=False),
            "float, time-batched": with_config(snn, time_batched=True)}
    calib = [xb for xb, _ in loader("train", 64, 32, 0)]
    sj, sj_note = spikingjelly_sim(ann, calib)
    runners = {n: (lambda net=net: net.simulate(x, T)) for n, net in nets.items()}
    if sj is not None:
        runners[SJ] = lambda: sj(x, T)

    def ann_forward():
        with torch.inference_mode():
            ann(x)

    per_step, ratio, ann_ms = interleaved(runners, ann_forward, T, args.repeats, args.ann_calls, name)
    names = list(runners)
    torch.save(x, work / "batch.pt")
    memory = {}
    for n, net in nets.items():
        net.save(work / slug(n))
        memory[n] = peak_memory_mb(work / slug(n), work / "batch.pt", T, args.threads)
    sim_rows = [f"| {name} | fp32 ANN forward | {statistics.median(ann_ms):.0f} ms per forward | "
                f"{len(x) / (statistics.median(ann_ms) / 1e3):.1f} images/s | 1 | - |"]
    for n in names:
        sim_rows.append(f"| {name} | {n} | {statistics.median(per_step[n]):.0f} ms per step | "
                        f"{len(x) / (statistics.median(per_step[n]) / 1e3):.1f} image-steps/s | "
                        f"{statistics.median(ratio[n]):.2f}x ({min(ratio[n]):.2f}-{max(ratio[n]):.2f}) | "
                        + (f"{memory[n]:.0f} MiB |" if n in memory else "- |"))
    if sj is None:
        notes.append(f"{name}: SpikingJelly {sj_note}.")
    else:
        best = min(nets, key=lambda n: statistics.median(per_step[n]))
        speedup = [s / f for s, f in zip(per_step[SJ], per_step[best])]
        notes.append(f"{name}: fastest spikecast runtime ({best}) against SpikingJelly: "
                     f"{statistics.median(speedup):.2f}x its image-steps/s ({min(speedup):.2f}-{max(speedup):.2f}).")
    # validate streamed through the DataLoader
    t0 = time.perf_counter()
    result = spikecast.validate(ann, snn, loader("test", args.eval_images, 32, args.workers), timesteps=[T])
    notes.append(f"{name}: `spikecast.validate` on {result.samples} test images streamed by a DataLoader "
                 f"({args.workers} workers) at T={T}: {time.perf_counter() - t0:.0f} s.")
    return conv_rows, sim_rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--calib", type=int, default=512, help="calibration images of the conversion")
    parser.add_argument("--baseline-src", help="a checkout of an earlier spikecast: its conversion time too")
    parser.add_argument("--baseline-models", default="resnet50", help="the models converted by --baseline-src")
    parser.add_argument("--batch", type=int, default=16, help="timing batch")
    parser.add_argument("--timesteps", type=int, default=8, help="steps of the timing runs")
    parser.add_argument("--eval-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ann-calls", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="/tmp/spikecast-bench-scale")
    parser.add_argument("--no-write", action="store_true")
    # internal: one conversion in this process
    parser.add_argument("--convert-one", help=argparse.SUPPRESS)
    parser.add_argument("--tool", default="spikecast", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.convert_one:
        convert_one(args)
        return
    for name in args.models.split(","):  # one section per model: a model can be rerun alone
        run = results_file.start(threads=args.threads)
        conv, sim, notes = run_model(name, args, Path(args.work) / name)
        write(name, args, run, conv, sim, notes)


def write(name: str, args, run, conv: list[str], sim: list[str], notes: list[str]) -> None:
    body = "\n".join([
        f"timm models at 224x224, random weights (seed 0); CIFAR-10 JPEGs resized to 224 through a DataLoader "
        f"({args.workers} workers). See `benchmarks/bench_scale.py`.", "",
        f"**Conversion** with the default recipe (`spikecast.convert(model, calib=<DataLoader of {args.calib} "
        "images>)`), each in a fresh process: wall time and the process's peak resident set.", "",
        "| model | converter | time | peak memory | note |", "|---|---|---:|---:|---|", *conv, "",
        f"**Simulation**: batch {args.batch}, T={args.timesteps}, median of {args.repeats} interleaved repetitions "
        "(min-max in brackets); peak memory: growth of a fresh process's resident set while it simulates the batch.",
        "", "| model | runtime | time | throughput | step / ANN forward | peak memory |",
        "|---|---|---:|---:|---:|---:|", *sim, "", *[f"- {n}" for n in notes]])
    print(body)
    if not args.no_write:
        # section "scale" held resnet50's numbers before each model had a section of its own
        run.write(f"scale-{name.replace('_', '-')}", f"ImageNet-size models: {name} (conversion, simulation, memory)",
                  body, replaces=("scale",) if name == "resnet50" else ())


if __name__ == "__main__":
    main()
