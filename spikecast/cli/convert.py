"""``spikecast convert MODEL --data SPEC``: convert, validate, save (and report): one job."""

from __future__ import annotations

from spikecast.cli.args import (add_data_args, add_eval_args, add_model_args, add_recipe_args, eval_timesteps,
                                parse_confidences, positive_int, recipe_from)
from spikecast.cli.common import exit_code, normalisation, out_path, say
from spikecast.jobs import JobSpec, run_job


def register(sub, parents) -> None:
    p = sub.add_parser("convert", parents=parents, help="convert, validate and save an SNN",
                       description="Convert MODEL to a spiking network (thresholds calibrated on the training split), "
                                   "validate it against the ANN at every T of --eval-timesteps and save DIR/snn, "
                                   "DIR/validation.json and DIR/validation.md (with --report also the HTML / Markdown "
                                   "/ JSON report). Exit 0: within tolerance, 1: missed it, 2: error.")
    p.add_argument("model", metavar="MODEL", help="zoo:<name>, a timm name, or file.py:Name")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--calib-data", metavar="SPEC", help="calibration data (default: the train split of --data)")
    add_recipe_args(p)
    add_eval_args(p)
    p.add_argument("--report", action="store_true",
                   help="also write DIR/report.html, report.md, report.json and plots (per-layer activity, energy)")
    p.add_argument("--activity-images", type=positive_int, metavar="N",
                   help="--report: images for per-layer activity and operation counts (default 128)")
    p.add_argument("--out", default="spikecast-out", metavar="DIR", help="output folder (default spikecast-out)")
    p.set_defaults(func=run)


def run(args) -> int:
    timesteps = eval_timesteps(args)
    recipe = recipe_from(args)
    if args.activity_images is not None and not args.report:
        raise ValueError("--activity-images sets the images of the report's activity measurement: add --report")
    spec = JobSpec(model=args.model, data=args.data, recipe=recipe, checkpoint=args.checkpoint,
                   pretrained=args.pretrained, trust_checkpoint=args.trust_checkpoint, calib_data=args.calib_data,
                   eval_images=args.eval_images, eval_timesteps=tuple(timesteps), tolerance=args.tolerance,
                   early_exit=parse_confidences(args.early_exit), batch_size=args.batch_size, device=args.device,
                   report=args.report, activity_images=args.activity_images or 128, workers=args.workers,
                   **normalisation(args))
    say(f"spikecast convert: {args.model}")
    result = run_job(spec, out_path(args.out), log=say)
    say()
    say(result.validation.table())
    say()
    files = result.files
    extra = f", {files['report.html']}" if "report.html" in files else ""
    say(f"saved: {files['snn']}/ (reload with spikecast.load), {files['validation.json']}, "
        f"{files['validation.md']}{extra}")
    return exit_code(result.validation)
