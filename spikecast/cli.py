"""The ``spikecast`` command line: a thin layer over the library.

    spikecast demo [--out DIR]                           # digits CNN -> SNN -> validated, offline, < 1 min
    spikecast inspect MODEL [--input-shape 3,32,32]      # what happens to every op; exit 1 if unsupported
    spikecast convert MODEL --data SPEC [--out DIR]      # convert + validate + save
    spikecast validate SNN_DIR --data SPEC [--model M]   # validate a saved SNN against its ANN
    spikecast finetune MODEL --data SPEC [--method qcfs]  # QCFS / surrogate fine-tune for 4-8 steps (resumable)
    spikecast quantize SNN_DIR --bits 8 [--data SPEC]    # int8 / int4 weights, accuracy before / after
    spikecast export --model M | --snn DIR --out DIR     # ONNX: ANN, int8 ANN (onnxruntime), SNN step graph
    spikecast report SNN_DIR [--data SPEC] [--out DIR]   # HTML / Markdown / JSON report with plots and energy
    spikecast batch JOBS.toml [--out DIR] [--force]      # many jobs, one summary; resumes finished jobs

MODEL is ``zoo:<name>`` (or a bare zoo name such as ``digits-cnn``), a timm model name, or
``path/to/file.py:Name`` / ``package.module:Name`` naming an ``nn.Module`` instance, class or
factory. SPEC is a data spec of :mod:`spikecast.datasets` (``cifar10``, ``digits``, an image folder,
a ``.pt`` file).

Exit codes: 0 = success (converted and within tolerance; inspect: everything convertible),
1 = error (or, for inspect, unsupported operations), 2 = converted but the SNN missed the tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

EXIT_OK, EXIT_ERROR, EXIT_MISSED = 0, 1, 2
DEFAULT_TIMESTEPS = "1,2,4,8,16,32,64,128"
DEMO_OUT = "spikecast-demo"


# ------------------------------------------------------------------------------------------------ output
def say(text: str = "") -> None:
    from spikecast import distributed

    if distributed.rank() == 0:  # under torchrun only rank 0 talks
        print(text, flush=True)


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


# ------------------------------------------------------------------------------------------------ parsing
def parse_timesteps(text: str) -> list[int]:
    """``"1,2,4,8"`` -> [1, 2, 4, 8]; ``"64"`` -> [64]. An ellipsis continues the pattern up to the
    last value: ``"1,2,4,...,128"`` doubles (three terms with a constant ratio), ``"8,16,...,64"``
    adds 8 (a constant step, as in 1, 2, ..., n); the last value is always included."""
    items = [t.strip() for t in str(text).replace(" ", "").split(",") if t.strip()]
    if not items:
        raise ValueError("--timesteps is empty; example: 1,2,4,...,128")
    try:
        if "..." in items:
            k = items.index("...")
            head, tail = [int(t) for t in items[:k]], [int(t) for t in items[k + 1:]]
            if len(head) < 2 or len(tail) != 1:
                raise ValueError
            a, b, last = head[-2], head[-1], tail[0]
            values = list(head)
            geometric = len(head) >= 3 and a > 0 and b % a == 0 and all(
                head[i + 1] == head[i] * (b // a) for i in range(len(head) - 1))
            if geometric and b > a:  # 1,2,4,...: keep multiplying
                while values[-1] * (b // a) <= last:
                    values.append(values[-1] * (b // a))
            elif b > a and all(head[i + 1] - head[i] == b - a for i in range(len(head) - 1)):
                while values[-1] + (b - a) <= last:  # 8,16,...: keep adding
                    values.append(values[-1] + (b - a))
            else:
                raise ValueError
            if values[-1] != last:
                values.append(last)
        else:
            values = [int(t) for t in items]
    except ValueError:
        raise ValueError(f"cannot read --timesteps {text!r}: give positive integers such as 1,2,4,8 "
                         "or 1,2,4,...,128") from None
    if any(v < 1 for v in values):
        raise ValueError(f"--timesteps must be positive integers, got {text!r}")
    return sorted(set(values))


def parse_shape(text: Optional[str]) -> Optional[tuple[int, ...]]:
    """``"3,32,32"`` or ``"3x32x32"`` -> (3, 32, 32) (one input, no batch dimension)."""
    if text is None:
        return None
    try:
        shape = tuple(int(t) for t in str(text).lower().replace("x", ",").split(",") if t.strip())
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"cannot read --input-shape {text!r}: give the shape of one input, e.g. 3,32,32")
    return shape


def parse_floats(text: Optional[str], flag: str) -> Optional[tuple[float, ...]]:
    if text is None:
        return None
    try:
        return tuple(float(t) for t in str(text).split(",") if t.strip())
    except ValueError:
        raise ValueError(f"cannot read {flag} {text!r}: give comma-separated numbers, e.g. 0.485,0.456,0.406") from None


# ------------------------------------------------------------------------------------------------ models
def model_ref(text: str):
    """What the user typed as MODEL -> something :func:`spikecast.models.resolve_model` takes."""
    from spikecast.models import parse_model_ref

    return parse_model_ref(text)


def load_ann(ref, checkpoint, pretrained):
    """(model in eval mode, display name); warns when a timm model gets random weights."""
    from spikecast.models import resolve_model

    ann, name = resolve_model(ref, checkpoint, pretrained)
    if isinstance(ref, str) and not ref.startswith("zoo:") and checkpoint is None and not pretrained:
        warnings.warn(f"{name} has random weights (give --checkpoint FILE or --pretrained): accuracies will "
                      "be chance level", UserWarning, stacklevel=2)
    return ann, name


def model_defaults(ref, ann) -> dict:
    """mean / std / size / input shape of the model, from zoo metadata or timm's pretrained_cfg."""
    from spikecast.models import data_defaults

    return data_defaults(ref, ann)


def _display(ref, name: str) -> str:
    return ref if isinstance(ref, str) else name


# ------------------------------------------------------------------------------------------------ data
def load_data(args, ref, ann, eval_spec: str, limit: Optional[int], split: Optional[str] = None):
    from spikecast.datasets import resolve_data

    defaults = model_defaults(ref, ann)
    mean = parse_floats(getattr(args, "mean", None), "--mean") or defaults.get("mean")
    std = parse_floats(getattr(args, "std", None), "--std") or defaults.get("std")
    size = getattr(args, "size", None) or defaults.get("size")
    return resolve_data(eval_spec, split, limit, mean=mean, std=std, size=size)


def check_model_runs(ann, x) -> None:
    """Run the ANN on two samples, turning a shape mismatch into a clear error."""
    import torch

    device = next((p.device for p in ann.parameters()), torch.device("cpu"))
    try:
        with torch.inference_mode():
            ann(x[:2].to(device))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"the model cannot run on this data (input shape {tuple(x.shape[1:])}): {first}. "
                         "Check the data spec, --size / --mean / --std and the model.") from exc


# ------------------------------------------------------------------------------------------------ results
def write_results(out: Path, result, info: dict) -> tuple[Path, Path]:
    """``validation.json`` (the result's dict plus ``info``) and ``validation.md`` (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {**result.to_dict(), **info}
    json_path, md_path = out / "validation.json", out / "validation.md"
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    lines = ["# spikecast validation", ""]
    for key in ("model", "data", "calibration"):
        if key in info:
            value = info[key]
            if isinstance(value, dict):
                value = ", ".join(f"{k}: {v}" for k, v in value.items() if v is not None)
            lines.append(f"- {key}: {value}")
    lines += ["", result.table(), ""]
    md_path.write_text("\n".join(lines))
    return json_path, md_path


def _environment() -> dict:
    import torch

    from spikecast import __version__

    return {"spikecast": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _exit_code(result) -> int:
    return EXIT_OK if result.passed else EXIT_MISSED


# ------------------------------------------------------------------------------------------------ commands
def cmd_inspect(args) -> int:
    from spikecast.inspection import inspect

    ref = model_ref(args.model)
    report = inspect(ref, input_shape=parse_shape(args.input_shape), checkpoint=args.checkpoint,
                     pretrained=args.pretrained, encoding=args.encoding, compensate=args.compensate)
    if args.json:
        say(json.dumps(report.to_dict(), indent=2))
    else:
        say(report.table(markdown=not args.text))
    return EXIT_OK if report.ok else EXIT_ERROR


def cmd_convert(args) -> int:
    import spikecast
    from spikecast.data import TensorBatches
    from spikecast.datasets import parse_data_spec

    started = time.perf_counter()
    timesteps = parse_timesteps(args.timesteps)
    ref = model_ref(args.model)
    ann, name = load_ann(ref, args.checkpoint, args.pretrained)
    if args.device:
        ann = ann.to(args.device)
    shown = _display(ref, name)
    say(f"spikecast convert: {shown}")
    spec = parse_data_spec(args.data)
    calib_spec = parse_data_spec(args.calib_data) if args.calib_data else spec
    x, y = load_data(args, ref, ann, args.data, args.eval_images)
    x_cal, _ = load_data(args, ref, ann, calib_spec, args.calib_images,
                         split="train" if calib_spec.has_splits else None)
    if not calib_spec.has_splits and not args.calib_data:
        warnings.warn(f"{spec.name} has no separate training split: calibrating on {len(x_cal)} of the "
                      "evaluation images (use --calib-data SPEC for a separate calibration set)", UserWarning)
    check_model_runs(ann, x)
    eval_name = _split_name(spec, spec.split or "test") if spec.has_splits else spec.name
    cal_name = _split_name(calib_spec, "train") if calib_spec.has_splits else calib_spec.name
    say(f"  data: {eval_name}, {len(x)} evaluation images; calibration: {cal_name}, {len(x_cal)} images")
    how = {"percentile": f"percentile {args.percentile:g}", "max": "max",
           "mse": f"minimum error for T={args.budget}"}[args.method] + (" per channel" if args.per_channel else "")
    levels = f", {args.levels} spikes per step" if args.levels > 1 else ""
    say(f"  converting (thresholds: {how}; correction: {args.calibration} for T={args.budget}; "
        f"{'signed' if args.signed else 'binary'} neurons{levels}"
        f"{'' if args.compensate else '; no compensation'})...")
    t0 = time.perf_counter()
    snn = spikecast.convert(ann, calib=TensorBatches(x_cal, batch_size=args.batch_size), method=args.method,
                            percentile=args.percentile, per_channel=args.per_channel, calibration=args.calibration,
                            timesteps=args.budget, encoding=args.encoding,
                            signed=args.signed, levels=args.levels, compensate=args.compensate,
                            mask_ratio=args.mask_ratio, device=args.device, progress=True)
    convert_s = time.perf_counter() - t0
    from spikecast.reporting.report import describe_neurons, neuron_summary

    say(f"  converted in {_seconds(convert_s)}: {len(snn.neurons())} IF neuron layers "
        f"({describe_neurons(neuron_summary(snn))})")
    say(f"  validating the SNN against the ANN at T = {_list(timesteps)} on {len(x)} images...")
    result = spikecast.validate(ann, snn, TensorBatches(x, y, batch_size=args.batch_size), timesteps=timesteps,
                                tolerance=args.tolerance, early_exit=args.early_exit)
    out = Path(args.out)
    snn.metadata["cli"] = {"model": _saved_model_text(args.model),
                           "checkpoint": str(Path(args.checkpoint).resolve()) if args.checkpoint else None,
                           "pretrained": args.pretrained, "data": spec.name}
    snn_dir = snn.save(out / "snn")
    info = {
        "model": {"name": shown, "checkpoint": args.checkpoint, "pretrained": args.pretrained},
        "data": {"spec": eval_name, "images": len(x)},
        "calibration": {"spec": cal_name, "images": len(x_cal), "method": args.method,
                        "percentile": args.percentile if args.method == "percentile" else None,
                        "per_channel": args.per_channel, "correction": args.calibration, "budget": args.budget,
                        "signed": args.signed, "levels": args.levels, "compensate": args.compensate},
        "config": {"timesteps": timesteps, "tolerance": args.tolerance, "encoding": args.encoding,
                   "batch_size": args.batch_size, "device": args.device or "cpu",
                   "convert_seconds": round(convert_s, 3)},
        "snn_dir": str(snn_dir),
        "environment": _environment(),
        "total_seconds": round(time.perf_counter() - started, 3),
    }
    json_path, md_path = write_results(out, result, info)
    say()
    say(result.table())
    say()
    say(f"saved: {snn_dir}/ (reload with spikecast.load), {json_path}, {md_path}")
    return _exit_code(result)


def cmd_validate(args) -> int:
    import spikecast
    from spikecast.data import TensorBatches
    from spikecast.datasets import parse_data_spec

    snn = spikecast.load(args.snn_dir, device=args.device)
    model_text, checkpoint, pretrained, data_text = _snn_source(snn, args, args.snn_dir)
    if data_text is None:
        raise ValueError("pass --data SPEC (e.g. cifar10, digits, a folder or a .pt file)")
    timesteps = parse_timesteps(args.timesteps)
    ref = model_ref(model_text)
    ann, name = load_ann(ref, checkpoint, pretrained)
    if args.device:
        ann = ann.to(args.device)
    spec = parse_data_spec(data_text)
    x, y = load_data(args, ref, ann, data_text, args.eval_images)
    check_model_runs(ann, x)
    shown = _display(ref, name)
    from spikecast import distributed

    world = 1
    if distributed.init_from_env():  # torchrun: each process validates its shard, counts are summed
        import torch.distributed as dist

        world = dist.get_world_size()
        total = len(x)
        x, y = distributed.shard(x, y)
        say(f"spikecast validate: {world} processes (torchrun), {total} images sharded, rank 0 has {len(x)}")
    say(f"spikecast validate: {args.snn_dir} against {shown}")
    say(f"  validating at T = {_list(timesteps)} on {len(x) if world == 1 else total} images of {spec.name}...")
    result = spikecast.validate(ann, snn, TensorBatches(x, y, batch_size=args.batch_size), timesteps=timesteps,
                                tolerance=args.tolerance, early_exit=args.early_exit)
    say()
    say(result.table())
    if args.out and distributed.rank() == 0:
        info = {"model": {"name": shown, "checkpoint": checkpoint, "pretrained": pretrained},
                "data": {"spec": spec.name, "images": result.samples}, "snn_dir": str(args.snn_dir),
                "config": {"timesteps": timesteps, "tolerance": args.tolerance, "batch_size": args.batch_size,
                           "processes": world},
                "environment": _environment()}
        json_path, md_path = write_results(Path(args.out), result, info)
        say()
        say(f"saved: {json_path}, {md_path}")
    return _exit_code(result)


def _snn_source(snn, args, where: str = "the saved SNN"):
    """(MODEL text, checkpoint, pretrained, data spec) for a saved SNN: the command's --model /
    --checkpoint / --pretrained / --data where given, else what `spikecast convert` recorded
    (a recorded checkpoint belongs to the recorded model only)."""
    saved = snn.metadata.get("cli", {}) if isinstance(snn.metadata, dict) else {}
    given_model = getattr(args, "model", None)
    model_text = given_model or saved.get("model")
    if model_text is None:
        source = snn.metadata.get("source")
        raise ValueError(f"{where} does not record which model it came from"
                         f"{f' (source: {source})' if source else ''}: pass --model")
    checkpoint = getattr(args, "checkpoint", None) or (saved.get("checkpoint") if not given_model else None)
    pretrained = getattr(args, "pretrained", None)
    if pretrained is None and not given_model:
        pretrained = saved.get("pretrained")
    return model_text, checkpoint, pretrained, getattr(args, "data", None) or saved.get("data")


def cmd_finetune(args) -> int:
    import shutil

    import spikecast
    from spikecast.data import TensorBatches
    from spikecast.datasets import parse_data_spec
    from spikecast.train import FinetuneConfig, TrainConfig, finetune

    started = time.perf_counter()
    timesteps = parse_timesteps(args.timesteps)
    ref = model_ref(args.model)
    ann, name = load_ann(ref, args.checkpoint, args.pretrained)
    shown = _display(ref, name)
    spec = parse_data_spec(args.data)
    if not spec.has_splits:
        raise ValueError(f"{spec.name} has no train/test split: fine-tuning needs labelled training data "
                         "(e.g. --data cifar10)")
    x_train, y_train = load_data(args, ref, ann, args.data, args.train_images, split="train")
    x, y = load_data(args, ref, ann, args.data, args.eval_images)
    check_model_runs(ann, x)
    config = FinetuneConfig(method=args.method, levels=args.levels, timesteps=args.levels,
                            bptt_window=args.bptt_window, calibration=args.calibration, signed=args.signed,
                            calib_images=args.calib_images,
                            train=TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                              weight_decay=args.weight_decay, seed=args.seed))
    out = Path(args.out)
    ckpt = out / "checkpoints"
    if args.restart and ckpt.exists():
        shutil.rmtree(ckpt)
    source = ann
    if args.init_snn:
        if args.method != "surrogate":
            raise ValueError("--init-snn starts surrogate fine-tuning from a saved SNN: use --method surrogate")
        source = spikecast.load(args.init_snn)
    say(f"spikecast finetune: {shown}, {args.method}"
        f"{f' L={args.levels}' if args.method == 'qcfs' else f' T={args.levels}'}, {args.epochs:g} epoch(s) on "
        f"{len(x_train)} training images (checkpoints: {ckpt}/)")
    snn = finetune(source, (x_train, y_train), config, checkpoint_dir=ckpt, progress=True)
    say(f"  fine-tuned in {_seconds(snn.metadata['finetune']['seconds'])}")
    say(f"  validating the SNN against the ANN at T = {_list(timesteps)} on {len(x)} images...")
    result = spikecast.validate(ann, snn, TensorBatches(x, y, batch_size=256), timesteps=timesteps,
                                tolerance=args.tolerance)
    snn.metadata["cli"] = {"model": _saved_model_text(args.model),
                           "checkpoint": str(Path(args.checkpoint).resolve()) if args.checkpoint else None,
                           "pretrained": args.pretrained, "data": spec.name}
    snn_dir = snn.save(out / "snn")
    info = {"model": {"name": shown, "checkpoint": args.checkpoint, "pretrained": args.pretrained},
            "data": {"spec": spec.name, "images": len(x), "train_images": len(x_train)},
            "finetune": snn.metadata["finetune"], "snn_dir": str(snn_dir), "environment": _environment(),
            "total_seconds": round(time.perf_counter() - started, 3)}
    json_path, md_path = write_results(out, result, info)
    say()
    say(result.table())
    say()
    say(f"saved: {snn_dir}/, {json_path}, {md_path}")
    return _exit_code(result)


def cmd_quantize(args) -> int:
    import spikecast
    from spikecast.data import TensorBatches
    from spikecast.quant.weights import quantize_weights

    snn = spikecast.load(args.snn_dir)
    if args.integer:
        from spikecast.datasets import parse_data_spec
        from spikecast.quant import integer_network

        model_text, checkpoint, pretrained, data_text = _snn_source(snn, args, args.snn_dir)
        if data_text is None:
            raise ValueError("--integer sets the input grid from unlabeled images: pass --data SPEC")
        ref = model_ref(model_text)
        ann, _ = load_ann(ref, checkpoint, pretrained)
        x_cal, _ = load_data(args, ref, ann, data_text, args.calib_images,
                             split="train" if parse_data_spec(data_text).has_splits else None)
        q = integer_network(snn, (x_cal,), bits=args.bits, input_bits=args.input_bits)
        info = q.metadata["integer_arithmetic"]
        kinds = list(info["layers"].values())
        say(f"spikecast quantize: {args.snn_dir} -> integer arithmetic, {args.bits}-bit weights, {args.input_bits}-bit "
            f"input (scale {info['input_scale']:.4g}); {len(kinds) - kinds.count('float')} of {len(kinds)} layers "
            "accumulate integers")
        info = dict(q.metadata["weight_quantization"], integer_arithmetic=info)
    else:
        q = quantize_weights(snn, args.bits)
        info = q.metadata["weight_quantization"]
        say(f"spikecast quantize: {args.snn_dir} -> {args.bits}-bit weights ({info['scheme']}, {info['layers']} layers, "
            f"largest relative weight error {100 * info['max_relative_error']:.2f}%)")
    out = Path(args.out)
    saved = q.save(out / "snn")
    if args.data or (q.metadata.get("cli") or {}).get("data"):
        model_text, checkpoint, pretrained, data_text = _snn_source(q, args, args.snn_dir)
        ref = model_ref(model_text)
        ann, name = load_ann(ref, checkpoint, pretrained)
        x, y = load_data(args, ref, ann, data_text, args.eval_images)
        timesteps = parse_timesteps(args.timesteps)
        say(f"  validating the fp32 and the {args.bits}-bit SNN at T = {_list(timesteps)} on {len(x)} images...")
        batches = TensorBatches(x, y, batch_size=args.batch_size)
        base = spikecast.validate(ann, snn, batches, timesteps=timesteps, progress=False)
        result = spikecast.validate(ann, q, batches, timesteps=timesteps, tolerance=args.tolerance)
        say()
        say("| T | fp32 SNN | " + f"int{args.bits} SNN | change |")
        say("|---:|---:|---:|---:|")
        for t in timesteps:
            a, b = base.snn_accuracy[t], result.snn_accuracy[t]
            say(f"| {t} | {100 * a:.2f}% | {100 * b:.2f}% | {100 * (b - a):+.2f} |")
        json_path, _ = write_results(out, result, {"weight_quantization": info, "fp32_snn_accuracy": base.snn_accuracy,
                                                  "environment": _environment()})
        say()
        say(f"saved: {saved}/, {json_path}")
        return _exit_code(result)
    say(f"saved: {saved}/ (give --data SPEC to measure the accuracy change)")
    return EXIT_OK


def cmd_export(args) -> int:
    import torch

    import spikecast
    from spikecast import export as onnx_export
    from spikecast.pipeline import prepare
    from spikecast.datasets import parse_data_spec

    if not args.model and not args.snn:
        raise ValueError("nothing to export: give --model MODEL (the ANN) and/or --snn SNN_DIR (the SNN step graph)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    snn = spikecast.load(args.snn) if args.snn else None
    model_text, checkpoint, pretrained = args.model, args.checkpoint, args.pretrained
    if model_text is None:
        model_text, checkpoint, pretrained, _ = _snn_source(snn, args, args.snn)
    ref = model_ref(model_text)
    ann, name = load_ann(ref, checkpoint, pretrained)
    x = y = x_cal = None
    if args.data:
        spec = parse_data_spec(args.data)
        x, y = load_data(args, ref, ann, args.data, args.eval_images or 1000)
        x_cal, _ = load_data(args, ref, ann, args.data, args.calib_images,
                             split="train" if spec.has_splits else None)
    shape = parse_shape(args.input_shape) or model_defaults(ref, ann).get("input_shape")
    if x is not None:
        example = x[:2]
    elif shape:
        example = torch.zeros(2, *shape)
    else:
        raise ValueError("cannot tell the input shape: pass --data SPEC or --input-shape C,H,W")
    say(f"spikecast export: {_display(ref, name)} -> {out}/")
    written, rows = [], []
    if args.model or args.int8:
        graph = prepare(ann, example)
        ann_path = onnx_export.export_ann(graph, out / "ann.onnx", example=example)
        written.append(ann_path)
        if x is not None:
            logits = onnx_export.run_ann(ann_path, x)
            with torch.inference_mode():
                ref_logits = torch.cat([ann(x[i:i + 256]) for i in range(0, len(x), 256)])
            rows.append(("ANN fp32, onnxruntime", float((logits.argmax(-1) == y).float().mean()),
                         f"max abs diff to torch {float((logits - ref_logits).abs().max()):.1e}"))
        if args.int8:
            if x_cal is None:
                raise ValueError("--int8 calibrates on unlabeled images: pass --data SPEC")
            int8_path = onnx_export.quantize_ann_int8(ann_path, out / "ann_int8.onnx", x_cal)
            written.append(int8_path)
            if x is not None:
                logits = onnx_export.run_ann(int8_path, x)
                rows.append(("ANN int8 (QDQ), onnxruntime", float((logits.argmax(-1) == y).float().mean()), ""))
    if snn is not None:
        step_path = onnx_export.export_snn_step(snn, out / "snn_step.onnx", example=example)
        written.append(step_path)
        if x is not None:
            T = args.check_timesteps
            driver = onnx_export.OnnxSpikingNetwork(step_path)
            got, ref_out = [], []
            for i in range(0, len(x), 250):
                got.append(driver.simulate(x[i:i + 250], T))
                ref_out.append(snn.simulate(x[i:i + 250], T))
            got, ref_out = torch.cat(got), torch.cat(ref_out)
            agree = float((got.argmax(-1) == ref_out.argmax(-1)).float().mean())
            rows.append((f"SNN step graph x T={T}, onnxruntime", float((got.argmax(-1) == y).float().mean()),
                         f"max abs diff to torch {float((got - ref_out).abs().max()):.1e}, same top-1 {100 * agree:.2f}%"))
    for path in written:
        say(f"  wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)")
    if rows:
        say()
        say(f"| model | top-1 ({len(x)} images) | check |")
        say("|---|---:|---|")
        for label, acc, check in rows:
            say(f"| {label} | {100 * acc:.2f}% | {check} |")
    return EXIT_OK


def cmd_report(args) -> int:
    import spikecast
    from spikecast.data import TensorBatches
    from spikecast.datasets import parse_data_spec

    snn = spikecast.load(args.snn_dir)
    model_text, checkpoint, pretrained, data_text = _snn_source(snn, args, args.snn_dir)
    if data_text is None:
        raise ValueError("pass --data SPEC (e.g. cifar10, digits, a folder or a .pt file)")
    timesteps = parse_timesteps(args.timesteps)
    ref = model_ref(model_text)
    ann, name = load_ann(ref, checkpoint, pretrained)
    spec = parse_data_spec(data_text)
    x, y = load_data(args, ref, ann, data_text, args.eval_images)
    check_model_runs(ann, x)
    quantized = {}
    if args.int8:
        from spikecast import export as onnx_export
        from spikecast.pipeline import prepare

        x_cal, _ = load_data(args, ref, ann, data_text, 512, split="train" if spec.has_splits else None)
        work = Path(args.out) / "onnx"
        fp32 = onnx_export.export_ann(prepare(ann, x[:2]), work / "ann.onnx", example=x[:2])
        int8 = onnx_export.quantize_ann_int8(fp32, work / "ann_int8.onnx", x_cal)
        quantized["int8 ANN (onnxruntime)"] = float((onnx_export.run_ann(int8, x).argmax(-1) == y).float().mean())
    shown = _display(ref, name)
    say(f"spikecast report: {args.snn_dir} against {shown} on {len(x)} images of {spec.name}, T = {_list(timesteps)}")
    report = spikecast.build_report(ann, snn, TensorBatches(x, y, batch_size=args.batch_size), timesteps,
                                    model=shown, data_name=spec.name, tolerance=args.tolerance,
                                    activity_images=args.activity_images, quantized_ann=quantized)
    paths = spikecast.report(report, args.out)
    say()
    say(report.summary_table())
    say()
    say(f"saved: {paths['report.html']}, {paths['report.md']}, {paths['report.json']} and "
        f"{sum(1 for k in paths if k.endswith('.png'))} plots")
    return _exit_code(report.validation)


def cmd_batch(args) -> int:
    from spikecast.batch import run_batch

    out = Path(args.out) if args.out else Path(args.jobs).with_suffix("")
    say(f"spikecast batch: {args.jobs} -> {out}/")
    result = run_batch(args.jobs, out, force=args.force, log=say)
    say()
    say((out / "summary.md").read_text().strip())
    say()
    say(f"saved: {out / 'summary.md'}, {out / 'summary.html'}, {out / 'summary.json'}")
    if any(j.status == "failed" for j in result.jobs):
        return EXIT_ERROR
    return EXIT_OK if result.ok else EXIT_MISSED


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run with ``n`` intra-op threads: the demo's tensors are tiny, and extra threads only add
    synchronisation (on a busy machine they make it several times slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cmd_demo(args) -> int:
    with _torch_threads(1):
        return _demo(args)


def _demo(args) -> int:
    import spikecast
    from spikecast.data import TensorBatches
    from spikecast.zoo import create_model
    from spikecast.zoo.digits import digits_cnn_weights_path, digits_tensors, evaluate_accuracy

    started = time.perf_counter()
    timesteps = parse_timesteps(DEFAULT_TIMESTEPS)
    out = Path(args.out)
    say("spikecast demo: turn a small trained CNN into a spiking network and check it - offline, on the CPU.")
    say()
    cached = digits_cnn_weights_path().is_file()
    say("[1/4] Model: digits-cnn (conv-BN-ReLU x2, avg-pool, linear-ReLU, linear) for scikit-learn's 8x8 digits")
    t0 = time.perf_counter()
    ann = create_model("digits-cnn", pretrained=True)
    x_train, _ = digits_tensors("train")
    x_test, y_test = digits_tensors("test")
    how = "loaded from the cache" if cached else "trained now and cached"
    say(f"      weights {how} in {_seconds(time.perf_counter() - t0)}: {digits_cnn_weights_path()}")
    say(f"      ANN test accuracy: {100 * evaluate_accuracy(ann, x_test, y_test):.2f}% on {len(x_test)} images")
    say()
    say(f"[2/4] Converting: trace, fold BatchNorm into the convs, calibrate each neuron's threshold on "
        f"{len(x_train)} training images")
    t0 = time.perf_counter()
    snn = spikecast.convert(ann, calib=TensorBatches(x_train, batch_size=args.batch_size), progress=True)
    convert_s = time.perf_counter() - t0
    say(f"      {len(snn.neurons())} layers of integrate-and-fire neurons, converted in {_seconds(convert_s)}")
    say()
    say(f"[3/4] Simulating the SNN on the {len(x_test)} test images for T = {_list(timesteps)} time steps "
        "(one run, read at each T)")
    result = spikecast.validate(ann, snn, TensorBatches(x_test, y_test, batch_size=args.batch_size),
                                timesteps=timesteps, tolerance=args.tolerance)
    say()
    say(result.table())
    say()
    snn.metadata["cli"] = {"model": "zoo:digits-cnn", "checkpoint": None, "pretrained": True, "data": "digits:test"}
    snn_dir = snn.save(out / "snn")
    info = {
        "model": {"name": "zoo:digits-cnn", "weights": str(digits_cnn_weights_path())},
        "data": {"spec": "digits:test", "images": len(x_test)},
        "calibration": {"spec": "digits:train", "images": len(x_train), **snn.metadata["calibration"]},
        "config": {"timesteps": timesteps, "tolerance": args.tolerance, "batch_size": args.batch_size,
                   "convert_seconds": round(convert_s, 3)},
        "snn_dir": str(snn_dir),
        "environment": _environment(),
    }
    info["total_seconds"] = round(time.perf_counter() - started, 3)
    json_path, md_path = write_results(out, result, info)
    say(f"[4/4] Saved to {out}/: snn/ (the spiking network), validation.json, validation.md")
    say(f"      reload it with:  spikecast.load({str(snn_dir)!r})")
    say()
    final = timesteps[-1]
    gap = 100 * (result.ann_accuracy - result.snn_accuracy[final])
    if abs(gap) < 0.005:
        verdict = "matches the ANN's accuracy"
    else:
        verdict = f"is {abs(gap):.2f} points {'below' if gap > 0 else 'above'} the ANN"
    say(f"Done in {_seconds(time.perf_counter() - started)}. At T={final} the SNN {verdict} "
        f"({'within' if result.passed else 'outside'} the {100 * args.tolerance:.1f}-point tolerance).")
    say("Next: `spikecast inspect zoo:cifar10-resnet20` or `spikecast convert zoo:cifar10-resnet20 --data cifar10`.")
    return _exit_code(result)


def _defaults() -> dict:
    from spikecast import pipeline as api

    return {"method": api.DEFAULT_METHOD, "calibration": api.DEFAULT_CALIBRATION, "signed": api.DEFAULT_SIGNED,
            "timesteps": api.DEFAULT_TIMESTEPS}


def _default_percentile() -> float:
    from spikecast.calibrate.thresholds import CalibrationConfig

    return CalibrationConfig().percentile


def _split_name(spec, split: str) -> str:
    return f"{spec.path / split}" if spec.path is not None else f"{spec.kind}:{split}"


def _saved_model_text(text: str) -> str:
    """MODEL as recorded in a saved SNN: a ``file.py:Name`` path made absolute."""
    where, sep, attr = text.rpartition(":")
    if sep and where.endswith(".py"):
        return f"{Path(where).expanduser().resolve()}:{attr}"
    return text


def _list(values: Sequence[int]) -> str:
    values = list(values)
    if len(values) > 4 and all(b == 2 * a for a, b in zip(values, values[1:])):
        return f"{values[0]}, {values[1]}, {values[2]}, ..., {values[-1]}"
    return ", ".join(str(v) for v in values)


# ------------------------------------------------------------------------------------------------ parser
class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on usage errors; spikecast reserves 2 for 'missed tolerance'."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from spikecast import __version__

    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's default must not undo `spikecast --debug COMMAND ...`
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of errors")
    parser = _Parser(
        prog="spikecast", parents=[common],
        description="Convert pretrained ReLU networks (PyTorch / timm) into spiking neural networks, "
                    "calibrate, validate and save them.",
        epilog="Exit codes: 0 success; 1 error (inspect: unsupported ops); 2 converted but missed the tolerance. "
               "Start with `spikecast demo`.")
    parser.add_argument("--version", action="version", version=f"spikecast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def model_args(p, weights_help="local weights file (.pth/.pt/.th/.safetensors)"):
        p.add_argument("--checkpoint", metavar="FILE", help=weights_help)
        p.add_argument("--pretrained", action="store_true", default=None,
                       help="load the model's default weights (zoo: the default; timm: downloads)")

    def data_args(p, required=True):
        p.add_argument("--data", metavar="SPEC", required=required,
                       help="cifar10[:test], digits[:test], a folder of class subfolders, or a .pt file of x or (x, y)")
        p.add_argument("--eval-images", type=int, metavar="N", help="validate on N images (class-balanced; default all)")
        p.add_argument("--timesteps", default=DEFAULT_TIMESTEPS, metavar="LIST",
                       help="budgets to report, e.g. 1,2,4,...,128 (default) or 32,64")
        p.add_argument("--tolerance", type=float, default=0.01,
                       help="allowed drop of top-1 at the largest T, as a fraction (default 0.01 = 1 point)")
        p.add_argument("--batch-size", type=int, default=128, metavar="B")
        p.add_argument("--mean", metavar="M,M,M", help="image folders: normalisation mean (default: the model's)")
        p.add_argument("--std", metavar="S,S,S", help="image folders: normalisation std (default: the model's)")
        p.add_argument("--size", type=int, metavar="PX", help="image folders: resize + centre-crop to PX (default: the model's)")
        p.add_argument("--device", help="cpu (default), cuda, cuda:1...")
        p.add_argument("--early-exit", type=float, metavar="CONF",
                       help="also report early exit: a sample stops once the softmax of its mean output reaches CONF")

    p = sub.add_parser("inspect", parents=[common], help="list every op and what conversion does with it",
                       description="Trace MODEL (no data needed) and print every operation with its module path and "
                                   "what conversion will do with it. Exit code 1 if any op is unsupported.")
    p.add_argument("model", metavar="MODEL", help="zoo:<name>, a timm name, or file.py:Name")
    model_args(p, "weights to load (not needed: the graph does not depend on them)")
    p.add_argument("--input-shape", metavar="C,H,W", help="shape of one input (default: the model's, when known)")
    p.add_argument("--encoding", choices=("analog", "poisson"), default="analog")
    p.add_argument("--compensate", action=argparse.BooleanOptionalAction, default=True,
                   help="non-linear ops inside the spiking part run with expectation compensation (default); "
                        "--no-compensate lists them as unsupported")
    p.add_argument("--text", action="store_true", help="aligned text instead of a Markdown table")
    p.add_argument("--json", action="store_true", help="machine-readable JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert", parents=[common], help="convert, validate and save an SNN",
                       description="Convert MODEL to a spiking network (thresholds calibrated on the training split), "
                                   "validate it against the ANN at every T and save DIR/snn, DIR/validation.json and "
                                   "DIR/validation.md. Exit 0: within tolerance, 2: missed it, 1: error.")
    p.add_argument("model", metavar="MODEL", help="zoo:<name>, a timm name, or file.py:Name")
    model_args(p)
    data_args(p)
    p.add_argument("--calib-data", metavar="SPEC", help="calibration data (default: the train split of --data)")
    p.add_argument("--calib-images", type=int, default=512, metavar="N",
                   help="class-balanced calibration images (default 512)")
    p.add_argument("--method", choices=("mse", "percentile", "max"), default=_defaults()["method"],
                   help=f"threshold selection (default {_defaults()['method']})")
    p.add_argument("--per-channel", action="store_true", help="one threshold per channel")
    p.add_argument("--calibration", choices=("none", "light", "advanced"), default=_defaults()["calibration"],
                   help="correction with the ANN as teacher: light = bias + potential, advanced = + threshold "
                        f"refinement (default {_defaults()['calibration']})")
    p.add_argument("--budget", type=int, default=_defaults()["timesteps"], metavar="T",
                   help=f"timestep budget the SNN is calibrated for (default {_defaults()['timesteps']})")
    p.add_argument("--percentile", type=float, default=_default_percentile(),
                   help=f"percentile of the activations (default {_default_percentile():g})")
    p.add_argument("--encoding", choices=("analog", "poisson"), default="analog")
    p.add_argument("--signed", action=argparse.BooleanOptionalAction, default=_defaults()["signed"],
                   help="signed neurons: a neuron may take back a spike it sent on a transient "
                        f"(default {'on' if _defaults()['signed'] else 'off'}; --no-signed for binary spikes)")
    p.add_argument("--mask-ratio", type=float, default=0.0, metavar="P",
                   help="random spike masking: drop each spike with probability P (rescaled)")
    p.add_argument("--levels", type=int, default=1, metavar="K",
                   help="multi-threshold neurons: up to K spikes per step (default 1; costs log2(K+1) bits per step)")
    p.add_argument("--compensate", action=argparse.BooleanOptionalAction, default=True,
                   help="run GELU / LayerNorm / softmax / attention... inside the spiking part with expectation "
                        "compensation (default); --no-compensate refuses them, naming each module path")
    p.add_argument("--out", default="spikecast-out", metavar="DIR", help="output folder (default spikecast-out)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("validate", parents=[common], help="validate a saved SNN against its ANN",
                       description="Load SNN_DIR (saved by convert) and compare it with its ANN at every T. The model, "
                                   "checkpoint and data default to those recorded by `spikecast convert`.")
    p.add_argument("snn_dir", metavar="SNN_DIR")
    p.add_argument("--model", metavar="MODEL", help="the source ANN (default: recorded in SNN_DIR)")
    model_args(p)
    data_args(p, required=False)
    p.add_argument("--out", metavar="DIR", help="also write DIR/validation.json and DIR/validation.md")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("finetune", parents=[common], help="fine-tune for few timesteps (QCFS or surrogate BPTT)",
                       description="Fine-tune MODEL with labels for a few-timestep SNN: --method qcfs trains the ANN with "
                                   "L-level quantised clip-floor-shift activations and converts it (T = L reproduces "
                                   "it), --method surrogate runs backpropagation through time in the converted SNN. "
                                   "A checkpoint is written every epoch to DIR/checkpoints; running the same command "
                                   "again resumes. Saves DIR/snn and the validation like `convert`.")
    p.add_argument("model", metavar="MODEL", help="zoo:<name>, a timm name, or file.py:Name")
    model_args(p)
    data_args(p)
    p.set_defaults(timesteps="1,2,4,8,16,32")
    p.add_argument("--method", choices=("qcfs", "surrogate"), default="qcfs")
    p.add_argument("--levels", type=int, default=4, metavar="L",
                   help="QCFS levels = the SNN's timesteps (surrogate: BPTT timesteps) (default 4)")
    p.add_argument("--epochs", type=float, default=3, help="epochs (may be fractional; default 3)")
    p.add_argument("--lr", type=float, default=0.001, help="SGD learning rate, cosine schedule (default 0.001)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=int, metavar="N", help="use N class-balanced training images (default all)")
    p.add_argument("--calib-images", type=int, default=512, metavar="N")
    p.add_argument("--calibration", choices=("none", "light", "advanced"), default="light",
                   help="correction after conversion, with the fine-tuned ANN as teacher (default light)")
    p.add_argument("--signed", action=argparse.BooleanOptionalAction, default=_defaults()["signed"])
    p.add_argument("--bptt-window", type=int, metavar="K", help="surrogate: truncate BPTT to windows of K steps")
    p.add_argument("--init-snn", metavar="SNN_DIR", help="surrogate: start from this saved SNN instead of converting")
    p.add_argument("--restart", action="store_true", help="ignore (delete) existing checkpoints")
    p.add_argument("--out", default="spikecast-finetune", metavar="DIR")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("quantize", parents=[common], help="quantise a saved SNN's weights to int8 / int4",
                       description="Per-output-channel symmetric weight quantisation (fake-quant) of a saved SNN, or "
                                   "with --integer its integer-arithmetic form; with --data, validate the fp32 and the "
                                   "quantised SNN side by side.")
    p.add_argument("snn_dir", metavar="SNN_DIR")
    p.add_argument("--bits", type=int, choices=(8, 4), default=8)
    p.add_argument("--integer", action="store_true",
                   help="integer arithmetic: every layer feeding a neuron accumulates integers (quantised input, "
                        "spikes as -1/0/1), so its ONNX step graph fires the same spikes as torch; needs --data")
    p.add_argument("--input-bits", type=int, default=8, metavar="B", help="--integer: bits of the input grid (default 8)")
    p.add_argument("--calib-images", type=int, default=512, metavar="N",
                   help="--integer: unlabeled images that set the input grid (default 512)")
    p.add_argument("--model", metavar="MODEL", help="the source ANN (default: recorded in SNN_DIR)")
    data_args(p, required=False)
    p.add_argument("--out", default="spikecast-quantized", metavar="DIR")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("export", parents=[common], help="export to ONNX (ANN, int8 ANN, SNN step graph)",
                       description="Export the ANN (--model) to DIR/ann.onnx, with --int8 also a static int8 QDQ model "
                                   "calibrated on unlabeled images (onnxruntime.quantization), and a saved SNN (--snn) "
                                   "as DIR/snn_step.onnx: one timestep with the membrane state as inputs/outputs, "
                                   "driven by spikecast.export.OnnxSpikingNetwork. With --data, run each in "
                                   "onnxruntime and compare with torch.")
    p.add_argument("--model", metavar="MODEL", help="the ANN (default with --snn: its recorded source model)")
    model_args(p)
    p.add_argument("--snn", metavar="SNN_DIR", help="a saved SNN to export as a step graph")
    p.add_argument("--int8", action="store_true", help="also write the static int8 QDQ ANN (needs --data)")
    p.add_argument("--data", metavar="SPEC", help="evaluation / calibration data (checks the exports)")
    p.add_argument("--eval-images", type=int, metavar="N", help="images for the checks (default 1000)")
    p.add_argument("--calib-images", type=int, default=512, metavar="N", help="int8 calibration images (default 512)")
    p.add_argument("--check-timesteps", type=int, default=16, metavar="T", help="SNN check: steps (default 16)")
    p.add_argument("--input-shape", metavar="C,H,W", help="shape of one input (default: from --data or the model)")
    p.add_argument("--mean", metavar="M,M,M", help=argparse.SUPPRESS)
    p.add_argument("--std", metavar="S,S,S", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, metavar="PX", help=argparse.SUPPRESS)
    p.add_argument("--out", default="spikecast-onnx", metavar="DIR")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", parents=[common], help="accuracy-vs-latency, activity and energy report of a saved SNN",
                       description="Validate SNN_DIR against its ANN at every T, measure per-layer firing rates, errors, "
                                   "synaptic operations and estimated energy, and write DIR/report.html (self-contained), "
                                   "DIR/report.md, DIR/report.json and the PNG plots.")
    p.add_argument("snn_dir", metavar="SNN_DIR")
    p.add_argument("--model", metavar="MODEL", help="the source ANN (default: recorded in SNN_DIR)")
    model_args(p)
    data_args(p, required=False)
    p.add_argument("--activity-images", type=int, default=128, metavar="N",
                   help="images for per-layer activity and operation counts (default 128; 0 skips)")
    p.add_argument("--int8", action="store_true", help="add the int8 ANN (onnxruntime, static QDQ) row")
    p.add_argument("--out", default="spikecast-report", metavar="DIR")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("batch", parents=[common], help="convert, validate and report many models from a TOML file",
                       description="Run every [[job]] of JOBS.toml (model, data, calibration settings, T grid, "
                                   "tolerance; [defaults] for all) into OUT/<job>/ (SNN and report) and write "
                                   "OUT/summary.md / .html / .json. A failing job is recorded and the batch goes on; "
                                   "a second run skips finished jobs unless --force. Exit 0: all jobs ran and met "
                                   "their tolerance, 2: some missed it, 1: some failed.")
    p.add_argument("jobs", metavar="JOBS.toml")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the jobs file's name without .toml)")
    p.add_argument("--force", action="store_true", help="redo jobs that finished earlier")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("demo", parents=[common], help="the offline end-to-end demo (digits CNN, < 1 min)",
                       description="Train (once, cached) a small CNN on scikit-learn's digits, convert it to an SNN, "
                                   "validate it at T = 1..128 and save everything to DIR. Needs no download.")
    p.add_argument("--out", default=DEMO_OUT, metavar="DIR", help=f"output folder (default {DEMO_OUT}/)")
    p.add_argument("--tolerance", type=float, default=0.01, help="allowed top-1 drop at T=128 (default 0.01)")
    p.add_argument("--batch-size", type=int, default=256, metavar="B")
    p.set_defaults(func=cmd_demo)
    return parser


@contextlib.contextmanager
def _friendly_warnings():
    """Show warnings as one ``warning: ...`` line on stderr, without the source line."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``spikecast`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_ERROR
    from spikecast.errors import SpikecastError

    for flag in ("batch_size", "calib_images", "eval_images", "budget", "train_images", "levels", "bptt_window",
                 "check_timesteps"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            print(f"error: --{flag.replace('_', '-')} must be at least 1, got {value}", file=sys.stderr)
            return EXIT_ERROR
    try:
        with _friendly_warnings():
            return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `spikecast inspect MODEL | head`: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (SpikecastError, OSError, ValueError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
