"""``spikecast demo``: the offline end-to-end demo (digits CNN -> SNN -> validated at T = 1..128, < 1 min)."""

from __future__ import annotations

import time

from spikecast.cli.args import positive_int
from spikecast.cli.common import exit_code, out_path, say, torch_threads
from spikecast.jobs import JobSpec, run_job, seconds_text
from spikecast.recipe import Recipe
from spikecast.zoo.digits import digits_cnn_weights_path, digits_tensors

DEMO_OUT = "spikecast-demo"


def register(sub, parents) -> None:
    p = sub.add_parser("demo", parents=parents, help="the offline end-to-end demo (digits CNN, < 1 min)",
                       description="Train (once, cached) a small CNN on scikit-learn's digits, convert it to an SNN, "
                                   "validate it at T = 1..128 and save everything to DIR. Needs no download.")
    p.add_argument("--out", default=DEMO_OUT, metavar="DIR", help=f"output folder (default {DEMO_OUT}/)")
    p.add_argument("--tolerance", type=float, default=0.01, help="allowed top-1 drop at T=128 (default 0.01)")
    p.add_argument("--batch-size", type=positive_int, default=256, metavar="B")
    p.set_defaults(func=run)


def run(args) -> int:
    with torch_threads(1):  # tiny tensors: one thread is fastest, and much faster on a busy machine
        return _demo(args)


def _demo(args) -> int:
    started = time.perf_counter()
    say("spikecast demo: turn a small trained CNN into a spiking network and check it - offline, on the CPU.")
    say()
    weights = digits_cnn_weights_path()
    how = "cached at" if weights.is_file() else "trained now (a few seconds) and cached at"
    say(f"Model: digits-cnn (conv-BN-ReLU x2, avg-pool, linear-ReLU, linear) for scikit-learn's 8x8 digits; weights "
        f"{how} {weights}")
    # calibrate on every training image (1,347), the demo's recipe otherwise the default one
    spec = JobSpec(model="zoo:digits-cnn", data="digits", recipe=Recipe(calib_images=len(digits_tensors("train")[0])),
                   tolerance=args.tolerance, batch_size=args.batch_size)
    result = run_job(spec, out_path(args.out), log=say)
    v = result.validation
    say()
    say(v.table())
    say()
    say(f"Saved to {args.out}/: snn/ (the spiking network), validation.json, validation.md")
    say(f"      reload it with:  spikecast.load({str(result.files['snn'])!r})")
    say()
    final = v.timesteps[-1]
    gap = 100 * (v.ann_accuracy - v.snn_accuracy[final])
    verdict = "matches the ANN's accuracy" if abs(gap) < 0.005 else \
        f"is {abs(gap):.2f} points {'below' if gap > 0 else 'above'} the ANN"
    say(f"Done in {seconds_text(time.perf_counter() - started)}. At T={final} the SNN {verdict} "
        f"({'within' if v.passed else 'outside'} the {100 * args.tolerance:.1f}-point tolerance).")
    say("Next: `spikecast inspect zoo:cifar10-resnet20` or `spikecast convert zoo:cifar10-resnet20 --data cifar10`.")
    return exit_code(v)
