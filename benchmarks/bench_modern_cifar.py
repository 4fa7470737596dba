"""Real accuracy beyond ReLU: the CIFAR-10 ViT and ConvNeXt of the zoo, post-training conversion.

For each model (weights trained by ``benchmarks/train_cifar_zoo.py`` on the train split, read from
the cache) and each neuron setting in ``--levels`` (spikes per step: 1 = single-spike bipolar,
2 = two-level), converts for the budget ``--budget`` with the default recipe on ``--calib-images``
class-balanced train images, and validates the SNN against the ANN at every T of ``--timesteps``.

Choice on the validation split: per model, the neuron setting kept is the one with the fewest
levels whose SNN meets both targets (within 3 points of the ANN at T=8, within 1 point at T=16) on
the 5,000 validation images; when none does, the one most accurate at T=16 on validation. The rule
is fixed here, before any run. Every setting run is then evaluated once on the test set and
reported, the chosen one marked. Writes section ``modern-cifar``.

``--budget 4`` (section ``modern-cifar-t4``): the same networks converted for T=4 by the default
recipe, which reconstructs at so few steps (the quantised twin trained against the ANN, no labels;
``spikecast.quant.reconstruct``); the target there is issue 16's: within 2 points of the ANN at T=4.

    python benchmarks/bench_modern_cifar.py                        # both models, 10,000 test images
    python benchmarks/bench_modern_cifar.py --budget 4 --levels 1 --timesteps 4,8,16
    python benchmarks/bench_modern_cifar.py --models cifar10-vit-tiny --images 1000 --no-write
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

import spikecast
from spikecast.data import TensorBatches
from spikecast.recipe import Recipe
from spikecast.reporting.report import describe_neurons, neuron_summary
from spikecast.zoo import create_model

import results_file
from bench_data import cifar10, training_info

#: budget -> {T: largest allowed drop below the ANN}: issue 7's targets for networks converted for
#: T=8, issue 16's for few steps
TARGETS = {8: {8: 0.03, 16: 0.01}, 4: {4: 0.02}}
SECTIONS = {8: ("modern-cifar", "Beyond ReLU: CIFAR-10 ViT and ConvNeXt"),
            4: ("modern-cifar-t4", "Beyond ReLU at T=4: CIFAR-10 ViT and ConvNeXt converted for four steps")}


def meets(res, ann: float, targets: dict[int, float]) -> dict[int, bool]:
    return {t: res[t] >= ann - drop - 1e-12 for t, drop in targets.items() if t in res}


def describe_targets(targets: dict[int, float]) -> str:
    return ", ".join(f"T={t} within {100 * drop:g}" for t, drop in targets.items())


def pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cifar10-vit-tiny,cifar10-convnext-nano")
    parser.add_argument("--images", type=int, default=10000, help="test images")
    parser.add_argument("--val-images", type=int, default=5000, help="validation images for the choice")
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--budget", type=int, default=8, choices=sorted(TARGETS),
                        help="the T every network is calibrated for (8: section modern-cifar, 4: modern-cifar-t4)")
    parser.add_argument("--timesteps", default="4,8,16", help="simulated T of every conversion")
    parser.add_argument("--levels", default="1,2", help="neuron settings to run (spikes per step)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    run = results_file.start(threads=args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    timesteps = sorted({int(t) for t in args.timesteps.split(",")})
    x_cal, _ = cifar10("train", args.calib_images)
    x_val, y_val = cifar10("val", args.val_images if args.val_images < 5000 else None)
    x_test, y_test = cifar10("test", args.images if args.images < 10000 else None)
    levels_list = [int(k) for k in args.levels.split(",")]
    targets = TARGETS[args.budget]
    slug, title = SECTIONS[args.budget]
    if not set(targets) <= set(timesteps):
        raise SystemExit(f"--timesteps must include the targets' T ({sorted(targets)})")
    blocks, recipe_text, resolved = [], "", {}
    for name in args.models.split(","):
        ann = create_model(name, pretrained=True).to(device)
        info = training_info(name)
        runs = []
        for levels in levels_list:
            recipe = Recipe(timesteps=args.budget, levels=levels, calib_images=len(x_cal))
            recipe_text = json.dumps({k: v for k, v in dataclasses.asdict(recipe).items() if k != "levels"})
            # what "auto" became: it depends on timesteps x levels (per-channel starts at <= 4 values only)
            resolved[levels] = (f"reconstruction {'on' if recipe.reconstructs else 'off'}, thresholds per "
                                f"{'channel' if recipe.per_channel_used else 'layer'}, correction "
                                f"{recipe.correction_used} as {recipe.correction_form_used}")
            start = time.perf_counter()
            snn = spikecast.convert(ann, x_cal, recipe, progress=False, device=device)
            convert_s = time.perf_counter() - start
            val = spikecast.validate(ann, snn, TensorBatches(x_val, y_val, batch_size=args.batch_size),
                                     timesteps=timesteps, progress=False)
            runs.append(dict(levels=levels, snn=snn, convert_s=convert_s, val=val,
                             neurons=describe_neurons(neuron_summary(snn)).split(";")[0]))
            print(f"{name} levels={levels}: val ANN {pct(val.ann_accuracy)} "
                  + " ".join(f"T={t}:{pct(val.snn_accuracy[t])}" for t in timesteps), flush=True)
        passing = [r for r in runs if all(meets(r["val"].snn_accuracy, r["val"].ann_accuracy, targets).values())]
        chosen = (min(passing, key=lambda r: r["levels"]) if passing
                  else max(runs, key=lambda r: r["val"].snn_accuracy[max(timesteps)]))
        why = ("the fewest levels meeting the targets on validation" if passing
               else "no setting met the targets on validation: the most accurate at "
                    f"T={max(timesteps)} on validation")
        lines = [f"**{name}** ({sum(p.numel() for p in ann.parameters()) / 1e3:.0f}k parameters; trained "
                 f"{info.get('epochs', '?')} epochs on {info.get('train_split', '?')}, "
                 f"{float(info.get('train_seconds', 0)) / 60:.1f} min on {info.get('device', '?')}; "
                 f"validation top-1 at training end {pct(float(info['val_accuracy'])) if 'val_accuracy' in info else '?'})",
                 "", "| neurons | split | ANN top-1 | " + " | ".join(f"SNN T={t}" for t in timesteps)
                 + f" | targets ({describe_targets(targets)}) | convert (s) | simulate (s) |",
                 "|---|---|---:|" + "---:|" * len(timesteps) + "---|---:|---:|"]
        for r in runs:
            test = spikecast.validate(ann, r["snn"], TensorBatches(x_test, y_test, batch_size=args.batch_size),
                                      timesteps=timesteps, progress=False)
            mark = " **(chosen on validation)**" if r is chosen else ""
            for split, res in (("validation", r["val"]), ("test", test)):
                ok = meets(res.snn_accuracy, res.ann_accuracy, targets)
                cells = " | ".join(f"{pct(res.snn_accuracy[t])} ({100 * (res.snn_accuracy[t] - res.ann_accuracy):+.2f})"
                                   for t in timesteps)
                lines.append(f"| {r['neurons']}{mark} | {split} ({res.samples}) | {pct(res.ann_accuracy)} | {cells} | "
                             + "; ".join(f"T={t}: {'met' if v else '**missed**'}" for t, v in ok.items())
                             + f" | {r['convert_s']:.0f} | {res.seconds:.0f} |")
                print(lines[-1], flush=True)
        lines += ["", f"Kept: {chosen['neurons']} ({why})."]
        blocks.append("\n".join(lines))
    body = "\n".join([
        "Post-training conversion of the zoo's CIFAR-10 ViT (timm `VisionTransformer`, patch 4) and ConvNeXt "
        "(timm `ConvNeXt`), trained from scratch by `benchmarks/train_cifar_zoo.py` on the 45,000-image train "
        "split (progress checked on the validation split; a fixed number of epochs, the last one kept). "
        f"Each network is calibrated for T={args.budget} on {len(x_cal)} class-balanced train images with the "
        f"default recipe (pinned: `{recipe_text}`; resolved: "
        + "; ".join(f"{levels} level(s): {text}" for levels, text in resolved.items())
        + "), bipolar neurons on analog inputs, GELU / LayerNorm / attention compensated; `levels` spikes per step "
        "per neuron (bits per step in the neurons column). "
        "Δ vs the ANN in points, in parentheses.", "",
        "What is chosen on what: the neuron setting kept for each model is chosen on the validation split "
        f"({len(y_val)} images) by a rule fixed in the script - the fewest levels meeting the targets, else the most "
        f"accurate at T={max(timesteps)}; every setting run is reported on the test set "
        f"({len(y_test)} images, each number read once).", "",
        "\n\n".join(blocks), "", f"Device: `{device}`."])
    if not args.no_write:
        run.write(slug, title, body)


if __name__ == "__main__":
    main()
