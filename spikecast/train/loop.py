"""The one training loop of spikecast: epochs over labelled data, checkpoints, resume.

Both fine-tuning routes (QCFS on the ANN graph, surrogate-gradient BPTT on the SNN) run through
:func:`train`. What differs is one function, ``batch_step(x, y) -> (loss, logits)``, that runs
forward and ``backward`` (the SNN route calls ``backward`` once per truncation window, so it owns
the backward pass); the loop owns everything else:

* SGD with momentum (or, as an option, AdamW) and a cosine learning-rate schedule, stepped per
  batch, optionally after a linear warm-up;
* a deterministic epoch order: in-memory data is shuffled and augmented (random crop with zero
  padding, horizontal flip) from a generator seeded by ``(seed, epoch)``, so a resumed run sees
  the same batches as an uninterrupted one;
* a checkpoint after every epoch, and inside an epoch every ``checkpoint_minutes`` (default
  :data:`CHECKPOINT_MINUTES`: an ImageNet epoch on one GPU, or a CIFAR one on a CPU, is hours that
  an interruption would otherwise lose) - weights, optimizer, schedule, history and the batch
  reached; written to a temporary file and renamed, so an interruption never leaves a broken one.
  A later call with the same fingerprint resumes from it - mid-epoch, by drawing the epoch's
  batches again up to the one reached (in-memory data then continues exactly as an uninterrupted
  run would) - and it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

from spikecast.data import TensorBatches, as_loader, augment_batch, split_batch
from spikecast.progress import progress_bar

CHECKPOINT_FILE = "finetune.pt"
#: minutes between the checkpoints written inside an epoch (``train(checkpoint_minutes=...)``)
CHECKPOINT_MINUTES = 10.0

AUGMENTATIONS = ("auto", "crop-flip", "crop", "none")
OPTIMIZERS = ("sgd", "adamw")
# Options added after the first release: left out of repr() while at their defaults, so the
# fingerprints (built from repr) of existing fine-tuning checkpoints stay the same.
_LATER_OPTIONS = ("optimizer", "warmup_epochs")

BatchStep = Callable[[torch.Tensor, torch.Tensor], tuple[float, torch.Tensor]]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by the fine-tuning routes."""

    epochs: float = 3  # may be fractional: 0.5 = half the batches of one epoch
    lr: float = 0.001  # fine-tuning a pretrained net with folded BatchNorm: 0.01 diverges on CIFAR ResNets
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    # in-memory 4-D images: "crop-flip" (random crop after padding by 1/8 of the size, horizontal
    # flip), "crop", "none"; "auto" = crop-flip for RGB images of 32 px and more, else none
    augment: str = "auto"
    seed: int = 0
    max_batches: Optional[int] = None  # per epoch (quick runs and tests)
    # the first QCFS / SNN steps see large gradients (the quantised network starts far from the
    # float one); clipping the global norm keeps them from throwing the weights off
    max_grad_norm: Optional[float] = 5.0
    # "sgd" (momentum above) or "adamw" (betas 0.9 / 0.999; weight_decay decoupled, as AdamW does)
    optimizer: str = "sgd"
    # linear warm-up from ~0 to lr over this many epochs (may be fractional), then the cosine decay
    # over the remaining steps; 0 = cosine from the first step
    warmup_epochs: float = 0.0

    def __repr__(self) -> str:
        shown = [f for f in fields(self) if f.name not in _LATER_OPTIONS or getattr(self, f.name) != f.default]
        return f"{type(self).__name__}(" + ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in shown) + ")"

    def __post_init__(self):
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not self.warmup_epochs >= 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")


@dataclass
class TrainHistory:
    """Per finished epoch: mean loss, training accuracy, validation accuracy (when given), seconds."""

    epochs: list[dict] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return float(sum(e["seconds"] for e in self.epochs))


def labelled_tensors(data) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` when ``data`` is in memory (tuple of tensors or :class:`TensorBatches`), else None."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data
    if isinstance(data, TensorBatches) and data.y is not None:
        return data.x, data.y
    return None


def epoch_batches(data, config: TrainConfig, epoch: int) -> tuple[Iterable, Optional[int]]:
    """The batches of one epoch and their number (None when unknown)."""
    tensors = labelled_tensors(data)
    if tensors is None:
        loader = as_loader(data)
        n = len(loader) if hasattr(loader, "__len__") else None
        if config.max_batches is not None:
            n = config.max_batches if n is None else min(n, config.max_batches)
        return loader, n
    x, y = tensors
    gen = torch.Generator().manual_seed(int(config.seed) * 100003 + int(epoch))
    order = torch.randperm(len(x), generator=gen)
    bs = int(config.batch_size)
    n = math.ceil(len(x) / bs)
    if config.max_batches is not None:
        n = min(n, config.max_batches)
    augment = config.augment
    if augment == "auto":
        augment = "crop-flip" if x.dim() == 4 and x.shape[1] == 3 and min(x.shape[-2:]) >= 32 else "none"
    if augment != "none" and x.dim() != 4:
        raise ValueError(f"augment={config.augment!r} needs 4-D image batches, got shape {tuple(x.shape)}")

    def batches():
        for b in range(n):
            idx = order[b * bs:(b + 1) * bs]
            xb = x[idx]
            yield (augment_batch(xb, gen, flip=augment == "crop-flip") if augment != "none" else xb), y[idx]

    return batches(), n


def cosine_lr(base: float, step: int, total: int) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def scheduled_lr(base: float, step: int, total: int, warmup: int = 0) -> float:
    """Linear warm-up over ``warmup`` steps (``base * (step + 1) / warmup``), then cosine decay over
    the remaining ``total - warmup`` steps; ``warmup=0`` is :func:`cosine_lr`."""
    if step < warmup:
        return base * (step + 1) / warmup
    return cosine_lr(base, step - warmup, total - warmup)


def train(
    module: nn.Module,
    params: list[nn.Parameter],
    batch_step: BatchStep,
    data,
    config: TrainConfig,
    *,
    fingerprint: dict,
    checkpoint_dir: Optional[Union[str, Path]] = None,
    evaluate: Optional[Callable[[], float]] = None,
    description: str = "fine-tune",
    progress: bool = True,
    stop_after_epoch: Optional[float] = None,
    checkpoint_minutes: Optional[float] = CHECKPOINT_MINUTES,
) -> TrainHistory:
    """Train ``params`` of ``module`` for ``config.epochs`` epochs; resume from ``checkpoint_dir``.

    ``fingerprint``: what identifies the run (source model, method, settings). A checkpoint with a
    different fingerprint is refused rather than silently mixed in. ``evaluate()`` (optional)
    returns a validation accuracy at the end of each epoch. ``checkpoint_minutes``: a checkpoint is
    also written inside an epoch once this many minutes have passed since the last one (0: after
    every batch; None: after epochs only). ``stop_after_epoch`` ends the call as an interruption
    would once that many epochs are done - fractional: ``0.5`` after half the batches of the first
    (tests of resume).
    """
    if checkpoint_minutes is not None and not checkpoint_minutes >= 0:
        raise ValueError(f"checkpoint_minutes must be >= 0 or None, got {checkpoint_minutes}")
    no_decay = {id(p) for p in params if p.dim() <= 1 or getattr(p, "_spikecast_no_decay", False)}
    groups = [{"params": [p for p in params if id(p) not in no_decay], "weight_decay": config.weight_decay},
              {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)
    else:
        optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=config.lr, momentum=config.momentum)
    _, per_epoch = epoch_batches(data, config, 0)
    if per_epoch is None:
        raise ValueError("fine-tuning data must have a length (a DataLoader, TensorBatches or (x, y) tensors)")
    whole, part = int(config.epochs), config.epochs - int(config.epochs)
    epoch_lengths = [per_epoch] * whole + ([max(1, round(part * per_epoch))] if part > 1e-9 else [])
    total_steps = sum(epoch_lengths)
    warmup_steps = min(round(config.warmup_epochs * per_epoch), total_steps)
    history, start_epoch, step = TrainHistory(), 0, 0
    # inside an unfinished epoch: batches done and their loss / correct / seen / seconds so far
    done, partial = 0, (0.0, 0, 0, 0.0)

    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    if ckpt_path is not None and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != fingerprint:
            raise ValueError(f"{ckpt_path} belongs to a different fine-tuning run ({state.get('fingerprint')}); "
                             "use another checkpoint folder or delete it to start over")
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        history.epochs = list(state["history"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        done = int(state.get("batch", 0))  # checkpoints written before mid-epoch ones have none
        if done:
            partial = tuple(state["partial"])
        if progress:
            where = f", batch {done}" if done else ""
            print(f"resuming {description} from {ckpt_path} after epoch {start_epoch}{where}", file=sys.stderr)

    def save(epoch_done: int, batch: int, sums: tuple = (0.0, 0, 0, 0.0)) -> float:
        state = {"fingerprint": fingerprint, "epoch": epoch_done, "step": step, "module": module.state_dict(),
                 "optimizer": optimizer.state_dict(), "history": history.epochs}
        if batch:
            state.update(batch=batch, partial=list(sums))
        save_checkpoint(ckpt_path, state)
        return time.perf_counter()

    saved = time.perf_counter()
    stop_step = (None if stop_after_epoch is None else
                 sum(epoch_lengths[:int(stop_after_epoch)])
                 + round((stop_after_epoch % 1) * epoch_lengths[min(int(stop_after_epoch), len(epoch_lengths) - 1)]))

    for epoch in range(start_epoch, len(epoch_lengths)):
        started = time.perf_counter()
        batches, _ = epoch_batches(data, config, epoch)
        n_batches = epoch_lengths[epoch]
        loss_sum, correct, seen, before = partial if epoch == start_epoch else (0.0, 0, 0, 0.0)
        skip = done if epoch == start_epoch else 0
        module.train()
        with progress_bar(f"{description} epoch {epoch + 1}/{len(epoch_lengths)}", n_batches, progress) as bar:
            for b, batch in enumerate(batches):
                if b >= n_batches:
                    break
                if b < skip:  # done before the interruption: drawn (and augmented) again to keep the order
                    bar.advance()
                    continue
                x, y = split_batch(batch)
                if y is None:
                    raise ValueError("fine-tuning needs labelled batches (x, y)")
                for g in optimizer.param_groups:
                    g["lr"] = scheduled_lr(config.lr, step, total_steps, warmup_steps)
                optimizer.zero_grad(set_to_none=True)
                loss, logits = batch_step(x, y)
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"{description}: loss became {loss} at epoch {epoch + 1}, batch {b + 1}; "
                                             "lower the learning rate")
                optimizer.step()
                step += 1
                loss_sum += loss * len(y)
                correct += int((logits.argmax(-1) == y).sum())
                seen += len(y)
                bar.update(description=f"{description} epoch {epoch + 1}/{len(epoch_lengths)} "
                                       f"loss {loss_sum / seen:.3f} acc {100 * correct / seen:.1f}%")
                bar.advance()
                sums = (loss_sum, correct, seen, before + time.perf_counter() - started)
                if (ckpt_path is not None and checkpoint_minutes is not None and b + 1 < n_batches
                        and time.perf_counter() - saved >= 60 * checkpoint_minutes):
                    saved = save(epoch, b + 1, sums)
                if stop_step is not None and step >= stop_step and b + 1 < n_batches:
                    raise KeyboardInterrupt(f"stopped at epoch {epoch + 1}, batch {b + 1} (stop_after_epoch)")
        module.eval()
        entry = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                 "batches": n_batches, "seconds": round(before + time.perf_counter() - started, 2)}
        if evaluate is not None:
            entry["val_accuracy"] = float(evaluate())
        history.epochs.append(entry)
        if progress:
            val = f", val {100 * entry['val_accuracy']:.2f}%" if "val_accuracy" in entry else ""
            print(f"{description} epoch {epoch + 1}/{len(epoch_lengths)}: loss {entry['loss']:.4f}, "
                  f"train {100 * entry['train_accuracy']:.2f}%{val} ({entry['seconds']:.0f} s)", file=sys.stderr)
        if ckpt_path is not None:
            saved = save(epoch + 1, 0)
        if stop_step is not None and step >= stop_step and epoch + 1 < len(epoch_lengths):
            raise KeyboardInterrupt(f"stopped after epoch {epoch + 1} (stop_after_epoch)")
    return history


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def config_dict(config) -> dict:
    """A dataclass config as plain JSON-able values (for fingerprints and metadata)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
