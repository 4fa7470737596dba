"""Stage 6: validation - the SNN against its source ANN at every timestep budget, one simulation."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from spikecast import distributed
from spikecast.data import DataLike, as_loader, check_finite, input_channel_guard, split_batch
from spikecast.devices import DeviceLike, device_of, resolve_device
from spikecast.errors import InvalidArgumentError
from spikecast.progress import progress_bar
from spikecast.nn.simulation import DEFAULT_EVAL_TIMESTEPS
from spikecast.runtime.network import SpikingNetwork

DEFAULT_TIMESTEPS = DEFAULT_EVAL_TIMESTEPS  # defined once, in nn/simulation.py


@dataclass
class EarlyExitResult:
    """Dynamic-confidence early exit (Li et al. 2023): a sample stops at the first step whose
    softmax of the mean output so far reaches ``confidence`` (or at ``max_steps``)."""

    confidence: float
    max_steps: int
    accuracy: Optional[float]
    agreement: float  # top-1 equal to the ANN's
    mean_steps: float  # steps actually used, averaged over samples
    exited: float  # fraction of samples that stopped before max_steps


@dataclass
class ValidationResult:
    """Accuracy of the ANN and of the SNN at each T, plus how closely the SNN follows the ANN.

    ``snn_accuracy``, ``agreement`` (top-1 equal to the ANN's), ``logit_error`` (mean absolute
    difference of outputs) and ``cosine`` (mean cosine similarity of outputs) are dicts T -> value.
    Accuracies are ``None`` when the data has no labels. ``passed``: at the largest T the SNN is
    within ``tolerance`` of the ANN (accuracy when labelled, else agreement >= 1 - tolerance).
    """

    timesteps: list[int]
    samples: int
    ann_accuracy: Optional[float]
    snn_accuracy: dict[int, Optional[float]]
    agreement: dict[int, float]
    logit_error: dict[int, float]
    cosine: dict[int, float]
    tolerance: float
    passed: bool
    seconds: float = 0.0
    early_exit: Optional[list] = None  # one EarlyExitResult per confidence asked for
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("snn_accuracy", "agreement", "logit_error", "cosine"):
            d[key] = {str(t): v for t, v in d[key].items()}
        return d

    def table(self) -> str:
        """Markdown table: one row per T."""
        ann = "n/a" if self.ann_accuracy is None else f"{100 * self.ann_accuracy:.2f}%"
        lines = [f"ANN top-1: {ann} on {self.samples} samples", "",
                 "| T | SNN top-1 | agreement with ANN | mean logit error | cosine |",
                 "|---:|---:|---:|---:|---:|"]
        for t in self.timesteps:
            acc = self.snn_accuracy[t]
            acc_s = "n/a" if acc is None else f"{100 * acc:.2f}%"
            lines.append(f"| {t} | {acc_s} | {100 * self.agreement[t]:.2f}% | {self.logit_error[t]:.4f} | "
                         f"{self.cosine[t]:.4f} |")
        lines.append("")
        for e in self.early_exit or []:
            acc_s = "n/a" if e.accuracy is None else f"{100 * e.accuracy:.2f}%"
            lines.append(f"Early exit (softmax confidence >= {e.confidence:g}, at most {e.max_steps} steps): "
                         f"top-1 {acc_s}, mean {e.mean_steps:.2f} steps, {100 * e.exited:.1f}% of samples "
                         "stopped early")
        if self.early_exit:
            lines.append("")
        lines.append(f"{'PASSED' if self.passed else 'FAILED'} (tolerance {100 * self.tolerance:.1f} points at "
                     f"T={self.timesteps[-1]})")
        return "\n".join(lines)


def validate(ann: nn.Module, snn: SpikingNetwork, data: DataLike, timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
             tolerance: float = 0.01, progress: bool = True, max_batches: Optional[int] = None,
             early_exit: Union[float, Sequence[float], None] = None,
             device: DeviceLike = None) -> ValidationResult:
    """Compare ``snn`` with ``ann`` on ``data`` at every T of ``timesteps`` from ONE simulation of
    ``max(timesteps)`` steps per batch. ``data``: DataLoader / batches / tensor / (x, y).

    ``early_exit``: a confidence in (0, 1], or several; for each, also reports the accuracy and
    mean number of steps when each sample stops at the first step where the softmax of its mean
    output so far reaches it (``result.early_exit``: a list of :class:`EarlyExitResult`). The
    batch is still simulated to the end; the steps counted are those a per-sample runtime would
    spend.

    ``device``: where both networks run (``"cpu"``, ``"cuda:0"``...; checked with
    :func:`spikecast.devices.resolve_device`); default: the SNN's device.

    The caller's networks are left as they were found: the ANN runs in eval mode on the chosen
    device during validation, and its train/eval mode (per submodule) and device are restored
    afterwards, also when validation fails; likewise the SNN's device.

    Raises:
        InvalidArgumentError (a ValueError): empty ``timesteps`` or a T <= 0, bad ``early_exit``.
        DeviceError (a ValueError): ``device`` is unknown or not available here.
        DataError (a ValueError): a batch holds NaN / Inf, or has channels the ANN's first layer
            does not take; ValueError: no data.
    """
    budgets = _check_timesteps(timesteps)
    confidences = [] if early_exit is None else (
        [float(early_exit)] if isinstance(early_exit, (int, float)) else [float(c) for c in early_exit])
    if any(not 0.0 < c <= 1.0 for c in confidences):
        raise InvalidArgumentError(f"early_exit must be confidences in (0, 1], got {early_exit}")
    snn_device = device_of(snn)
    device = resolve_device(device, default=snn_device or torch.device("cpu"))
    ann_state = ModuleState(ann)
    snn_state = ModuleState(snn)
    try:
        if snn_device is not None and device_of(snn) != device:
            snn.to(device)
        ann_state.use(device)
        correct_ann, n, labelled = 0, 0, True
        correct = {t: 0 for t in budgets}
        agree = {t: 0 for t in budgets}
        err = {t: 0.0 for t in budgets}
        cos = {t: 0.0 for t in budgets}
        exit_stats = [[0, 0, 0.0, 0] for _ in confidences]  # correct, agree, steps, exited early
        started = time.perf_counter()
        with progress_bar("validate", None, progress) as bar:
            for i, batch in enumerate(as_loader(data)):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = split_batch(batch)
                check_finite(x, f"validation data (batch {i})")
                x = x.to(device)
                with torch.inference_mode():
                    if i == 0:
                        with input_channel_guard(ann, "the validation data"):
                            ref = ann(x)
                    else:
                        ref = ann(x)
                tracker = _ExitTracker(confidences, budgets[-1]) if confidences else None
                outs = snn.simulate(x, budgets, callback=tracker)
                ref_top = ref.argmax(-1)
                for k in range(len(confidences)):
                    prediction, steps = tracker.prediction[k], tracker.steps[k]
                    exit_stats[k][1] += int((prediction == ref_top).sum())
                    exit_stats[k][2] += float(steps.sum())
                    exit_stats[k][3] += int((steps < budgets[-1]).sum())
                    if y is not None:
                        exit_stats[k][0] += int((prediction == y.to(device)).sum())
                if y is None:
                    labelled = False
                else:
                    y = y.to(device)
                    correct_ann += int((ref_top == y).sum())
                for t, out in outs.items():
                    top = out.argmax(-1)
                    agree[t] += int((top == ref_top).sum())
                    err[t] += float((out - ref).abs().flatten(1).mean(1).sum())
                    cos[t] += float(F.cosine_similarity(out.flatten(1).double(), ref.flatten(1).double(),
                                                        dim=1).sum())
                    if y is not None:
                        correct[t] += int((top == y).sum())
                n += x.shape[0]
                bar.advance()
    finally:
        ann_state.restore()
        snn_state.restore()
    if distributed.active():
        # torchrun: every rank saw its shard; sum the counts so all ranks hold the full result
        flat = [float(n), float(correct_ann), float(not labelled)]
        for t in budgets:
            flat += [correct[t], agree[t], err[t], cos[t]]
        for st in exit_stats:
            flat += list(map(float, st))
        flat = distributed.all_sum(flat)
        n, correct_ann, labelled = int(flat[0]), int(flat[1]), flat[2] == 0
        for k, t in enumerate(budgets):
            correct[t], agree[t], err[t], cos[t] = int(flat[3 + 4 * k]), int(flat[4 + 4 * k]), flat[5 + 4 * k], flat[6 + 4 * k]
        base = 3 + 4 * len(budgets)
        exit_stats = [[int(flat[base + 4 * k]), int(flat[base + 4 * k + 1]), flat[base + 4 * k + 2],
                       int(flat[base + 4 * k + 3])] for k in range(len(exit_stats))]
    if n == 0:
        raise ValueError("validation data is empty")
    ann_acc = correct_ann / n if labelled else None
    snn_acc = {t: (correct[t] / n if labelled else None) for t in budgets}
    agreement = {t: agree[t] / n for t in budgets}
    final = budgets[-1]
    if labelled:
        passed = snn_acc[final] >= ann_acc - tolerance
    else:
        passed = agreement[final] >= 1.0 - tolerance
    exit_result = None
    if confidences:
        exit_result = [EarlyExitResult(confidence=c, max_steps=final, accuracy=st[0] / n if labelled else None,
                                       agreement=st[1] / n, mean_steps=st[2] / n, exited=st[3] / n)
                       for c, st in zip(confidences, exit_stats)]
    return ValidationResult(
        timesteps=budgets, samples=n, ann_accuracy=ann_acc, snn_accuracy=snn_acc, agreement=agreement,
        logit_error={t: err[t] / n for t in budgets}, cosine={t: cos[t] / n for t in budgets},
        tolerance=tolerance, passed=passed, seconds=time.perf_counter() - started, early_exit=exit_result)


def _check_timesteps(timesteps) -> list[int]:
    """Sorted distinct budgets; a clear error for an empty list, T <= 0 or a non-integer T."""
    values = [timesteps] if isinstance(timesteps, (int, float)) else list(timesteps or [])
    if not values:
        raise InvalidArgumentError("timesteps is empty: give at least one number of timesteps T >= 1")
    budgets = set()
    for t in values:
        try:
            ok = not isinstance(t, (bool, str, bytes)) and int(t) == t and int(t) >= 1
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise InvalidArgumentError(f"every number of timesteps T must be an integer >= 1, got {t!r} "
                                       f"in timesteps={timesteps!r}")
        budgets.add(int(t))
    return sorted(budgets)



class ModuleState:
    """Train/eval mode of every submodule and the device of a module, to put back after use::

        state = ModuleState(ann)
        try:
            state.use(device)  # eval mode, on device
            ...
        finally:
            state.restore()  # modes and device as they were
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.modes = [(m, m.training) for m in module.modules()]
        devices = {t.device for t in module.parameters()} | {t.device for t in module.buffers()}
        self.device = next(iter(devices)) if len(devices) == 1 else None  # None: none, or spread over several
        self.moved = False

    def use(self, device: torch.device) -> None:
        """Eval mode, on ``device`` (a module spread over several devices stays where it is)."""
        self.module.eval()
        if self.device is not None and self.device != device:
            self.module.to(device)
            self.moved = True

    def restore(self) -> None:
        if self.moved or (self.device is not None and device_of(self.module) != self.device):
            self.module.to(self.device)
        for m, training in self.modes:  # pre-order: a parent's train() first, then each child's own
            if m.training != training:
                m.train(training)

class _ExitTracker:
    """Simulation callback: per confidence and sample, the prediction and the step at which the
    softmax of the mean output so far first reached the confidence."""

    def __init__(self, confidences: Sequence[float], max_steps: int):
        self.confidences, self.max_steps = list(confidences), max_steps
        self.total = None
        self.prediction: list = []
        self.steps: list = []
        self.done: list = []

    def __call__(self, t: int, out: torch.Tensor) -> None:
        out = out.flatten(1)
        self.total = out.double() if self.total is None else self.total + out
        if t > self.max_steps:
            return
        conf, top = torch.softmax(self.total / t, -1).max(-1)
        if not self.prediction:
            for _ in self.confidences:
                self.prediction.append(top.clone())
                self.steps.append(torch.full_like(top, self.max_steps))
                self.done.append(torch.zeros_like(top, dtype=torch.bool))
        for k, c in enumerate(self.confidences):
            stop = ~self.done[k] & ((conf >= c) | (t == self.max_steps))
            self.prediction[k][stop] = top[stop]
            self.steps[k][stop] = t
            self.done[k] |= stop
