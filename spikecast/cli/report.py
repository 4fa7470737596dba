"""``spikecast report SNN_DIR``: accuracy vs latency, per-layer activity, operations and energy, as one report."""

from __future__ import annotations

from spikecast.cli.args import add_saved_snn_args, eval_timesteps, parse_confidences, positive_int
from spikecast.cli.common import calibration_images, device_of, exit_code, load_saved, out_path, say
from spikecast.export import export_ann, quantize_ann_int8, run_ann
from spikecast.jobs import split_name, timesteps_text
from spikecast.pipeline import prepare
from spikecast.reporting.report import build_report, write_report


def register(sub, parents) -> None:
    p = sub.add_parser("report", parents=parents, help="accuracy-vs-latency, activity and energy report of a saved SNN",
                       description="Validate SNN_DIR against its ANN at every T, measure per-layer firing rates, errors, "
                                   "synaptic operations and estimated energy, and write DIR/report.html (self-contained), "
                                   "DIR/report.md, DIR/report.json and the PNG plots.")
    add_saved_snn_args(p, early_exit="0.9,0.99")
    p.add_argument("--activity-images", type=int, default=128, metavar="N",
                   help="images for per-layer activity and operation counts (default 128; 0 skips)")
    p.add_argument("--int8", action="store_true", help="add the int8 ANN (onnxruntime, static QDQ) row")
    p.add_argument("--calib-images", type=positive_int, metavar="N", help="--int8: calibration images (default 512)")
    p.add_argument("--out", default="spikecast-report", metavar="DIR")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.calib_images is not None and not args.int8:
        raise ValueError("--calib-images sets the int8 ANN's calibration: add --int8")
    if args.activity_images < 0:
        raise ValueError(f"--activity-images must be 0 (skip) or more, got {args.activity_images}")
    timesteps = eval_timesteps(args)
    early_exit = list(parse_confidences(args.early_exit)) or None
    saved = load_saved(args, args.snn_dir, device=device_of(args))
    ann, images = saved.model.ann, saved.images
    out = out_path(args.out)
    quantized = {}
    if args.int8:
        if not images.labelled:
            raise ValueError("--int8 reports the int8 ANN's top-1: the data needs labels")
        x_cal = calibration_images(args, saved, saved.data, args.calib_images or 512)
        example = images.head(2)
        fp32 = export_ann(prepare(ann, example), out / "onnx" / "ann.onnx", example=example)
        int8 = quantize_ann_int8(fp32, out / "onnx" / "ann_int8.onnx", x_cal)
        correct = sum(int((run_ann(int8, x).argmax(-1) == y).sum()) for x, y in saved.batches(args))
        quantized["int8 ANN (onnxruntime)"] = correct / len(images)
    data_name = split_name(saved.data, None)
    say(f"spikecast report: {args.snn_dir} against {saved.model.name} on {len(images)} images of {data_name}, "
        f"T = {timesteps_text(timesteps)}")
    # build_report runs where the SNN is: --device placed both networks there
    report = build_report(ann, saved.snn, saved.batches(args), timesteps,
                          model=saved.model.name, data_name=data_name, tolerance=args.tolerance, early_exit=early_exit,
                          activity_images=args.activity_images, quantized_ann=quantized)
    paths = write_report(report, out)
    say()
    say(report.summary_table())
    say()
    say(f"saved: {paths['report.html']}, {paths['report.md']}, {paths['report.json']} and "
        f"{sum(1 for k in paths if k.endswith('.png'))} plots")
    return exit_code(report.validation)
