"""Why fine-tuned SNNs lost accuracy with more time steps, and what fixes it (validation split only).

Section ``anytime-validation``. For each CIFAR ResNet: the QCFS fine-tune of ``bench_finetune.py``
(L=4, resumed from its ``--work`` checkpoints when they exist, else trained here with the same
settings), converted with the layer-wise correction in its two forms - per-step current
(``correction_form="current"``, what fine-tuning used before) and initial charge only
(``"charge"``) - then surrogate BPTT from the charge-corrected network trained at T=4 alone
(``anytime=1``) and with the loss at T=4 and T=8 (``anytime=2``); and surrogate BPTT (``anytime=2``)
from the label-free conversion for T=4 instead (``spikecast.convert(ann, calib, timesteps=4)``: the
library's default call - reconstruction, correction and distillation against the ANN on the 512
calibration images, no labels), with single-spike neurons (compared with the QCFS start by the rule)
and with 2-level neurons (``--converted-levels``; more bits per step, so reported beside the others,
outside the rule). Every network is read at T = 4 / 8 / 16 / 32 / 64 on ``--images``
class-balanced images of the 5,000-image validation split; the test set is never read. These are
the numbers the fine-tuning defaults (``correction_form``, ``anytime``) and bench_finetune.py's
surrogate start and length were chosen on. Note: the public CIFAR checkpoints were trained on all
50,000 train images, validation split included, so validation top-1 runs above test top-1; the
comparison between rows is what counts.

    python benchmarks/bench_anytime.py --images 2000

Its networks are kept in ``--work`` under the names ``bench_finetune.py`` uses (``qcfs_ckpt``,
``surrogate_ckpt`` for the default ``anytime=2``), so ``bench_finetune.py`` with the same ``--work``
resumes them instead of training again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import spikecast
from spikecast.train import FinetuneConfig, TrainConfig, finetune
from spikecast.zoo import create_model

import results_file
from bench_data import cifar10

COLUMNS = (4, 8, 16, 32, 64)
#: the surrogate fine-tune's length bench_finetune.py used before this comparison (and its checkpoint
#: name, ``surrogate_ckpt``, from then)
FIRST_SURROGATE_EPOCHS = 0.25
#: bench_finetune.py's default --surrogate-epochs (it imports this): the length this script's rule chose
SURROGATE_EPOCHS = 0.25
#: what bench_finetune.py's surrogate fine-tune starts from ("qcfs": the QCFS fine-tune's SNN;
#: "conversion": the label-free conversion for T=4); this script's rule says whether it is the chosen one
SURROGATE_START = "qcfs"
STARTS = {"qcfs": "QCFS", "conversion": "label-free conversion"}
ANYTIME_SLACK = 0.005  # a network may not fall more than this below its T=4 top-1 at a longer T


def surrogate_name(epochs: float, anytime: int = 2) -> str:
    """The folder a surrogate fine-tune of ``epochs`` keeps its checkpoints in (``<name>_ckpt``) and
    bench_finetune.py its network in (``<name>``): one name per setting, so either script resumes the
    other's and no run resumes a checkpoint of another length."""
    if anytime != 2:
        return f"anytime{anytime}"
    return "surrogate" if epochs == FIRST_SURROGATE_EPOCHS else f"surrogate_e{epochs:g}"


def converted_name(levels: int, timesteps: int = 4) -> str:
    """The folder the label-free conversion for ``timesteps`` with ``levels`` levels is kept in (and,
    with a surrogate fine-tune's name appended, that fine-tune's checkpoints): shared with
    bench_finetune.py."""
    return f"converted_T{timesteps}_L{levels}"


def converted(ann, x_cal, levels: int, work: Path, device: str, timesteps: int = 4):
    """The library's default conversion for ``timesteps`` with ``levels`` levels (saved in ``work``;
    loaded when an earlier sitting saved it)."""
    folder = work / converted_name(levels, timesteps)
    if (folder / "spikecast.json").is_file():
        return spikecast.load(folder, device=device)
    snn = spikecast.convert(ann, (x_cal,), timesteps=timesteps, levels=levels, progress=False, device=device)
    snn.save(folder)
    return snn


def top1(snn, x, y) -> dict[int, float]:
    out = {}
    for i in range(0, len(x), 500):
        means = snn.simulate(x[i:i + 500], list(COLUMNS))
        for T in COLUMNS:
            out[T] = out.get(T, 0) + int(means[T].argmax(-1).eq(y[i:i + 500]).sum())
    return {T: n / len(x) for T, n in out.items()}


def run_model(name: str, args, run, rows: list[str], scores: dict) -> None:
    work = Path(args.work) / name
    # class-balanced: the split's own order is by class, so its first 2000 images are four classes
    x_val, y_val = cifar10("val", args.images)
    x_cal, _ = cifar10("train", 512)
    x_train, y_train = cifar10("train")
    ann = create_model(name, pretrained=True)
    train = TrainConfig(epochs=args.qcfs_epochs, lr=args.lr, batch_size=128, max_batches=args.max_batches)
    with torch.inference_mode():
        ann_top1 = sum(int(ann(x_val[i:i + 500]).argmax(-1).eq(y_val[i:i + 500]).sum())
                       for i in range(0, len(x_val), 500)) / len(x_val)
    rows.append(f"| {name} | ANN | " + " | ".join(f"{100 * ann_top1:.2f}%" for _ in COLUMNS) + " |")
    nets = {}
    for form in ("current", "charge"):
        cfg = FinetuneConfig(method="qcfs", levels=4, correction="light", correction_form=form, train=train)
        # QCFS's correction runs after training: the second form resumes the first one's finished checkpoint
        nets[f"QCFS, correction as {form}"] = finetune(ann, (x_train, y_train), cfg, calib=(x_cal,),
                                                       checkpoint_dir=work / "qcfs_ckpt", progress=False,
                                                       device=args.device)
    start = nets["QCFS, correction as charge"]
    first = args.surrogate_epochs[0]
    lengths = {}  # label -> (start, epochs) of the single-spike anytime=2 networks (the ones the rule compares)

    def surrogate(start_net, epochs: float, anytime: int, folder: str):
        cfg = FinetuneConfig(method="surrogate", timesteps=4, anytime=anytime, correction="none",
                             train=TrainConfig(epochs=epochs, lr=args.surrogate_lr, batch_size=128,
                                               max_batches=args.max_batches))
        return finetune(start_net, (x_train, y_train), cfg, calib=(x_cal,), progress=False, device=args.device,
                        checkpoint_dir=work / f"{folder}_ckpt")

    # anytime=1 against 2 at the first length; every length with anytime=2
    for anytime, epochs in [(1, first)] + [(2, e) for e in args.surrogate_epochs]:
        label = f"+ surrogate BPTT, anytime={anytime}" + (f", {epochs:g} epoch(s)" if len(args.surrogate_epochs) > 1
                                                          else "")
        nets[label] = surrogate(start, epochs, anytime, surrogate_name(epochs, anytime))
        if anytime == 2:
            lengths[label] = ("qcfs", epochs)
    for levels in args.converted_levels:
        start_net = converted(ann, x_cal, levels, work, args.device)
        start_label = STARTS["conversion"] + (f", {levels} levels" if levels > 1 else "")
        nets[start_label] = start_net
        for epochs in args.surrogate_epochs:
            label = f"{start_label} + surrogate BPTT, anytime=2, {epochs:g} epoch(s)"
            nets[label] = surrogate(start_net, epochs, 2, f"{converted_name(levels)}_{surrogate_name(epochs)}")
            if levels == 1:
                lengths[label] = ("conversion", epochs)
    for label, snn in nets.items():
        acc = top1(snn.to(args.device), x_val.to(args.device), y_val.to(args.device))
        rows.append(f"| {name} | {label} | " + " | ".join(f"{100 * acc[T]:.2f}%" for T in COLUMNS) + " |")
        print(rows[-1], flush=True)
        if label in lengths:
            scores.setdefault(lengths[label], []).append(acc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cifar10-resnet20,cifar10-resnet32")
    parser.add_argument("--images", type=int, default=5000, help="validation images (default: all 5,000)")
    parser.add_argument("--qcfs-epochs", type=float, default=1.5)
    parser.add_argument("--surrogate-epochs", default="0.25,0.5",
                        help="surrogate fine-tune lengths compared (anytime=2); anytime=1 runs at the first")
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--surrogate-lr", type=float, default=0.0005)
    parser.add_argument("--converted-levels", default="1,2",
                        help="levels of the label-free conversions the surrogate fine-tune also starts from ('' none)")
    parser.add_argument("--max-batches", type=int, default=None, help="smoke runs only")
    parser.add_argument("--work", default="/tmp/spikecast-bench-finetune", help="resumable work folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.surrogate_epochs = [float(e) for e in args.surrogate_epochs.split(",")]
    args.converted_levels = [int(v) for v in args.converted_levels.split(",") if v.strip()]
    run = results_file.start(threads=args.threads)
    torch.manual_seed(0)
    rows: list[str] = []
    scores: dict[tuple[str, float], list[dict]] = {}
    models = args.models.split(",")
    for name in models:
        run_model(name, args, run, rows, scores)
    # the start and length bench_finetune.py uses: the rule is fixed here - highest top-1 at T=4 averaged
    # over the networks, among the single-spike (start, length) pairs whose networks hold from T=4 on
    # (ANYTIME_SLACK), the shorter on a tie, then the QCFS start (the one in use before)
    eligible = {k: v for k, v in scores.items()
                if len(v) == len(models) and all(min(a[t] for t in COLUMNS) >= a[4] - ANYTIME_SLACK for a in v)}
    mean = {k: sum(a[4] for a in v) / len(v) for k, v in eligible.items()}
    chosen = max(eligible, key=lambda k: (round(mean[k], 6), -k[1], k[0] == "qcfs")) if eligible else None
    default = (SURROGATE_START, SURROGATE_EPOCHS)

    def describe(key: tuple[str, float]) -> str:
        return f"from the {STARTS[key[0]]}, {key[1]:g} epoch(s)"

    verdict = ("" if len(scores) < 2 else
               "No single-spike setting holds from T=4 on every network: nothing is chosen." if chosen is None else
               "Chosen (highest mean top-1 at T=4 with anytime=2 among the single-spike settings that hold from T=4 "
               "on, the shorter on a tie, then the QCFS start; rule fixed in the script): "
               f"**{describe(chosen)}** (mean " + ", ".join(f"{describe(k)}: {100 * m:.2f}%"
                                                            for k, m in sorted(mean.items())) + "). "
               + ("`bench_finetune.py`'s surrogate start and `--surrogate-epochs` default are the chosen ones."
                  if default == chosen else
                  f"**`bench_finetune.py`'s defaults ({describe(default)}) differ.**"))
    kinds = ", ".join("single-spike" if v == 1 else f"{v}-level" for v in args.converted_levels)
    converted_text = (
        "" if not args.converted_levels else
        "; and surrogate BPTT (loss at T=4 and T=8) from the label-free conversion for T=4 instead (the library's "
        "default `spikecast.convert(ann, calib, timesteps=4, levels=...)`: reconstruction, correction and "
        f"distillation against the ANN on the 512 calibration images, no labels) with {kinds} neurons"
        + (" (more bits per step than single-spike ones: reported, outside the rule)"
           if any(v > 1 for v in args.converted_levels) else ""))
    body = "\n".join([
        f"SNN top-1 on {args.images} class-balanced images of the validation split (never the test set) at each T. QCFS "
        f"L=4 for {args.qcfs_epochs:g} epoch(s) (lr {args.lr:g}), light correction for T=4 given as a per-step current "
        f"or as initial charge; surrogate BPTT for "
        f"{' or '.join(f'{e:g}' for e in args.surrogate_epochs)} epoch(s) (lr {args.surrogate_lr:g}) "
        "from the charge-corrected network, with the loss at T=4 only (at the first length) or at T=4 and T=8"
        + converted_text + ". The public checkpoints saw these images in training, so the rows compare with each "
        "other, not with test numbers.",
        "", "| network | fine-tuning | " + " | ".join(f"T={T}" for T in COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS), *rows, "", verdict])
    if not args.no_write:
        run.write("anytime-validation", "Anytime fine-tuned SNNs: correction form, start and loss budgets "
                  "(validation split)",
                  body)
    print(body)


if __name__ == "__main__":
    main()
