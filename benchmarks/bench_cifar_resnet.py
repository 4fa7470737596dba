"""Post-training conversion accuracy of the shared CIFAR-10 ResNets, full test set.

Converts each model with percentile calibration on 512 balanced training images and validates the
SNN against the ANN at every T from one simulation of max(T) steps per batch. Writes the section
"CIFAR-10 ResNets: post-training conversion" of benchmarks/RESULTS.md.

    python benchmarks/bench_cifar_resnet.py                     # both models, 10,000 images
    python benchmarks/bench_cifar_resnet.py --images 1000 --models cifar10-resnet20
"""

from __future__ import annotations

import argparse
import time

import torch

import spikecast
from spikecast.data import cifar10_tensors
from spikecast.recipe import calibration_set_of, recipe_of
from spikecast.zoo import create_model

from results_file import machine_line, update_section

TARGETS = {  # issue 2 acceptance: SNN top-1 at T
    "cifar10-resnet20": {64: 0.76, 128: 0.79},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cifar10-resnet20,cifar10-resnet32")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--method", default="percentile")
    parser.add_argument("--percentile", type=float, default=None, help="default: spikecast's default")
    parser.add_argument("--timesteps", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    timesteps = [int(t) for t in args.timesteps.split(",")]
    x_cal, _ = cifar10_tensors("train", limit=args.calib_images)
    x_test, y_test = cifar10_tensors("test", limit=args.images if args.images < 10000 else None)
    batches = [(x_test[i:i + args.batch_size], y_test[i:i + args.batch_size])
               for i in range(0, len(x_test), args.batch_size)]
    rows = []
    for name in args.models.split(","):
        ann = create_model(name, pretrained=True)
        kwargs = {"thresholds": args.method, "calib_images": len(x_cal)}
        if args.percentile is not None:
            kwargs["percentile"] = args.percentile
        start = time.perf_counter()
        snn = spikecast.convert(ann, calib=(x_cal,), progress=False, **kwargs)
        calib_s = time.perf_counter() - start
        res = spikecast.validate(ann, snn, batches, timesteps=timesteps, progress=False)
        image_steps = res.samples * max(timesteps) / res.seconds
        print(f"\n{name}: calibration {calib_s:.1f}s, validation {res.seconds:.0f}s")
        print(res.table())
        recipe = recipe_of(snn)
        cal = {"method": recipe.thresholds, "percentile": recipe.percentile if recipe.thresholds == "percentile" else None,
               "images": calibration_set_of(snn)["images"]}
        rows.append((name, cal, calib_s, res, image_steps))
        write_section(rows, timesteps, args)  # after each model, so a partial run keeps its results


def write_section(rows, timesteps, args) -> None:
    """Print and (unless --no-write) store the table of the models done so far."""
    head = "| model | calibration | ANN | " + " | ".join(f"T={t}" for t in timesteps) + " | calib. time | image·steps/s |"
    sep = "|---|---|---:|" + "---:|" * len(timesteps) + "---:|---:|"
    lines = [head, sep]
    for name, cal, calib_s, res, ips in rows:
        method = cal["method"] + (f" p={cal['percentile']}" if cal.get("percentile") else "")
        accs = " | ".join(f"{100 * res.snn_accuracy[t]:.2f}%" for t in timesteps)
        lines.append(f"| {name} | {method}, {cal['images']} train images | {100 * res.ann_accuracy:.2f}% | {accs} | "
                     f"{calib_s:.1f} s | {ips:.0f} |")
    checks = []
    for name, _cal, _s, res, _ips in rows:
        for t, target in TARGETS.get(name, {}).items():
            if t in res.snn_accuracy:
                ok = res.snn_accuracy[t] >= target
                checks.append(f"- {name} T={t}: {100 * res.snn_accuracy[t]:.2f}% (target >= {100 * target:.0f}%): "
                              f"{'met' if ok else 'NOT met'}")
    body = "\n".join([
        f"Post-training conversion (no fine-tuning) of the shared checkpoints; SNN top-1 on "
        f"{rows[0][3].samples} test images (JPEG CIFAR-10), all T from one simulation per batch "
        f"(batch {args.batch_size}).", "", *lines, "", *checks, "", machine_line()])
    print("\n" + body)
    if not args.no_write:
        update_section("CIFAR-10 ResNets: post-training conversion", body)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
