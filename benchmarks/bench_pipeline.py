"""Re-measure the headline numbers after the one-pipeline refactor (issue 13), at HEAD.

Three checks, each on the shared CIFAR-10 data with the default recipe (nothing set but T):

* ``resnet20``: ``zoo:cifar10-resnet20`` calibrated for T=32 on 512 class-balanced train images,
  SNN top-1 at T=32 on the full 10,000-image test set (RESULTS.md before the refactor: 80.85%).
* ``vit``: ``zoo:cifar10-vit-tiny`` calibrated for T=8, top-1 at T=4/8/16 on the full test set
  (before: 66.07 / 67.13 / 67.22%). Needs the weights trained by ``benchmarks/train_cifar_zoo.py``.
* ``equivalence`` (with ``--against REV``): the same conversions (ResNet-20 for T=32, ViT for T=8;
  512 calibration images) by the code of commit REV (a git worktree, in a subprocess) and by this
  checkout, compared tensor by tensor, and their outputs on 500 test images at T=4/8/16/32: the
  refactor changes no number when every tensor and output is identical.
* ``vit-onnx``: that ViT SNN (compensated GELU / LayerNorm / attention) exported as the ONNX step
  graph and driven by ``OnnxSpikingNetwork`` for T=8 on 1,000 class-balanced test images, against
  the torch SNN: images with the same top-1, images within 1e-4, max abs difference.

Writes the section "One pipeline: numbers at HEAD (issue 13)" of benchmarks/RESULTS.md.

    python benchmarks/bench_pipeline.py                 # all three
    python benchmarks/bench_pipeline.py --checks resnet20
    python benchmarks/bench_pipeline.py --checks equivalence --against 45d5122   # before the refactor
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

import spikecast
from spikecast.data import cifar10_tensors
from spikecast.export import OnnxSpikingNetwork, export_snn_step
from spikecast.paths import shared_dir
from spikecast.zoo import create_model

from results_file import machine_line, update_section

ROWS_FILE = Path(__file__).resolve().parent / "pipeline_rows.json"
BEFORE = {"resnet20": {32: 80.85}, "vit": {4: 66.07, 8: 67.13, 16: 67.22}}
BEFORE_ANN = {"resnet20": 81.03, "vit": 67.36}  # the ViT's weights are retrained when absent from the cache
BOUND = {"resnet20": 0.1, "vit": 0.2}


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return head + (" (dirty)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


_CONVERTED: dict = {}  # (model, budget) -> (ann, snn, seconds): the ONNX check reuses the ViT conversion


def converted(model: str, budget: int, args):
    if (model, budget) not in _CONVERTED:
        x_cal, _ = cifar10_tensors("train", limit=args.calib_images)
        ann = create_model(model, pretrained=True)
        start = time.perf_counter()
        snn = spikecast.convert(ann, calib=x_cal, timesteps=budget, progress=False)
        _CONVERTED[(model, budget)] = (ann, snn, time.perf_counter() - start)
    return _CONVERTED[(model, budget)]


def accuracy_check(key: str, model: str, budget: int, timesteps: list[int], args) -> dict:
    x_test, y_test = cifar10_tensors("test", limit=args.images if args.images < 10000 else None)
    ann, snn, convert_s = converted(model, budget, args)
    batches = [(x_test[i:i + 250], y_test[i:i + 250]) for i in range(0, len(x_test), 250)]
    res = spikecast.validate(ann, snn, batches, timesteps=timesteps, progress=False)
    row = {"check": key, "model": model, "budget": budget, "images": res.samples,
           "ann": round(100 * res.ann_accuracy, 2),
           "snn": {t: round(100 * res.snn_accuracy[t], 2) for t in timesteps},
           "convert_s": round(convert_s, 1), "validate_s": round(res.seconds, 1)}
    if res.samples == 10000:
        row["delta_vs_before"] = {t: round(row["snn"][t] - v, 2) for t, v in BEFORE[key].items()}
        row["within_bound"] = all(abs(d) <= BOUND[key] + 1e-9 for d in row["delta_vs_before"].values())
        # SNN minus ANN, now and before: what the conversion loses, whatever the ANN's weights
        row["gap_to_ann"] = {t: round(row["snn"][t] - row["ann"], 2) for t in BEFORE[key]}
        row["gap_to_ann_before"] = {t: round(v - BEFORE_ANN[key], 2) for t, v in BEFORE[key].items()}
    return row


def onnx_check(args) -> dict:
    x_cal, _ = cifar10_tensors("train", limit=args.calib_images)
    x_onnx, y_onnx = cifar10_tensors("test", limit=args.onnx_images)  # class-balanced
    T = 8
    _, snn, _ = converted("cifar10-vit-tiny", T, args)
    with tempfile.TemporaryDirectory() as tmp:
        driver = OnnxSpikingNetwork(export_snn_step(snn, Path(tmp) / "vit_step.onnx", example=x_cal[:2]))
        diffs, close, agree, correct, correct_torch, n = [], 0, 0, 0, 0, len(x_onnx)
        start = time.perf_counter()
        for i in range(0, n, 250):
            xb = x_onnx[i:i + 250]
            ref = snn.simulate(xb, T)
            got = driver.simulate(xb, T)
            per_image = (ref - got).abs().flatten(1).amax(1)
            diffs.append(float(per_image.max()))
            close += int((per_image <= 1e-4).sum())
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
            correct += int((got.argmax(-1) == y_onnx[i:i + len(xb)]).sum())
            correct_torch += int((ref.argmax(-1) == y_onnx[i:i + len(xb)]).sum())
    return {"check": "vit-onnx", "model": "cifar10-vit-tiny", "budget": T, "images": n, "same_top1": agree,
            "within_1e-4": close, "max_abs_diff": max(diffs), "onnx_top1": round(100 * correct / n, 2),
            "torch_top1": round(100 * correct_torch / n, 2), "seconds": round(time.perf_counter() - start, 1),
            "met": agree >= 0.995 * n}


EQUIVALENCE_MODELS = (("cifar10-resnet20", 32), ("cifar10-vit-tiny", 8))


def equivalence_child(out: str) -> None:
    """Run in a subprocess with PYTHONPATH at the code to test: convert and simulate, save tensors."""
    x_cal, _ = cifar10_tensors("train", limit=512)
    x_test, _ = cifar10_tensors("test", limit=500)
    result = {"spikecast": spikecast.__file__}
    for model, budget in EQUIVALENCE_MODELS:
        snn = spikecast.convert(create_model(model, pretrained=True), calib=x_cal, timesteps=budget, progress=False)
        result[model] = {"state": dict(snn.graph_module.state_dict()),
                         "outputs": snn.simulate(x_test, [4, 8, 16, 32])}
    torch.save(result, out)


def equivalence_check(args) -> dict:
    if not args.against:
        raise SystemExit("--checks equivalence needs --against REV (the commit to compare with)")
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(tree), args.against], cwd=repo,
                       check=True, capture_output=True)
        try:
            runs = {}
            for label, code in (("before", tree), ("now", repo)):
                out = Path(tmp) / f"{label}.pt"
                # the old tree would look for ../shared next to itself: point both at this checkout's
                env = dict(os.environ, PYTHONPATH=str(code), SPIKECAST_SHARED=str(shared_dir().resolve()))
                subprocess.run([sys.executable, __file__, "--equivalence-child", str(out)], env=env, check=True,
                               cwd=Path(__file__).parent)
                runs[label] = torch.load(out, weights_only=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=repo, capture_output=True)
    assert runs["before"]["spikecast"].startswith(str(tree)), "the old run did not import the old code"
    row = {"check": "equivalence", "against": args.against, "models": {}}
    for model, budget in EQUIVALENCE_MODELS:
        a, b = runs["before"][model], runs["now"][model]
        common = set(a["state"]) & set(b["state"])
        differing = sorted(k for k in common if not torch.equal(a["state"][k], b["state"][k]))
        row["models"][model] = {
            "budget": budget, "tensors": len(common), "only_before": sorted(set(a["state"]) - common),
            "only_now": sorted(set(b["state"]) - common), "differing": differing,
            "max_output_diff": {t: float((a["outputs"][t] - b["outputs"][t]).abs().max()) for t in a["outputs"]}}
    row["identical"] = all(not m["differing"] and not m["only_before"] and not m["only_now"]
                           and max(m["max_output_diff"].values()) == 0.0 for m in row["models"].values())
    return row


def write_section(rows: dict, args) -> None:
    lines = ["Default recipe (`spikecast.convert(model, calib=images, timesteps=T)`: mse thresholds, advanced "
             f"correction, signed / bipolar neurons), {args.calib_images} class-balanced train images (labels "
             "unused), re-measured at HEAD after the refactor against the numbers RESULTS.md had before it. "
             "Nothing here was chosen on these numbers: the recipe is the one from before the refactor.", ""]
    for key in ("resnet20", "vit"):
        row = rows.get(key)
        if not row:
            continue
        cells = ", ".join(f"T={t}: {v:.2f}%" for t, v in row["snn"].items())
        delta = ", ".join(f"T={t}: {d:+.2f}" for t, d in row.get("delta_vs_before", {}).items())
        verdict = ("within" if row.get("within_bound") else "NOT within") + f" ±{BOUND[key]} point(s)" \
            if "within_bound" in row else "partial test set: no comparison"
        lines.append(f"- **{row['model']}** calibrated for T={row['budget']}, {row['images']} test images: ANN "
                     f"{row['ann']:.2f}%, SNN {cells}; change vs before: {delta or 'n/a'} ({verdict}); "
                     f"conversion {row['convert_s']:.0f} s, validation {row['validate_s']:.0f} s.")
        if "gap_to_ann" in row:
            now = ", ".join(f"T={t}: {d:+.2f}" for t, d in row["gap_to_ann"].items())
            before = ", ".join(f"T={t}: {d:+.2f}" for t, d in row["gap_to_ann_before"].items())
            ann_note = "" if abs(row["ann"] - BEFORE_ANN[key]) < 0.005 else (
                f" (the ANN itself differs from before: {row['ann']:.2f}% vs {BEFORE_ANN[key]:.2f}%, its weights "
                "were retrained by benchmarks/train_cifar_zoo.py into an empty cache)")
            lines.append(f"  SNN minus ANN: {now}; before the refactor: {before}{ann_note}.")
    row = rows.get("equivalence")
    if row:
        parts = []
        for model, m in row["models"].items():
            parts.append(f"{model} (T={m['budget']}): {m['tensors']} tensors, {len(m['differing'])} differ, "
                         f"{len(m['only_before']) + len(m['only_now'])} present on one side only; largest output "
                         f"difference at T=4/8/16/32 on 500 test images "
                         f"{max(m['max_output_diff'].values()):.1e}")
        lines.append(f"- **Same networks as before the refactor** (commit {row['against']}, run from a git worktree, "
                     f"same weights and 512 calibration images): " + "; ".join(parts) + ". "
                     + ("Identical: the refactor changes no number." if row["identical"] else "NOT identical."))
    row = rows.get("vit-onnx")
    if row:
        lines.append(f"- **{row['model']}** SNN (compensated GELU / LayerNorm / attention) as the ONNX step graph, "
                     f"driven by `OnnxSpikingNetwork` for T={row['budget']} on {row['images']} class-balanced test "
                     f"images: same top-1 as torch on {row['same_top1']}/{row['images']} "
                     f"({'met' if row['met'] else 'NOT met'}: >= 99.5%), outputs within 1e-4 on "
                     f"{row['within_1e-4']}/{row['images']} (max abs difference {row['max_abs_diff']:.2e}); top-1 "
                     f"{row['onnx_top1']:.2f}% (torch {row['torch_top1']:.2f}%); {row['seconds']:.0f} s.")
    runs = [f"{key}: `{row.get('command', '?')}` at commit {row.get('commit', '?')} (the tree its process "
            f"started from), {row.get('date', '?')}, load average {row.get('load', '?')} when it ended"
            for key, row in rows.items()]
    lines += ["", "Runs: " + "; ".join(runs) + ".", "", machine_line()]
    update_section("One pipeline: numbers at HEAD (issue 13)", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", default="resnet20,vit,vit-onnx")
    parser.add_argument("--images", type=int, default=10000, help="test images of the accuracy checks")
    parser.add_argument("--onnx-images", type=int, default=1000)
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--against", help="the commit the equivalence check compares with")
    parser.add_argument("--equivalence-child", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.equivalence_child:
        equivalence_child(args.equivalence_child)
        return
    torch.set_num_threads(args.threads)
    commit = git_commit()  # the code this run imported at its start, not whatever is there at the end
    rows = json.loads(ROWS_FILE.read_text()) if ROWS_FILE.exists() and not args.no_write else {}
    for key in args.checks.split(","):
        if key == "resnet20":
            rows[key] = accuracy_check(key, "cifar10-resnet20", 32, [32], args)
        elif key == "vit":
            rows[key] = accuracy_check(key, "cifar10-vit-tiny", 8, [4, 8, 16], args)
        elif key == "vit-onnx":
            rows[key] = onnx_check(args)
        elif key == "equivalence":
            rows[key] = equivalence_check(args)
        else:
            raise SystemExit(f"unknown check {key!r}")
        print(json.dumps(rows[key]), flush=True)
        if not args.no_write:
            rows[key].update(commit=commit, command=" ".join(["python", *sys.argv]),
                             date=date.today().isoformat(), load=load_average())
            ROWS_FILE.write_text(json.dumps(rows, indent=1) + "\n")
            write_section(rows, args)


if __name__ == "__main__":
    main()
