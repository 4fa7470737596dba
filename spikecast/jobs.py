"""The one conversion job: model -> data -> convert -> validate -> save -> report.

:func:`run_job` is what ``spikecast convert``, ``spikecast demo`` and every job of ``spikecast
batch`` run, so they check, record and write the same things:

1. resolve the model (zoo / timm name, ``file.py:Name``; checkpoint, ``trust_checkpoint``) and
   move it to the device (checked by :func:`spikecast.devices.resolve_device`);
2. read the evaluation data and the calibration set (the train split, ``recipe.calib_images``
   class-balanced images) and check the model runs on them;
3. convert with the job's :class:`~spikecast.recipe.Recipe`;
4. validate the SNN against the ANN at every ``eval_timesteps`` (one simulation);
5. save the SNN to ``OUT/snn`` with ``metadata["origin"]``: the model, checkpoint and data as
   absolute references, so ``spikecast validate OUT/snn`` works from any directory;
6. write ``validation.json`` / ``validation.md`` and, with ``report=True``, the full report
   (``report.html`` / ``.md`` / ``.json``, plots, per-layer activity and energy).

The helpers below (:func:`load_model`, :func:`load_data`, :func:`origin_of`...) are the same
steps for the commands that start from a saved SNN (validate, quantize, export, report).
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from spikecast.data import TensorBatches
from spikecast.datasets import DataSpec, ImageData, open_data, parse_data_spec, resolve_data
from spikecast.devices import device_of, resolve_device
from spikecast.errors import DataError, one_line
from spikecast.models import data_defaults, parse_model_ref, resolve_model
from spikecast.nn.simulation import DEFAULT_EVAL_TIMESTEPS
from spikecast.pipeline import convert
from spikecast.recipe import Recipe
from spikecast.reporting.report import Report, build_report, describe_neurons, neuron_summary, write_report
from spikecast.runtime.network import SpikingNetwork
from spikecast.validate import ValidationResult, validate

__all__ = ["JobSpec", "JobResult", "run_job", "parse_timesteps", "load_model", "load_data", "check_model_runs",
           "origin_of", "write_validation", "environment", "LoadedModel"]

Log = Callable[[str], None]
ORIGIN_KEY = "origin"  # metadata key of a saved SNN: where its ANN and data come from


# ------------------------------------------------------------------------------------------- parsing
def parse_timesteps(text: Union[str, Sequence[int]]) -> list[int]:
    """``"1,2,4,8"`` -> [1, 2, 4, 8]; ``"64"`` -> [64]. An ellipsis continues the pattern up to the
    last value: ``"1,2,4,...,128"`` doubles (three terms with a constant ratio), ``"8,16,...,64"``
    adds 8 (a constant step); the last value is always included. A list of ints is sorted."""
    if not isinstance(text, str):
        values = [int(t) for t in text]
        if not values or any(v < 1 for v in values):
            raise ValueError(f"timesteps must be positive integers, got {list(text)!r}")
        return sorted(set(values))
    items = [t.strip() for t in text.replace(" ", "").split(",") if t.strip()]
    if not items:
        raise ValueError("the timesteps list is empty; example: 1,2,4,...,128")
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
        raise ValueError(f"cannot read the timesteps {text!r}: give positive integers such as 1,2,4,8 "
                         "or 1,2,4,...,128") from None
    if any(v < 1 for v in values):
        raise ValueError(f"timesteps must be positive integers, got {text!r}")
    return sorted(set(values))


# ------------------------------------------------------------------------------------------- model
@dataclass
class LoadedModel:
    ann: nn.Module
    ref: object  # what resolve_model took: "zoo:<name>", a timm name, or an nn.Module from file.py:Name
    name: str  # for people: the MODEL text for names, the class name for imported modules
    text: str  # the MODEL text to record: a file.py path made absolute


def absolute_model_text(text: str) -> str:
    """MODEL as recorded in a saved SNN: ``file.py:Name`` with the file's absolute path."""
    where, sep, attr = text.strip().rpartition(":")
    if sep and where.endswith(".py"):
        return f"{Path(where).expanduser().resolve()}:{attr}"
    return text.strip()


def absolute_path(path: Union[str, Path, None]) -> Optional[str]:
    return None if path is None else str(Path(path).expanduser().resolve())


def load_model(model: str, checkpoint: Union[str, Path, None] = None, pretrained: Optional[bool] = None, *,
               trust_checkpoint: bool = False, device: Optional[torch.device] = None) -> LoadedModel:
    """Resolve MODEL text (in eval mode, on ``device``); warns when a timm model gets random weights."""
    ref = parse_model_ref(model)
    ann, name = resolve_model(ref, checkpoint, pretrained, trust_checkpoint=trust_checkpoint)
    if isinstance(ref, str) and not ref.startswith("zoo:") and checkpoint is None and not pretrained:
        warnings.warn(f"{name} has random weights (give a checkpoint or pretrained weights): accuracies will be "
                      "chance level", UserWarning, stacklevel=2)
    if device is not None:
        ann = ann.to(device)
    return LoadedModel(ann, ref, ref if isinstance(ref, str) else name, absolute_model_text(model))


# ------------------------------------------------------------------------------------------- data
def absolute_data_spec(spec: Union[str, DataSpec]) -> str:
    """A data spec that means the same from any directory (folders and files made absolute)."""
    parsed = parse_data_spec(spec)
    return parsed.name if parsed.path is None else str(parsed.path.resolve())


def split_name(spec: DataSpec, split: Optional[str]) -> str:
    """``digits:train``, ``/data/folder/test``, or the spec's name when it has no splits."""
    if not spec.has_splits:
        return spec.name
    split = split or spec.split or "test"
    return f"{spec.path / split}" if spec.path is not None else f"{spec.kind}:{split}"


def load_data(model: LoadedModel, spec: Union[str, DataSpec], limit: Optional[int], split: Optional[str] = None, *,
              mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
              size: Optional[int] = None):
    """``(x, y)`` of a data spec, normalised as the model expects unless ``mean`` / ``std`` / ``size``."""
    defaults = data_defaults(model.ref, model.ann)
    return resolve_data(spec, split, limit, mean=mean or defaults.get("mean"), std=std or defaults.get("std"),
                        size=size or defaults.get("size"))


def open_eval_data(model: LoadedModel, spec: Union[str, DataSpec], limit: Optional[int], split: Optional[str] = None,
                   *, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                   size: Optional[int] = None) -> ImageData:
    """The images of a data spec read batch by batch (:class:`~spikecast.datasets.ImageData`: image
    folders are decoded by DataLoader workers as the network runs), normalised as :func:`load_data`;
    checks that the ANN runs on them."""
    defaults = data_defaults(model.ref, model.ann)
    images = open_data(spec, split, limit, mean=mean or defaults.get("mean"), std=std or defaults.get("std"),
                       size=size or defaults.get("size"))
    check_model_runs(model.ann, images.head(2))
    return images


def check_model_runs(ann: nn.Module, x: torch.Tensor) -> None:
    """Run the ANN on two samples, turning a shape mismatch into a one-line :class:`DataError`."""
    device = device_of(ann) or torch.device("cpu")
    try:
        with torch.inference_mode():
            ann(x[:2].to(device))
    except RuntimeError as exc:
        raise DataError(f"the model cannot run on this data (input shape {tuple(x.shape[1:])}): "
                        f"{one_line(exc, 200)}. Check the data spec, the image size / mean / std and the model.") \
            from None


# ------------------------------------------------------------------------------------------- records
def origin(model: LoadedModel, checkpoint, pretrained, data: Optional[str], trust_checkpoint: bool = False) -> dict:
    """What ``metadata["origin"]`` records: absolute references to the ANN and the data."""
    return {"model": model.text, "checkpoint": absolute_path(checkpoint), "pretrained": pretrained,
            "trust_checkpoint": bool(trust_checkpoint), "data": absolute_data_spec(data) if data else None}


def origin_of(snn: SpikingNetwork, where: str = "the saved SNN", *, model: Optional[str] = None,
              checkpoint=None, pretrained: Optional[bool] = None, data: Optional[str] = None) -> dict:
    """The ANN and data of a saved SNN: the arguments given, else what its job recorded (a recorded
    checkpoint belongs to the recorded model only). ``trust_checkpoint`` is never taken from the
    record: the caller passes it again."""
    meta = snn.metadata if isinstance(snn.metadata, dict) else {}
    saved = meta.get(ORIGIN_KEY) or meta.get("cli") or {}  # "cli": SNNs saved before the job runner
    text = model or saved.get("model")
    if text is None:
        source = meta.get("source")
        raise ValueError(f"{where} does not record which model it came from"
                         f"{f' (source: {source})' if source else ''}: pass --model")
    if checkpoint is None and model is None:
        checkpoint = saved.get("checkpoint")
    if pretrained is None and model is None:
        pretrained = saved.get("pretrained")
    return {"model": text, "checkpoint": checkpoint, "pretrained": pretrained, "data": data or saved.get("data")}


def environment() -> dict:
    try:
        version = _metadata.version("spikecast")
    except _metadata.PackageNotFoundError:
        version = "unknown"
    return {"spikecast": version, "torch": torch.__version__, "python": platform.python_version()}


def write_validation(out: Union[str, Path], result: ValidationResult, info: dict) -> tuple[Path, Path]:
    """``validation.json`` (the result's dict plus ``info``) and ``validation.md`` (the table)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "validation.json", out / "validation.md"
    json_path.write_text(json.dumps({**result.to_dict(), **info}, indent=2, default=str) + "\n")
    lines = ["# spikecast validation", ""]
    for key in ("model", "data", "calibration"):
        value = info.get(key)
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items() if v is not None)
        if value:
            lines.append(f"- {key}: {value}")
    md_path.write_text("\n".join(lines + ["", result.table(), ""]))
    return json_path, md_path


def describe_recipe(recipe: Recipe) -> str:
    how = {"percentile": f"percentile {recipe.percentile:g}", "max": "max",
           "mse": f"minimum error for T={recipe.calibration_timesteps}"}[recipe.thresholds]
    levels = f", {recipe.levels} spikes per step" if recipe.levels > 1 else ""
    trained_for = (f" for T={recipe.calibration_timesteps}, run at T={recipe.timesteps}"
                   if recipe.calibration_timesteps != recipe.timesteps else "")
    rebuilt = (f"; reconstruction ({recipe.reconstruct_steps} steps, {recipe.distill_steps} of the SNN{trained_for})"
               if recipe.reconstructs else "")
    per_channel = " per channel" if recipe.per_channel_used else ""
    return (f"thresholds: {how}{per_channel}; correction: {recipe.correction_used} for "
            f"T={recipe.calibration_timesteps}; {'signed' if recipe.signed else 'binary'} neurons{levels}"
            f"{'' if recipe.compensate else '; no compensation'}{rebuilt}")


def seconds_text(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def timesteps_text(values: Sequence[int]) -> str:
    values = list(values)
    if len(values) > 4 and all(b == 2 * a for a, b in zip(values, values[1:])):
        return f"{values[0]}, {values[1]}, {values[2]}, ..., {values[-1]}"
    return ", ".join(str(v) for v in values)


# ------------------------------------------------------------------------------------------- the job
@dataclass(frozen=True)
class JobSpec:
    """One conversion job. ``model`` / ``data`` / ``calib_data`` as the CLI takes them (MODEL, SPEC);
    ``recipe`` says how to convert (``recipe.calib_images`` bounds the calibration set);
    ``eval_timesteps`` the budgets validated; ``report`` also writes the HTML / Markdown / JSON
    report with per-layer activity on ``activity_images`` images."""

    model: str
    data: str
    recipe: Recipe = field(default_factory=Recipe)
    checkpoint: Optional[str] = None
    pretrained: Optional[bool] = None
    trust_checkpoint: bool = False
    calib_data: Optional[str] = None
    eval_images: Optional[int] = None
    eval_timesteps: tuple[int, ...] = DEFAULT_EVAL_TIMESTEPS
    tolerance: float = 0.01
    early_exit: tuple[float, ...] = ()
    batch_size: int = 128
    device: Optional[str] = None
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    size: Optional[int] = None
    workers: Optional[int] = None
    report: bool = False
    activity_images: int = 128


@dataclass
class JobResult:
    spec: JobSpec
    name: str  # the model, for people
    snn: SpikingNetwork
    report: Report  # validation, and activity when spec.report
    files: dict[str, Path]  # "snn", "validation.json", "validation.md" (+ the report's files)
    info: dict  # what validation.json records next to the numbers
    seconds: dict[str, float]

    @property
    def validation(self) -> ValidationResult:
        return self.report.validation

    @property
    def passed(self) -> bool:
        return self.validation.passed

    def summary(self) -> dict:
        """The numbers of the job, as ``spikecast batch`` records and tabulates them."""
        v, budget = self.validation, self.spec.recipe.timesteps
        energy = None
        activity = self.report.activity
        if activity is not None:
            at = budget if budget in activity.timesteps else activity.timesteps[-1]
            energy = {"timesteps": at, **activity.energy(at)}
        return {"ann_top1": v.ann_accuracy, "snn_top1": {str(t): v.snn_accuracy[t] for t in v.timesteps},
                "agreement": {str(t): v.agreement[t] for t in v.timesteps},
                "latency_to_parity": {f"{p:g}": t for p, t in self.report.latency_to_parity().items()},
                "passed": v.passed, "tolerance": v.tolerance, "energy": energy, "budget": budget,
                "recipe": self.spec.recipe.to_dict(), "convert_seconds": round(self.seconds["convert"], 2),
                "images": v.samples, "snn_dir": str(self.files["snn"])}


def run_job(spec: JobSpec, out_dir: Union[str, Path], *, log: Optional[Log] = None, progress: bool = True
            ) -> JobResult:
    """Run ``spec`` into ``out_dir`` (see the module docstring); returns the SNN and its numbers."""
    say = log or (lambda text: None)
    started = time.perf_counter()
    out = Path(out_dir).expanduser().resolve()
    recipe = spec.recipe
    device = resolve_device(spec.device) if spec.device is not None else None
    model = load_model(spec.model, spec.checkpoint, spec.pretrained, trust_checkpoint=spec.trust_checkpoint,
                       device=device)
    data = parse_data_spec(spec.data)
    calib = parse_data_spec(spec.calib_data) if spec.calib_data else data
    norm = dict(mean=spec.mean, std=spec.std, size=spec.size)
    images = open_eval_data(model, data, spec.eval_images, **norm)
    calib_split = "train" if calib.has_splits else None
    x_cal, _ = load_data(model, calib, recipe.calib_images, split=calib_split, **norm)
    if not calib.has_splits and not spec.calib_data:
        warnings.warn(f"{data.name} has no separate training split: calibrating on {len(x_cal)} of the evaluation "
                      "images (give separate calibration data: --calib-data SPEC, batch: calib_data)", UserWarning,
                      stacklevel=2)
    eval_name, calib_name = split_name(data, None), split_name(calib, calib_split)
    say(f"  data: {eval_name}, {len(images)} evaluation images; calibration: {calib_name}, {len(x_cal)} images")
    say(f"  converting ({describe_recipe(recipe)})...")
    t0 = time.perf_counter()
    snn = convert(model.ann, TensorBatches(x_cal, batch_size=spec.batch_size), recipe, device=device,
                  progress=progress)
    convert_s = time.perf_counter() - t0
    say(f"  converted in {seconds_text(convert_s)}: {len(snn.neurons())} IF neuron layers "
        f"({describe_neurons(neuron_summary(snn))})")
    timesteps = parse_timesteps(spec.eval_timesteps)
    say(f"  validating the SNN against the ANN at T = {timesteps_text(timesteps)} on {len(images)} images"
        f"{' (and measuring activity for the report)' if spec.report else ''}...")
    t0 = time.perf_counter()
    batches = images.batches(spec.batch_size, spec.workers)
    early_exit = list(spec.early_exit) or None
    if spec.report:
        report = build_report(model.ann, snn, batches, timesteps, model=model.name, data_name=eval_name,
                              tolerance=spec.tolerance, early_exit=early_exit, activity_images=spec.activity_images,
                              progress=progress)
    else:
        result = validate(model.ann, snn, batches, timesteps=timesteps, tolerance=spec.tolerance,
                          early_exit=early_exit, progress=progress)
        report = Report(title=f"spikecast: {model.name}", model=model.name, data=eval_name, validation=result,
                        neuron_summary=neuron_summary(snn))
    validate_s = time.perf_counter() - t0
    snn.metadata[ORIGIN_KEY] = origin(model, spec.checkpoint, spec.pretrained, spec.data, spec.trust_checkpoint)
    files = {"snn": snn.save(out / "snn").resolve()}
    info = {
        "model": {"name": model.name, "reference": model.text, "checkpoint": absolute_path(spec.checkpoint),
                  "pretrained": spec.pretrained},
        "data": {"spec": eval_name, "images": len(images)},
        "calibration": {"spec": calib_name, "images": len(x_cal)},
        "calibration_set": snn.metadata.get("calibration_set"),
        "recipe": recipe.to_dict(),
        "config": {"eval_timesteps": timesteps, "tolerance": spec.tolerance, "early_exit": list(spec.early_exit),
                   "batch_size": spec.batch_size, "device": str(device or "cpu")},
        "snn_dir": str(files["snn"]),
        "environment": environment(),
    }
    seconds = {"convert": round(convert_s, 3), "validate": round(validate_s, 3),
               "total": round(time.perf_counter() - started, 3)}
    info["timing"] = seconds
    files["validation.json"], files["validation.md"] = write_validation(out, report.validation, info)
    if spec.report:
        files.update(write_report(report, out))
    return JobResult(spec, model.name, snn, report, files, info, seconds)
