"""Networks with max-pools and concatenations: the zoo's VGG-, GoogLeNet- and DenseNet-style CIFAR-10
networks, converted as a new user would - the default call.

For each model (weights trained by ``benchmarks/train_cifar_zoo.py`` on the 45,000-image train split,
read from the cache): ``spikecast.convert(model, calib)`` with ``--calib-images`` class-balanced
unlabelled train images and nothing else (default recipe: budget T=32), timed; then the SNN against
the ANN at every T of ``--timesteps`` on the test set (each number read once). Issue 18's targets:
within 1.0 point of the ANN at T=32 and within 3.0 at T=16, converted in <= 2 minutes on 2 cores.
Nothing is chosen here. Writes section ``classic-cifar``.

    python benchmarks/bench_classic_cifar.py
    python benchmarks/bench_classic_cifar.py --models cifar10-vgg-small --images 1000 --no-write
"""

from __future__ import annotations

import argparse
import time

import spikecast
from spikecast.data import TensorBatches
from spikecast.reporting.report import describe_neurons, neuron_summary
from spikecast.zoo.cifar_classic import CLASSIC_MODELS

import results_file
from bench_data import cifar10, training_info

TARGETS = {32: 0.01, 16: 0.03}  # T -> largest allowed drop below the ANN
CONVERT_LIMIT_S = 120.0


def pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(CLASSIC_MODELS))
    parser.add_argument("--images", type=int, default=10000, help="test images")
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--timesteps", default="8,16,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    run = results_file.start(threads=args.threads)
    timesteps = sorted({int(t) for t in args.timesteps.split(",")})
    x_cal, _ = cifar10("train", args.calib_images)
    x_test, y_test = cifar10("test", args.images if args.images < 10000 else None)
    lines = ["| model | parameters | trained | ANN | " + " | ".join(f"T={t}" for t in timesteps)
             + " | targets (T=32 within 1, T=16 within 3; convert <= 2 min) | convert | neurons |",
             "|---|---:|---|---:|" + "---:|" * len(timesteps) + "---|---:|---|"]
    for name in args.models.split(","):
        ann = spikecast.zoo.create_model(name, pretrained=True)
        info = training_info(name)
        t0 = time.perf_counter()
        snn = spikecast.convert(ann, x_cal, progress=False)
        seconds = time.perf_counter() - t0
        res = spikecast.validate(ann, snn, TensorBatches(x_test, y_test, args.batch_size), timesteps, progress=False)
        ok = {t: res.snn_accuracy[t] >= res.ann_accuracy - d - 1e-12 for t, d in TARGETS.items() if t in timesteps}
        verdict = "; ".join(f"T={t}: {'met' if v else '**missed**'}" for t, v in ok.items())
        verdict += f"; convert: {'met' if seconds <= CONVERT_LIMIT_S else '**missed**'}"
        trained = (f"{info.get('epochs', '?')} epochs, {float(info.get('train_seconds', 0)) / 60:.1f} min"
                   if info else "?")
        cells = " | ".join(f"{pct(res.snn_accuracy[t])} ({100 * (res.snn_accuracy[t] - res.ann_accuracy):+.2f})"
                           for t in timesteps)
        lines.append(f"| `{name}` | {sum(p.numel() for p in ann.parameters()) / 1e3:.0f}k | {trained} | "
                     f"{pct(res.ann_accuracy)} | {cells} | {verdict} | {seconds:.0f} s | "
                     f"{describe_neurons(neuron_summary(snn))} |")
        print(lines[-1], flush=True)
    body = (f"The default call `spikecast.convert(model, calib)` ({len(x_cal)} class-balanced unlabelled train "
            f"images; default recipe, budget T=32) on the zoo's classic CIFAR-10 networks, trained from scratch "
            "by `benchmarks/train_cifar_zoo.py` on the 45,000-image train split (fixed epochs, the last one kept). "
            f"SNN top-1 on {len(y_test):,} test images, Δ vs the ANN in points in parentheses; nothing chosen "
            "here.\n\n" + "\n".join(lines))
    if not args.no_write:
        run.write("classic-cifar", "Max-pools and concatenations: VGG, GoogLeNet, DenseNet on CIFAR-10 (issue 18)",
                  body)


if __name__ == "__main__":
    main()
