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
outside the rule). Each single-spike surrogate fine-tune runs with labels alone and with
distillation from the ANN mixed in (``--distill`` weights, ``FinetuneConfig.distill``).

Two stages, so the longer fine-tunes are paid for once: (1) every start and distillation weight at
the first ``--surrogate-epochs`` length, on both networks; the rule picks the (start, weight) pair;
(2) that pair alone at the longer lengths. Every network is read at T = 4 / 8 / 16 / 32 / 64 on
``--images`` class-balanced images of the 5,000-image validation split; the test set is never read.
These are the numbers the fine-tuning defaults (``correction_form``, ``anytime``) and
bench_finetune.py's surrogate start, length and distillation weight were chosen on. Note: the
public CIFAR checkpoints were trained on all 50,000 train images, validation split included, so
validation top-1 runs above test top-1; the comparison between rows is what counts.

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
from row_store import RowStore

COLUMNS = (4, 8, 16, 32, 64)
#: the surrogate fine-tune's length bench_finetune.py used before this comparison (and its checkpoint
#: name, ``surrogate_ckpt``, from then)
FIRST_SURROGATE_EPOCHS = 0.25
#: bench_finetune.py's surrogate fine-tune (it imports these): what it starts from ("qcfs": the QCFS
#: fine-tune's SNN; "conversion": the label-free conversion for T=4), its length in epochs and its
#: distillation weight; this script's rule says whether they are the chosen ones
# chosen by section anytime-validation at 738827a (2,000 class-balanced validation images): mean top-1 at
# T=4 of ResNet-20 and ResNet-32 81.55% against 80.42-80.85% for the other settings
SURROGATE_START = "conversion"
SURROGATE_EPOCHS = 0.5
SURROGATE_DISTILL = 0.5
STARTS = {"qcfs": "QCFS", "conversion": "label-free conversion"}
ANYTIME_SLACK = 0.005  # a network may not fall more than this below its T=4 top-1 at a longer T


def surrogate_name(epochs: float, anytime: int = 2, distill: float = 0.0) -> str:
    """The folder a surrogate fine-tune of ``epochs`` keeps its checkpoints in (``<name>_ckpt``) and
    bench_finetune.py its network in (``<name>``): one name per setting, so either script resumes the
    other's and no run resumes a checkpoint of another setting."""
    if anytime != 2:
        return f"anytime{anytime}"
    name = "surrogate" if epochs == FIRST_SURROGATE_EPOCHS else f"surrogate_e{epochs:g}"
    return name if not distill else f"{name}_d{distill:g}"


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


def describe(key: tuple[str, float, float]) -> str:
    """A single-spike surrogate fine-tune's (start, epochs, distillation weight) in words."""
    start, epochs, distill = key
    return (f"from the {STARTS[start]}, {epochs:g} epoch(s), "
            + (f"distillation weight {distill:g}" if distill else "labels only"))


def choose(scores: dict, models: int):
    """The rule (fixed here): highest top-1 at T=4 averaged over the networks, among the settings
    measured on every network whose networks hold from T=4 on (ANYTIME_SLACK); on a tie the shorter
    fine-tune, then labels only, then the QCFS start (the one in use before). Returns (chosen or
    None, {setting: mean top-1 at T=4} of the eligible ones)."""
    eligible = {k: v for k, v in scores.items()
                if len(v) == models and all(min(a[t] for t in COLUMNS) >= a[4] - ANYTIME_SLACK for a in v)}
    mean = {k: sum(a[4] for a in v) / len(v) for k, v in eligible.items()}
    chosen = (max(eligible, key=lambda k: (round(mean[k], 6), -k[1], -k[2], k[0] == "qcfs"))
              if eligible else None)
    return chosen, mean


class Network:
    """One CIFAR ResNet's data, ANN, starting networks and table rows, kept across the two stages."""

    def __init__(self, name: str, args):
        self.name, self.args = name, args
        self.work = Path(args.work) / name
        # class-balanced: the split's own order is by class, so its first 2000 images are four classes
        self.x_val, self.y_val = cifar10("val", args.images)
        self.store = RowStore(self.work / "rows.json", self.x_val, self.y_val)
        self.x_cal, _ = cifar10("train", 512)
        self.x_train, self.y_train = cifar10("train")
        self.ann = create_model(name, pretrained=True)
        self.starts: dict = {}
        self.rows: list[str] = []

    def row(self, label: str, snn) -> dict[int, float]:
        """Top-1 at each T; read from ``rows.json`` in the work folder when this script measured the same
        network on the same images with the same spikecast sources before (an earlier sitting)."""
        device = self.args.device
        acc = self.store.accuracy(snn, COLUMNS, lambda: top1(snn.to(device), self.x_val.to(device),
                                                            self.y_val.to(device)))
        self.rows.append(f"| {self.name} | {label} | " + " | ".join(f"{100 * acc[T]:.2f}%" for T in COLUMNS) + " |")
        print(self.rows[-1], flush=True)
        return acc

    def surrogate(self, start_net, epochs: float, anytime: int, distill: float, folder: str):
        args = self.args
        cfg = FinetuneConfig(method="surrogate", timesteps=4, anytime=anytime, correction="none", distill=distill,
                             train=TrainConfig(epochs=epochs, lr=args.surrogate_lr, batch_size=128,
                                               max_batches=args.max_batches))
        return finetune(start_net, (self.x_train, self.y_train), cfg, calib=(self.x_cal,), progress=False,
                        device=args.device, checkpoint_dir=self.work / f"{folder}_ckpt",
                        teacher=self.ann if distill else None)

    def tuned(self, key: tuple[str, float, float]):
        """The single-spike surrogate fine-tune (start, epochs, distillation weight), with its label."""
        start, epochs, distill = key
        folder = (surrogate_name(epochs, 2, distill) if start == "qcfs" else
                  f"{converted_name(1)}_{surrogate_name(epochs, 2, distill)}")
        label = (("+ surrogate BPTT" if start == "qcfs" else f"{STARTS[start]} + surrogate BPTT")
                 + f", anytime=2, {epochs:g} epoch(s)" + (f", distillation {distill:g}" if distill else ""))
        return self.surrogate(self.starts[start], epochs, 2, distill, folder), label

    def stage_one(self, scores: dict) -> None:
        """ANN, QCFS in both correction forms, anytime=1, and every start x distillation weight at the
        first length (plus the multi-level conversions' fine-tunes, outside the rule)."""
        args = self.args
        with torch.inference_mode():
            ann_top1 = sum(int(self.ann(self.x_val[i:i + 500]).argmax(-1).eq(self.y_val[i:i + 500]).sum())
                           for i in range(0, len(self.x_val), 500)) / len(self.x_val)
        self.rows.append(f"| {self.name} | ANN | " + " | ".join(f"{100 * ann_top1:.2f}%" for _ in COLUMNS) + " |")
        train = TrainConfig(epochs=args.qcfs_epochs, lr=args.lr, batch_size=128, max_batches=args.max_batches)
        for form in ("current", "charge"):
            cfg = FinetuneConfig(method="qcfs", levels=4, correction="light", correction_form=form, train=train)
            # QCFS's correction runs after training: the second form resumes the first one's finished checkpoint
            net = finetune(self.ann, (self.x_train, self.y_train), cfg, calib=(self.x_cal,),
                           checkpoint_dir=self.work / "qcfs_ckpt", progress=False, device=args.device)
            self.row(f"QCFS, correction as {form}", net)
        self.starts["qcfs"] = net  # the charge-corrected one
        first = args.surrogate_epochs[0]
        self.row("+ surrogate BPTT, anytime=1",
                 self.surrogate(self.starts["qcfs"], first, 1, 0.0, surrogate_name(first, 1)))
        self.starts["conversion"] = converted(self.ann, self.x_cal, 1, self.work, args.device)
        self.row(STARTS["conversion"], self.starts["conversion"])
        for start in STARTS:
            for distill in args.distill:
                net, label = self.tuned((start, first, distill))
                scores.setdefault((start, first, distill), []).append(self.row(label, net))
        for levels in args.converted_levels:
            if levels == 1:
                continue
            start_net = converted(self.ann, self.x_cal, levels, self.work, args.device)
            self.row(f"{STARTS['conversion']}, {levels} levels", start_net)
            self.row(f"{STARTS['conversion']}, {levels} levels + surrogate BPTT, anytime=2, {first:g} epoch(s)",
                     self.surrogate(start_net, first, 2, 0.0, f"{converted_name(levels)}_{surrogate_name(first)}"))

    def stage_two(self, pair: tuple[str, float], scores: dict) -> None:
        """The chosen (start, distillation weight) at the longer lengths."""
        for epochs in self.args.surrogate_epochs[1:]:
            key = (pair[0], epochs, pair[1])
            net, label = self.tuned(key)
            scores.setdefault(key, []).append(self.row(label, net))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cifar10-resnet20,cifar10-resnet32")
    parser.add_argument("--images", type=int, default=5000, help="validation images (default: all 5,000)")
    parser.add_argument("--qcfs-epochs", type=float, default=1.5)
    parser.add_argument("--surrogate-epochs", default="0.25,0.5",
                        help="surrogate fine-tune lengths: the first for every setting (stage 1), the others for "
                             "the chosen start and distillation weight (stage 2)")
    parser.add_argument("--distill", default="0,0.5",
                        help="distillation weights compared in stage 1 (0: labels only)")
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--surrogate-lr", type=float, default=0.0005)
    parser.add_argument("--converted-levels", default="1",
                        help="levels of the label-free conversions the surrogate fine-tune starts from (1 is "
                             "always compared; more levels are reported outside the rule)")
    parser.add_argument("--max-batches", type=int, default=None, help="smoke runs only")
    parser.add_argument("--work", default="/tmp/spikecast-bench-finetune", help="resumable work folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.surrogate_epochs = [float(e) for e in args.surrogate_epochs.split(",")]
    args.distill = [float(d) for d in args.distill.split(",")]
    args.converted_levels = [int(v) for v in args.converted_levels.split(",") if v.strip()]
    if any(not 0 <= d <= 1 for d in args.distill):
        parser.error("--distill takes weights in [0, 1]")
    run = results_file.start(threads=args.threads)
    torch.manual_seed(0)
    scores: dict[tuple[str, float, float], list[dict]] = {}
    networks = [Network(name, args) for name in args.models.split(",")]
    for net in networks:
        net.stage_one(scores)
    pair_key, _ = choose(scores, len(networks))
    pair = (pair_key[0], pair_key[2]) if pair_key else (SURROGATE_START, SURROGATE_DISTILL)
    for net in networks:
        net.stage_two(pair, scores)
    chosen, mean = choose(scores, len(networks))
    default = (SURROGATE_START, SURROGATE_EPOCHS, SURROGATE_DISTILL)
    means = ", ".join(f"{describe(k)}: {100 * m:.2f}%" for k, m in sorted(mean.items()))
    verdict = (
        "No single-spike setting holds from T=4 on every network: nothing is chosen." if chosen is None else
        "Chosen (highest mean top-1 at T=4 with anytime=2 among the single-spike settings that hold from T=4 on, the "
        f"shorter on a tie, then labels only, then the QCFS start; rule fixed in the script): **{describe(chosen)}** "
        f"(mean {means}). "
        + ("`bench_finetune.py`'s surrogate start, `--surrogate-epochs` and distillation weight are the chosen ones."
           if default == chosen else f"**`bench_finetune.py`'s defaults ({describe(default)}) differ.**"))
    pair_text = f"{STARTS[pair[0]]} / {pair[1]:g}"
    longer = ", ".join(f"{e:g}" for e in args.surrogate_epochs[1:])
    stage = ("" if not longer else
             f" Stage 1 (all at {args.surrogate_epochs[0]:g} epoch(s)) chose the start and the distillation weight "
             + (pair_text if pair_key else f"- none held, so the defaults {pair_text} -")
             + f"; stage 2 ran that pair for {longer} epoch(s).")
    more = [v for v in args.converted_levels if v > 1]
    body = "\n".join([
        f"SNN top-1 on {args.images} class-balanced images of the validation split (never the test set) at each T. QCFS "
        f"L=4 for {args.qcfs_epochs:g} epoch(s) (lr {args.lr:g}), light correction for T=4 given as a per-step current "
        "or as initial charge; the label-free conversion for T=4 (the library's default `spikecast.convert(ann, calib, "
        "timesteps=4)`: reconstruction, correction and distillation against the ANN on the 512 calibration images, no "
        f"labels). Surrogate BPTT (lr {args.surrogate_lr:g}, {len(networks[0].x_train):,} labelled train images) "
        "from the charge-corrected QCFS network with the loss at T=4 only (anytime=1) or at T=4 and T=8 (anytime=2), "
        "and with anytime=2 from either start, with labels only or with distillation from the ANN mixed in (weight W: "
        "(1 - W) x cross-entropy + W x KL to the ANN's outputs, temperature 1; weights "
        f"{', '.join(f'{d:g}' for d in args.distill)})."
        + stage + (f" Conversions with {', '.join(str(v) for v in more)} levels per step (more bits per step than "
                   "single-spike ones) are fine-tuned too and reported outside the rule." if more else "")
        + " A row of a network this script already measured on these images with the same spikecast sources (in "
        "an earlier sitting with the same `--work`) is read from that measurement (`rows.json`) instead of being "
        "simulated again."
        + " The public checkpoints saw these images in training, so the rows compare with each other, not with test "
        "numbers.",
        "", "| network | fine-tuning | " + " | ".join(f"T={T}" for T in COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS), *[r for net in networks for r in net.rows], "", verdict])
    if not args.no_write:
        run.write("anytime-validation", "Anytime fine-tuned SNNs: correction form, start, distillation and length "
                  "(validation split)", body)
    print(body)


if __name__ == "__main__":
    main()
