"""Post-training calibration of the shared CIFAR-10 ResNets: ablation (on validation), headline (on test).

Every choice is made on the validation split (5,000 images carved from the training folder,
``spikecast.data``); the test set is read once per reported number.

``ablation``: one row per step of the recipe, columns T = 4, 8, 16, 32; every T-dependent row is
calibrated separately for each column's T (mse thresholds and corrections target a budget); max
and percentile rows are read from one simulation. Scored on a class-balanced subset of the
VALIDATION split. The script then picks the recipe with the highest mean validation top-1 over
all models and columns and says whether it is the library's default (``spikecast.Recipe()``).
Writes section ``calibration-ablation``.

``headline``: the default recipe of ``spikecast.convert`` calibrated for T=16 and for T=32 (512
class-balanced train images, no labels), SNN top-1 on the full 10,000-image TEST set, with early
exit. Writes section ``calibration-headline``.

``guard``: cifar10-resnet20, default recipe for T=16, on the fixed first 1,000 class-balanced test
images (``cifar10_tensors("test", limit=1000)``), on the CPU. Writes section ``headline-guard``,
whose value ``tests/test_headline_guard.py`` recomputes in CI (within 0.5 point).

    python benchmarks/bench_calibration.py ablation              # validation split, 1,000 images
    python benchmarks/bench_calibration.py headline              # test set, 10,000 images
    python benchmarks/bench_calibration.py guard                 # test subset, ~2 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

import spikecast
from spikecast.calibrate.sample import calibration_set
from spikecast.calibrate.thresholds import calibrate
from spikecast.convert.correction import CorrectionConfig
from spikecast.data import TensorBatches
from spikecast.pipeline import correct, prepare
from spikecast.recipe import Recipe
from spikecast.zoo import create_model

import results_file
from bench_data import cifar10

MODELS = "cifar10-resnet20,cifar10-resnet32"
EARLY_EXIT = (0.9, 0.99, 0.999)
GUARD = dict(model="cifar10-resnet20", timesteps=16, images=1000, calib_images=512)

# name -> Recipe fields; the fields not named are pinned to BASE (not to the library default, which may move)
BASE = dict(percentile=99.95, per_channel=False, signed=True, levels=1, v_init=0.5)
ROWS = {
    "max": dict(thresholds="max", correction="none"),
    "percentile 99.95": dict(thresholds="percentile", correction="none"),
    "mse": dict(thresholds="mse", correction="none"),
    "mse per-channel": dict(thresholds="mse", per_channel=True, correction="none"),
    "mse + bias": dict(thresholds="mse", correction="light", potential=False),
    "mse + bias + potential (light)": dict(thresholds="mse", correction="light"),
    "mse + advanced": dict(thresholds="mse", correction="advanced"),
    "mse + advanced, binary spikes": dict(thresholds="mse", correction="advanced", signed=False),
}
T_FREE = {"max", "percentile 99.95"}


def row_recipe(row: dict, T: int, calib_images: int) -> tuple[Recipe, bool]:
    fields = {**BASE, **row}
    potential = fields.pop("potential", True)
    return Recipe(timesteps=T, calib_images=calib_images, **fields), potential


def default_row() -> str | None:
    """The ablation row that ``spikecast.Recipe()`` is (compared field by field), if any."""
    default = Recipe()
    for name, row in ROWS.items():
        recipe, potential = row_recipe(row, default.timesteps, default.calib_images)
        if potential and recipe == default:
            return name
    return None


def convert_row(ann, x_cal, T, row: dict, device):
    recipe, potential = row_recipe(row, T, len(x_cal))
    start = time.perf_counter()
    if potential:
        snn = spikecast.convert(ann, x_cal, recipe, progress=False, device=device)
    else:  # the "+bias" step alone: correction without the potential pass
        images = calibration_set(x_cal, max_images=recipe.calib_images)
        snn = spikecast.convert(ann, images, recipe.replace(correction="none"), progress=False, device=device)
        calibrated, _ = calibrate(prepare(ann, x_cal[:2].to(device)), images, recipe.calibration_config(),
                                  progress=False, device=device)
        snn = correct(snn, calibrated, images, CorrectionConfig(level="light", timesteps=T, potential=False),
                      progress=False, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return snn, time.perf_counter() - start


def pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def ablation(args, run) -> None:
    device = torch.device(args.device)
    x_cal, _ = cifar10("train", args.calib_images)
    x_val, y_val = cifar10("val", args.images)
    columns = [int(t) for t in args.timesteps.split(",")]
    models = args.models.split(",")
    scores: dict[str, dict[str, dict[int, float]]] = {}
    blocks = []
    for name in models:
        ann = create_model(name, pretrained=True).to(device)
        lines = [f"**{name}**", "", "| recipe | " + " | ".join(f"T={t}" for t in columns) +
                 " | mean | convert time (T=32) |", "|---|" + "---:|" * (len(columns) + 2)]
        ann_acc = None
        for row_name, row in ROWS.items():
            accs, secs_32 = {}, None
            if row_name in T_FREE:
                snn, secs_32 = convert_row(ann, x_cal, max(columns), row, device)
                res = spikecast.validate(ann, snn, TensorBatches(x_val, y_val, batch_size=args.batch_size),
                                         timesteps=columns, progress=False)
                accs, ann_acc = dict(res.snn_accuracy), res.ann_accuracy
            else:
                for T in columns:
                    snn, secs = convert_row(ann, x_cal, T, row, device)
                    secs_32 = secs if T == 32 else secs_32
                    res = spikecast.validate(ann, snn, TensorBatches(x_val, y_val, batch_size=args.batch_size),
                                             timesteps=[T], progress=False)
                    accs[T], ann_acc = res.snn_accuracy[T], res.ann_accuracy
            scores.setdefault(row_name, {})[name] = accs
            mean = sum(accs.values()) / len(accs)
            lines.append(f"| {row_name} | " + " | ".join(pct(accs[t]) for t in columns) + f" | {pct(mean)} | "
                         + (f"{secs_32:.1f} s |" if secs_32 is not None else " |"))
            print(name, lines[-1], flush=True)
        lines += ["", f"ANN top-1 on these validation images: {pct(ann_acc)}"]
        blocks.append("\n".join(lines))
        if args.partial:  # one process per model (in parallel); `ablation-combine` writes the section
            Path(args.partial).write_text(json.dumps(dict(models=models[:len(blocks)], columns=columns, scores=scores,
                                                          blocks=blocks, n_val=len(y_val), n_cal=len(x_cal),
                                                          device=str(device), command=run.command)))
            continue
        # written after every model, so a run cut short still leaves a complete section for the models done
        write_ablation(args, run, models[:len(blocks)], columns, scores, blocks, len(y_val), len(x_cal), device)


def ablation_combine(args, run) -> None:
    """Write the ablation section from the ``--partial`` files of per-model processes (given in order)."""
    parts = [json.loads(Path(f).read_text()) for f in args.parts]
    models, blocks, scores = [], [], {}
    for part in parts:
        models += part["models"]
        blocks += part["blocks"]
        for row, per_model in part["scores"].items():
            for model, accs in per_model.items():
                scores.setdefault(row, {})[model] = {int(t): v for t, v in accs.items()}
    run.command += " (combining: " + "; ".join(part.get("command", "") for part in parts) + ")" \
        if any(part.get("command") for part in parts) else ""
    write_ablation(args, run, models, parts[0]["columns"], scores, blocks, parts[0]["n_val"], parts[0]["n_cal"],
                   parts[0]["device"])


def write_ablation(args, run, models, columns, scores, blocks, n_val, n_cal, device) -> None:
    overall = {row: sum(sum(a.values()) / len(a) for a in per_model.values()) / len(per_model)
               for row, per_model in scores.items()}
    chosen = max(overall, key=lambda r: overall[r])
    default = default_row()
    verdict = (f"**Chosen on validation: `{chosen}`** (highest mean top-1 over {', '.join(models)} and "
               f"T = {', '.join(map(str, columns))}: {pct(overall[chosen])}). The library default "
               f"(`spikecast.Recipe()`) is the row `{default}`: "
               + ("the same recipe." if chosen == default else
                  "**a different recipe: the default must be changed to the chosen one.**"))
    print(verdict, flush=True)
    recipe_fields = {k: v for k, v in dataclasses.asdict(Recipe()).items()}
    body = "\n".join([
        f"Models: {', '.join(models)}. SNN top-1 on the first {n_val} class-balanced images of the "
        f"**validation split** (`cifar10_tensors(\"val\", limit={args.images})`: 5,000 images carved from the "
        f"training folder, never used for calibration or training); no test image is read. Calibration: "
        f"{n_cal} class-balanced images of the train split (labels unused). Each column's network is "
        "calibrated for that T and runs exactly T steps (max and percentile rows: one calibration, read at "
        "every T). Rows: thresholds from the max / 99.95th percentile / minimum expected IF error for T "
        "(mse) of the activations, per site or per channel; then layer-wise correction with the ANN as "
        "teacher (bias; bias + potential = `light`; + per-channel threshold refinement = `advanced`). "
        f"Fields every row pins unless it names them: {json.dumps(BASE)}. Convert time: the whole "
        f"`convert` call for T=32 on `{device}`.", "",
        "What is chosen here: the default recipe (thresholds, correction, signed vs binary neurons) - by "
        "the rule \"highest mean validation top-1 over models and columns\", fixed before the run.", "",
        "\n\n".join(blocks), "", verdict, "",
        f"`spikecast.Recipe()` at this commit: `{json.dumps(recipe_fields)}`"])
    if not args.no_write:
        run.write("calibration-ablation", "Calibration ablation (validation split)", body)


def headline(args, run) -> None:
    device = torch.device(args.device)
    x_cal, _ = cifar10("train", args.calib_images)
    x_test, y_test = cifar10("test", args.images if args.images < 10000 else None)
    budgets = [int(b) for b in args.budgets.split(",")]
    cols = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= max(budgets)]
    lines = ["| model | ANN | calibrated for | " + " | ".join(f"T={t}" for t in cols) + " | "
             + " | ".join(f"early exit {c:g}" for c in EARLY_EXIT) + " | convert time |",
             "|---|---:|---:|" + "---:|" * len(cols) + "---:|" * len(EARLY_EXIT) + "---:|"]
    default = Recipe()

    def write() -> None:  # after every network, so a run cut short keeps a complete table of what it did
        body = "\n".join([
            f"`spikecast.convert(model, calib=images, timesteps=T)` with nothing else set - the default recipe "
            f"({default.thresholds} thresholds, {default.correction_used} correction, "
            f"{'signed' if default.signed else 'binary'} neurons), chosen on the validation split (section "
            f"*Calibration ablation (validation split)*); {len(x_cal)} class-balanced train images (labels "
            f"unused); SNN top-1 on {len(y_test)} **test** images, read once for this table. A network calibrated "
            "for T runs exactly T steps; the smaller T columns are read from the same run. Early exit (Dynamic "
            "Confidence): a sample stops at the first step where the softmax of its mean output reaches the "
            "confidence shown (accuracy, mean steps used). Nothing in this table was chosen on it; the "
            f"confidences are fixed in the script. Device: `{device}`.", "", *lines])
        if not args.no_write:
            run.write("calibration-headline", "CIFAR-10 ResNets: default recipe, full test set", body)

    for name in args.models.split(","):
        ann = create_model(name, pretrained=True).to(device)
        for budget in budgets:
            start = time.perf_counter()
            snn = spikecast.convert(ann, x_cal, timesteps=budget, calib_images=len(x_cal), progress=False,
                                    device=device)
            secs = time.perf_counter() - start
            ts = [t for t in cols if t <= budget]
            res = spikecast.validate(ann, snn, TensorBatches(x_test, y_test, batch_size=args.batch_size),
                                     timesteps=ts, progress=False, early_exit=EARLY_EXIT)
            cells = [pct(res.snn_accuracy[t]) if t in res.snn_accuracy else "" for t in cols]
            exits = " | ".join(f"{pct(e.accuracy)} in {e.mean_steps:.1f} steps" for e in res.early_exit)
            lines.append(f"| {name} | {pct(res.ann_accuracy)} | T={budget} | " + " | ".join(cells) +
                         f" | {exits} | {secs:.0f} s |")
            print(lines[-1], flush=True)
            write()


def guard(args, run) -> None:
    x_cal, _ = cifar10("train", GUARD["calib_images"])
    x_test, y_test = cifar10("test", GUARD["images"])
    ann = create_model(GUARD["model"], pretrained=True)
    snn = spikecast.convert(ann, x_cal, timesteps=GUARD["timesteps"], progress=False)
    res = spikecast.validate(ann, snn, TensorBatches(x_test, y_test, batch_size=250),
                             timesteps=[GUARD["timesteps"]], progress=False)
    value = res.snn_accuracy[GUARD["timesteps"]]
    print(f"guard: {pct(value)} (ANN {pct(res.ann_accuracy)})", flush=True)
    body = "\n".join([
        f"`spikecast.convert(zoo {GUARD['model']}, cifar10_tensors(\"train\", limit={GUARD['calib_images']}), "
        f"timesteps={GUARD['timesteps']})` (default recipe), on the CPU, validated on the fixed test subset "
        f"`cifar10_tensors(\"test\", limit={GUARD['images']})` (the first {GUARD['images']} class-balanced test "
        f"images). `tests/test_headline_guard.py` recomputes this value in CI and fails when it moves by more "
        "than 0.5 point.", "",
        "| model | calibrated for | test images | ANN top-1 | SNN top-1 |", "|---|---:|---:|---:|---:|",
        f"| {GUARD['model']} | T={GUARD['timesteps']} | {len(y_test)} | {pct(res.ann_accuracy)} | "
        f"guard value: {pct(value)} |"])
    if not args.no_write:
        run.write("headline-guard", "Headline guard: ResNet-20, default recipe, T=16, 1,000 test images", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("ablation", "ablation-combine", "headline", "guard"))
    parser.add_argument("parts", nargs="*", help="ablation-combine: the --partial files, in model order")
    parser.add_argument("--partial", default=None, help="ablation: write this model's rows to this JSON file "
                        "instead of the section (run models in parallel, then ablation-combine)")
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--images", type=int, default=None,
                        help="ablation: validation images (default 1000); headline: test images (default 10000)")
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--timesteps", default="4,8,16,32", help="ablation columns")
    parser.add_argument("--budgets", default="16,32", help="headline: the T each network is calibrated for")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    run = results_file.start(threads=args.threads)
    if args.images is None:
        args.images = 10000 if args.mode == "headline" else 1000
    if args.device.startswith("cuda"):
        # full fp32 on the GPU: TF32 convolutions would move thresholds the CPU run does not
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    {"ablation": ablation, "ablation-combine": ablation_combine, "headline": headline,
     "guard": guard}[args.mode](args, run)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
