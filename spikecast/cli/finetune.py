"""``spikecast finetune MODEL --data SPEC``: QCFS or surrogate-gradient fine-tuning for few timesteps."""

from __future__ import annotations

import argparse
import shutil
import time

from spikecast.cli.args import (CORRECTION_FORMS, CORRECTIONS, THRESHOLDS, Deprecated, add_data_args, add_eval_args,
                                add_model_args, eval_timesteps, int_flag, non_negative_float, note,
                                parse_confidences, positive_int)
from spikecast.cli.common import device_of, exit_code, model_from, normalisation, out_path, say
from spikecast.datasets import parse_data_spec
from spikecast.jobs import (ORIGIN_KEY, environment, load_data, open_eval_data, origin, seconds_text, split_name,
                            timesteps_text, write_validation)
from spikecast.runtime.network import SpikingNetwork
from spikecast.train import FinetuneConfig, TrainConfig, finetune
from spikecast.train.loop import CHECKPOINT_MINUTES
from spikecast.validate import validate


def register(sub, parents) -> None:
    p = sub.add_parser("finetune", parents=parents, help="fine-tune for few timesteps (QCFS or surrogate BPTT)",
                       description="Fine-tune MODEL with labels for a few-timestep SNN: --method qcfs trains the ANN with "
                                   "L-level quantised clip-floor-shift activations and converts it (T = L reproduces "
                                   "it), --method surrogate runs backpropagation through time in the converted SNN "
                                   "for --timesteps T steps. A checkpoint is written to DIR/checkpoints every epoch and "
                                   "every --checkpoint-minutes inside one; "
                                   "running the same command again resumes. Saves DIR/snn and the validation like "
                                   "`convert`.")
    p.add_argument("model", metavar="MODEL", help="zoo:<name>, a timm name, or file.py:Name")
    add_model_args(p)
    add_data_args(p)
    add_eval_args(p, default="1,2,4,8,16,32")
    p.add_argument("--method", choices=("qcfs", "surrogate"), default="qcfs")
    p.add_argument("--levels", type=positive_int, metavar="L",
                   help="qcfs: quantisation levels = the SNN's T (default 4)")
    p.add_argument("--timesteps", metavar="T", help="surrogate: BPTT timesteps = the SNN's T (default 4)")
    p.set_defaults(budget=None)  # an old --timesteps LIST is read as --eval-timesteps
    p.add_argument("--thresholds", choices=THRESHOLDS, help="qcfs: how the initial clips are chosen (default mse)")
    p.add_argument("--epochs", type=float, default=3, help="epochs (may be fractional; default 3)")
    p.add_argument("--lr", type=float, default=0.001, help="learning rate, cosine schedule (default 0.001)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=positive_int, metavar="N",
                   help="use N class-balanced training images (default all)")
    p.add_argument("--calib-images", type=positive_int, default=512, metavar="N",
                   help="unlabelled images for calibration (default 512)")
    p.add_argument("--correction", choices=CORRECTIONS, default="light",
                   help="correction after conversion, with the fine-tuned ANN as teacher (default light)")
    p.add_argument("--calibration", choices=CORRECTIONS, dest="correction", action=Deprecated, new="--correction")
    p.add_argument("--correction-form", choices=CORRECTION_FORMS, default="charge",
                   help="charge (default): the correction as initial charge, so the network keeps its accuracy in "
                        "runs longer than T; current: per-step currents sized for T")
    p.add_argument("--signed", action=argparse.BooleanOptionalAction, default=True,
                   help="signed neurons (default on; --no-signed for binary spikes)")
    p.add_argument("--bptt-window", type=positive_int, metavar="K",
                   help="surrogate: truncate BPTT to windows of K steps")
    p.add_argument("--anytime", type=positive_int, metavar="K",
                   help="surrogate: also take the loss at 2T..K*T steps, so the SNN stays right when run longer "
                        "(default 2; 1 trains for T only)")
    p.add_argument("--distill", type=float, default=0.0, metavar="W",
                   help="weight of distillation from MODEL (the ANN) in the loss: (1-W) * cross-entropy + W * KL "
                        "(default 0: labels only)")
    p.add_argument("--distill-temperature", type=float, metavar="TAU",
                   help="softmax temperature of the distillation (default 1)")
    p.add_argument("--init-snn", metavar="SNN_DIR", help="surrogate: start from this saved SNN instead of converting")
    p.add_argument("--checkpoint-minutes", type=non_negative_float, default=CHECKPOINT_MINUTES, metavar="M",
                   help=f"minutes between the checkpoints written inside an epoch (default {CHECKPOINT_MINUTES:g}; "
                        "0: after every batch)")
    p.add_argument("--restart", action="store_true", help="ignore (delete) existing checkpoints")
    p.add_argument("--out", default="spikecast-finetune", metavar="DIR")
    p.set_defaults(func=run)


def _config(args) -> FinetuneConfig:
    """The fine-tuning settings; a flag of the other route is an error, not ignored."""
    surrogate = args.method == "surrogate"
    levels = args.levels
    timesteps = int_flag("--timesteps", args.timesteps)
    if surrogate:
        if args.thresholds is not None:
            raise ValueError("--thresholds chooses QCFS's initial clips: the surrogate route converts with the default")
        if levels is not None and timesteps is not None:
            raise ValueError("--levels is QCFS's number of levels: the surrogate route's budget is --timesteps T")
        if levels is not None:
            note("--levels as the surrogate route's timesteps is deprecated, use --timesteps")
            timesteps, levels = levels, None
    else:
        for flag, value in (("--timesteps", timesteps), ("--bptt-window", args.bptt_window),
                            ("--anytime", args.anytime), ("--init-snn", args.init_snn)):
            if value is not None:
                raise ValueError(f"{flag} belongs to --method surrogate (QCFS's SNN runs T = --levels steps)")
    if args.distill_temperature is not None and not args.distill:
        raise ValueError("--distill-temperature applies to distillation: add --distill W (a weight > 0)")
    levels = levels or 4
    timesteps = timesteps or (levels if not surrogate else 4)
    train = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                        seed=args.seed)
    return FinetuneConfig(method=args.method, levels=levels, timesteps=timesteps, bptt_window=args.bptt_window,
                          anytime=args.anytime or FinetuneConfig.anytime, correction=args.correction,
                          correction_form=args.correction_form, thresholds=args.thresholds or "mse",
                          signed=args.signed, calib_images=args.calib_images, distill=args.distill,
                          distill_temperature=(FinetuneConfig.distill_temperature if args.distill_temperature is None
                                               else args.distill_temperature), train=train)


def run(args) -> int:
    started = time.perf_counter()
    timesteps = eval_timesteps(args)
    config = _config(args)
    early_exit = list(parse_confidences(args.early_exit)) or None
    device = device_of(args)
    spec = parse_data_spec(args.data)
    if not spec.has_splits:
        raise ValueError(f"{spec.name} has no train/test split: fine-tuning needs labelled training data "
                         "(e.g. --data cifar10)")
    model = model_from(args, device=device)
    x_train, y_train = load_data(model, spec, args.train_images, split="train", **normalisation(args))
    images = open_eval_data(model, spec, args.eval_images, **normalisation(args))
    out = out_path(args.out)
    ckpt = out / "checkpoints"
    if args.restart and ckpt.exists():
        shutil.rmtree(ckpt)
    source = SpikingNetwork.load(args.init_snn, device=device) if args.init_snn else model.ann
    T = config.levels if config.method == "qcfs" else config.timesteps
    say(f"spikecast finetune: {model.name}, {config.method} {'L' if config.method == 'qcfs' else 'T'}={T}, "
        f"{args.epochs:g} epoch(s) on {len(x_train)} training images (checkpoints: {ckpt}/)")
    # the teacher is the ANN MODEL names, also when the surrogate route starts from a saved SNN
    snn = finetune(source, (x_train, y_train), config, checkpoint_dir=ckpt, device=device, progress=True,
                   teacher=model.ann if config.distill > 0 else None, checkpoint_minutes=args.checkpoint_minutes)
    say(f"  fine-tuned in {seconds_text(snn.metadata['finetune']['seconds'])}")
    say(f"  validating the SNN against the ANN at T = {timesteps_text(timesteps)} on {len(images)} images...")
    result = validate(model.ann, snn, images.batches(args.batch_size, args.workers), timesteps=timesteps,
                      tolerance=args.tolerance, early_exit=early_exit)
    snn.metadata[ORIGIN_KEY] = origin(model, args.checkpoint, args.pretrained, args.data, args.trust_checkpoint)
    snn_dir = snn.save(out / "snn").resolve()
    info = {"model": {"name": model.name, "reference": model.text, "checkpoint": args.checkpoint,
                      "pretrained": args.pretrained},
            "data": {"spec": split_name(spec, None), "images": len(images), "train_images": len(x_train)},
            "finetune": snn.metadata["finetune"],
            "config": {"eval_timesteps": timesteps, "tolerance": args.tolerance, "early_exit": early_exit or [],
                       "batch_size": args.batch_size, "device": str(device or "cpu")},
            "snn_dir": str(snn_dir), "environment": environment(),
            "timing": {"total": round(time.perf_counter() - started, 3)}}
    json_path, md_path = write_validation(out, result, info)
    say()
    say(result.table())
    say()
    say(f"saved: {snn_dir}/, {json_path}, {md_path}")
    return exit_code(result)
