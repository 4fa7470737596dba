"""``spikecast export``: ONNX files of the ANN, the int8 ANN (onnxruntime) and the SNN step graph; the
SNN as a NIR file (``--nir``), checked in the NIR readers installed (sinabs, snnTorch)."""

from __future__ import annotations

import torch

from spikecast.cli.args import EXIT_OK, add_model_args, parse_shape, positive_int
from spikecast.cli.common import calibration_images, model_from, normalisation, out_path, say
from spikecast.datasets import parse_data_spec
from spikecast.export import OnnxSpikingNetwork, export_ann, export_snn_step, quantize_ann_int8, run_ann
from spikecast.export import nir_readers
from spikecast.export.nir import POOLINGS, to_nir
from spikecast.jobs import check_model_runs, load_data, origin_of
from spikecast.models import data_defaults
from spikecast.pipeline import prepare
from spikecast.runtime.network import SpikingNetwork


def register(sub, parents) -> None:
    p = sub.add_parser("export", parents=parents, help="export to ONNX (ANN, int8 ANN, SNN step graph)",
                       description="Export the ANN (--model) to DIR/ann.onnx, with --int8 also a static int8 QDQ model "
                                   "calibrated on unlabelled images (onnxruntime.quantization), and a saved SNN (--snn) "
                                   "as DIR/snn_step.onnx: one timestep with the membrane state as inputs/outputs, "
                                   "driven by spikecast.export.OnnxSpikingNetwork. With --data, run each in "
                                   "onnxruntime and compare with torch.")
    p.add_argument("--model", metavar="MODEL", help="the ANN (default with --snn: its recorded source model)")
    add_model_args(p)
    p.add_argument("--snn", metavar="SNN_DIR", help="a saved SNN to export as a step graph")
    p.add_argument("--int8", action="store_true", help="also write the static int8 QDQ ANN (needs --data)")
    p.add_argument("--nir", action="store_true",
                   help="--snn: also write DIR/snn.nir (NIR; convert with --profile nir); with --data, run it in the "
                        "NIR readers installed (sinabs, snnTorch) against spikecast")
    p.add_argument("--nir-pooling", choices=POOLINGS, default="avg",
                   help="--nir: AvgPool2d nodes (snnTorch reads them) or SumPool2d (sinabs reads them) (default avg)")
    p.add_argument("--data", metavar="SPEC", help="evaluation / calibration data (checks the exports)")
    p.add_argument("--eval-images", type=positive_int, metavar="N", help="--data: images for the checks (default 1000)")
    p.add_argument("--calib-images", type=positive_int, metavar="N", help="--int8: calibration images (default 512)")
    p.add_argument("--check-timesteps", type=positive_int, metavar="T",
                   help="--snn with --data: steps of the SNN check (default 16)")
    p.add_argument("--input-shape", metavar="C,H,W", help="without --data: shape of one input (default: the model's)")
    p.add_argument("--mean", metavar="M,M,M", help="--data image folders: normalisation mean (default: the model's)")
    p.add_argument("--std", metavar="S,S,S", help="--data image folders: normalisation std (default: the model's)")
    p.add_argument("--size", type=positive_int, metavar="PX", help="--data image folders: resize + centre-crop to PX")
    p.add_argument("--out", default="spikecast-onnx", metavar="DIR")
    p.set_defaults(func=run)


def _top1(logits, y):
    return None if y is None else float((logits.argmax(-1) == y).float().mean())


def _check_flags(args) -> None:
    if not args.model and not args.snn:
        raise ValueError("nothing to export: give --model MODEL (the ANN) and/or --snn SNN_DIR (the SNN step graph)")
    if args.data is None:
        given = [f for f, v in (("--int8", args.int8), ("--eval-images", args.eval_images), ("--mean", args.mean),
                                ("--std", args.std), ("--size", args.size), ("--check-timesteps", args.check_timesteps))
                 if v]
        if given:
            raise ValueError(f"{', '.join(given)} need(s) --data SPEC")
    elif args.input_shape:
        raise ValueError("--input-shape is for exporting without data: with --data the shape is the data's")
    if args.calib_images is not None and not args.int8:
        raise ValueError("--calib-images sets the int8 calibration: add --int8")
    if args.nir and not args.snn:
        raise ValueError("--nir exports a spiking network: add --snn SNN_DIR")
    if args.check_timesteps is not None and not args.snn:
        raise ValueError("--check-timesteps checks the SNN step graph: add --snn SNN_DIR")


def run(args) -> int:
    _check_flags(args)
    out = out_path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    snn = SpikingNetwork.load(args.snn) if args.snn else None
    checkpoint, pretrained = args.checkpoint, args.pretrained
    model_text = args.model
    if model_text is None:
        recorded = origin_of(snn, args.snn, checkpoint=checkpoint, pretrained=pretrained)
        model_text, checkpoint, pretrained = recorded["model"], recorded["checkpoint"], recorded["pretrained"]
    model = model_from(args, model_text, checkpoint, pretrained)
    ann = model.ann
    x = y = None
    if args.data:
        spec = parse_data_spec(args.data)
        x, y = load_data(model, spec, args.eval_images or 1000, **normalisation(args))
        check_model_runs(ann, x)
        example = x[:2]
    else:
        shape = parse_shape(args.input_shape) or data_defaults(model.ref, ann).get("input_shape")
        if not shape:
            raise ValueError("cannot tell the input shape: pass --data SPEC or --input-shape C,H,W")
        example = torch.zeros(2, *shape)
    say(f"spikecast export: {model.name} -> {out}/")
    written, rows = [], []
    if args.model or args.int8:
        ann_path = export_ann(prepare(ann, example), out / "ann.onnx", example=example)
        written.append(ann_path)
        if x is not None:
            logits = run_ann(ann_path, x)
            with torch.inference_mode():
                ref = torch.cat([ann(x[i:i + 256]) for i in range(0, len(x), 256)])
            rows.append(("ANN fp32, onnxruntime", _top1(logits, y),
                         f"max abs diff to torch {float((logits - ref).abs().max()):.1e}"))
        if args.int8:
            x_cal = calibration_images(args, model, spec, args.calib_images or 512)
            int8_path = quantize_ann_int8(ann_path, out / "ann_int8.onnx", x_cal)
            written.append(int8_path)
            logits = run_ann(int8_path, x)
            rows.append(("ANN int8 (QDQ), onnxruntime", _top1(logits, y), ""))
    if snn is not None and args.nir:
        nir_path = to_nir(snn, out / "snn.nir", pooling=args.nir_pooling, example=example[:1])
        written.append(nir_path)
        if x is not None:
            T = args.check_timesteps or 16
            for c in nir_readers.check(snn, x, T, out / "nir-check"):
                counts = min(c.identical_counts.values(), default=c.images)
                rows.append((f"SNN NIR x T={T}, {c.reader} ({c.settings})", None,
                             f"same top-1 {c.same_prediction}/{c.images}, identical per-layer spike counts on >= "
                             f"{counts}/{c.images} images in each of {len(c.identical_counts)} layers, max abs output "
                             f"diff {c.max_output_difference:.1e}"))
    if snn is not None:
        step_path = export_snn_step(snn, out / "snn_step.onnx", example=example)
        written.append(step_path)
        if x is not None:
            T = args.check_timesteps or 16
            driver = OnnxSpikingNetwork(step_path)
            got = torch.cat([driver.simulate(x[i:i + 250], T) for i in range(0, len(x), 250)])
            ref = torch.cat([snn.simulate(x[i:i + 250], T) for i in range(0, len(x), 250)])
            agree = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
            rows.append((f"SNN step graph x T={T}, onnxruntime", _top1(got, y),
                         f"max abs diff to torch {float((got - ref).abs().max()):.1e}, same top-1 {100 * agree:.2f}%"))
    for path in written:
        say(f"  wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)")
    if rows:
        say()
        say(f"| model | top-1 ({len(x)} images) | check |")
        say("|---|---:|---|")
        for label, acc, check in rows:
            say(f"| {label} | {'n/a' if acc is None else f'{100 * acc:.2f}%'} | {check} |")
    return EXIT_OK
