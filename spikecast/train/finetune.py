"""``spikecast.finetune``: labelled fine-tuning for few-timestep SNNs, two routes.

* ``method="qcfs"`` (Bu et al. 2022): calibrate the ANN, replace every activation site by a QCFS
  unit with ``L = levels`` levels and a learnable clip initialised from the calibrated threshold
  (:mod:`spikecast.quant.qcfs`), fine-tune weights and clips with straight-through gradients,
  then convert with ``threshold = clip``. An IF neuron run for ``T = L`` steps reproduces a QCFS
  unit exactly under constant input, so the SNN at ``T = L`` computes what was trained (deeper
  layers see spike trains, not constants; the post-conversion ``calibration`` with the QCFS ANN
  as teacher removes most of what is left).
* ``method="surrogate"``: backpropagation through time in the SNN itself at ``timesteps`` steps
  (surrogate gradient of the spike, see :class:`spikecast.nn.neuron.IFNeuron`), starting
  from a converted SNN - the hybrid route with conversion as initialisation. ``bptt_window``
  truncates backpropagation to windows of that many steps so memory does not grow with ``T``.

Both run through :func:`spikecast.train.loop.train` (checkpoints every epoch and every ten minutes inside one, resume).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from spikecast.calibrate.sample import CalibrationSet
from spikecast.calibrate.thresholds import calibrate
from spikecast.data import DataLike, as_loader, split_batch
from spikecast.devices import DeviceLike, device_of, resolve_device
from spikecast.models import ModelLike, resolve_model
from spikecast.pipeline import build_snn, convert, prepare, read_calibration_set
from spikecast.quant.qcfs import freeze, qcfs_thresholds, to_qcfs, trainable_copy
from spikecast.recipe import Recipe
from spikecast.runtime.network import SpikingNetwork
from spikecast.train.loop import CHECKPOINT_MINUTES, TrainConfig, config_dict, labelled_tensors, train

METHODS = ("qcfs", "surrogate")


@dataclass(frozen=True)
class FinetuneConfig:
    """What to fine-tune and how (optimisation settings are in ``train``).

    ``levels``: QCFS levels ``L`` (the SNN's default T). ``timesteps``: surrogate route, the budget
    trained for (and the SNN's default T); ``anytime``: surrogate route, the loss is also taken at
    2T, ..., ``anytime`` * T steps (default 2), so the network keeps its accuracy when run longer. ``correction``: correction after conversion (``"none"`` /
    ``"light"`` / ``"advanced"``), with the fine-tuned ANN as teacher; ``correction_form``
    ``"charge"`` (default: initial charge only, so the network keeps its accuracy when run longer
    than ``levels`` steps; a QCFS network's error at ``T = L`` is a start-up deficit) or
    ``"current"`` (per-step currents sized for ``T``). ``thresholds``:
    how the initial QCFS clips are chosen (the names are the :class:`Recipe`'s). ``calib_images``: unlabeled images for calibration.
    ``distill``: weight of knowledge distillation from the source ANN (the teacher) in the loss,
    ``(1 - distill) * cross-entropy(labels) + distill * t**2 * KL(teacher || network)`` at
    temperature ``t = distill_temperature`` (0: labels only, 1: the teacher only): the ANN's soft
    outputs say more per image than its label, which matters when a fine-tune sees a fraction of
    an epoch.
    """

    method: str = "qcfs"
    levels: int = 4
    timesteps: int = 4
    bptt_window: Optional[int] = None
    anytime: int = 2
    correction: str = "light"
    correction_form: str = "charge"
    thresholds: str = "mse"
    signed: bool = Recipe().signed
    calib_images: int = 512
    distill: float = 0.0
    distill_temperature: float = 1.0
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown fine-tuning method {self.method!r}; choose one of {METHODS}")
        if int(self.levels) < 1 or int(self.timesteps) < 1:
            raise ValueError("levels and timesteps must be >= 1")
        if self.bptt_window is not None and int(self.bptt_window) < 1:
            raise ValueError("bptt_window must be >= 1 (or None for full BPTT)")
        if isinstance(self.anytime, bool) or int(self.anytime) != self.anytime or self.anytime < 1:
            raise ValueError(f"anytime must be a positive integer (1: train for T only), got {self.anytime!r}")
        if not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"distill must be a weight in [0, 1] (0: labels only), got {self.distill!r}")
        if not self.distill_temperature > 0:
            raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature!r}")
        self.recipe()  # validates the conversion settings

    def recipe(self) -> Recipe:
        """The conversion recipe of this fine-tuning (the same :class:`Recipe` ``convert`` takes):
        budget ``T = levels`` (QCFS) or ``timesteps`` (surrogate), ``thresholds`` (QCFS: the
        clips' initial values), ``correction``; no label-free reconstruction (training with labels
        takes its place)."""
        return Recipe(timesteps=int(self.levels if self.method == "qcfs" else self.timesteps),
                      thresholds=self.thresholds, correction=self.correction, correction_form=self.correction_form,
                      signed=self.signed, calib_images=int(self.calib_images), reconstruct="off")


def _calibration_subset(train_data, n: int):
    tensors = labelled_tensors(train_data)
    if tensors is not None:
        x = tensors[0]
        gen = torch.Generator().manual_seed(0)
        return x[torch.randperm(len(x), generator=gen)[:n]]
    xs, seen = [], 0
    for batch in train_data:
        x, _ = split_batch(batch)
        xs.append(x)
        seen += len(x)
        if seen >= n:
            break
    if not xs:
        raise ValueError("the fine-tuning data is empty")
    return torch.cat(xs)[:n]


def _accuracy(fn, val, batch_size: int, device: torch.device) -> float:
    correct = seen = 0
    with torch.inference_mode():
        for batch in as_loader(val, batch_size=batch_size):
            x, y = split_batch(batch)
            correct += int((fn(x.to(device)).argmax(-1).cpu() == y.cpu()).sum())
            seen += len(y)
    return correct / max(seen, 1)


def finetune(
    model: Union[ModelLike, SpikingNetwork],
    train_data: DataLike,
    config: Optional[FinetuneConfig] = None,
    *,
    calib: Optional[DataLike] = None,
    val: Optional[DataLike] = None,
    checkpoint_dir: Optional[Union[str, Path]] = None,
    checkpoint: Optional[Union[str, Path]] = None,
    pretrained: Optional[bool] = None,
    trust_checkpoint: bool = False,
    teacher: Optional[ModelLike] = None,
    device: DeviceLike = None,
    val_batch_size: Optional[int] = None,
    progress: bool = True,
    stop_after_epoch: Optional[float] = None,
    checkpoint_minutes: Optional[float] = CHECKPOINT_MINUTES,
    **settings,
) -> SpikingNetwork:
    """Fine-tune with labels and return the spiking network (see the module docstring).

    ``spikecast.finetune("zoo:cifar10-resnet20", (x, y), levels=4, epochs=2)``: any field of
    :class:`FinetuneConfig` or :class:`TrainConfig` may be given as a keyword instead of a config.

    Args:
        model: the source ANN (``nn.Module``, ``"zoo:<name>"``, timm name) or, for
            ``method="surrogate"``, a :class:`SpikingNetwork` to start from.
        train_data: labelled data: ``(x, y)`` tensors (shuffled and augmented here,
            deterministically) or a DataLoader of ``(x, y)`` batches (used as it comes).
        config: :class:`FinetuneConfig`.
        calib: unlabeled calibration data, read once into the calibration set of
            ``config.calib_images`` images (default: that many images of ``train_data``: a
            seeded random subset of in-memory tensors, the first ones of a DataLoader).
        val: optional labelled data evaluated after every epoch (QCFS ANN / SNN accuracy), in
            batches of ``val_batch_size`` (default: the training batch size).
        device: where the network trains, calibrates and lives (``"cpu"``, ``"cuda"``, ...;
            default: the model's device). Batches are moved there; an unavailable device raises
            :class:`~spikecast.errors.DeviceError`. The caller's model is not moved.
        teacher: the ANN distilled from when ``config.distill > 0`` (default: ``model``, the
            source ANN; needed when ``model`` is a :class:`SpikingNetwork`, which does not carry
            its source's weights).
        checkpoint_dir: folder for the checkpoint, written after every epoch and every
            ``checkpoint_minutes`` inside one (0: after every batch; None: after epochs only); an
            interrupted run called again with the same arguments resumes where the checkpoint was
            written, mid-epoch included (with in-memory ``(x, y)``, to the weights an
            uninterrupted run reaches; a DataLoader's batches are drawn again as it gives them).
        stop_after_epoch: end as an interruption would once this many epochs are done (may be
            fractional: 0.5 is half the first epoch's batches; for tests).

    Returns:
        A :class:`SpikingNetwork` with the metadata of ``convert`` (its recipe is
        ``config.recipe()``) plus ``metadata["finetune"]``: the method, settings, per-epoch
        history and wall time.
    """
    started = time.perf_counter()
    config = with_settings(config or FinetuneConfig(), settings)
    if config.method == "qcfs" and isinstance(model, SpikingNetwork):
        raise TypeError("method='qcfs' fine-tunes the ANN: pass the source model, not a SpikingNetwork")
    if checkpoint_minutes is not None and not checkpoint_minutes >= 0:
        raise ValueError(f"checkpoint_minutes must be >= 0 or None, got {checkpoint_minutes}")
    if device is not None:
        resolve_device(device)  # an unavailable device fails here, before any work
    recipe = config.recipe()
    images = read_calibration_set(calib if calib is not None else _calibration_subset(train_data, config.calib_images),
                                  recipe, progress=progress)
    if not config.distill:
        teacher = None
    elif teacher is not None:  # an explicit teacher comes ready to run: the source's checkpoint is the source's
        teacher = _place(resolve_model(teacher)[0], device)[0]
    elif isinstance(model, SpikingNetwork):
        raise ValueError("distill > 0 needs the ANN to distill from: pass teacher=... (a SpikingNetwork does not "
                         "carry its source's weights)")
    else:
        teacher = _place(resolve_model(model, checkpoint, pretrained, trust_checkpoint=trust_checkpoint)[0], device)[0]
    run = _Run(config, recipe, images, val, int(val_batch_size or config.train.batch_size), checkpoint_dir,
               progress, stop_after_epoch, started, teacher, checkpoint_minutes)
    if config.method == "qcfs":
        ann, source = resolve_model(model, checkpoint, pretrained, trust_checkpoint=trust_checkpoint)
        snn, history = _finetune_qcfs(ann, source, train_data, run, _place(ann, device))
    else:
        snn, history, source = _finetune_surrogate(model, train_data, run, device, checkpoint, pretrained,
                                                   trust_checkpoint)
    snn.metadata = dict(snn.metadata)
    snn.metadata["finetune"] = {"method": config.method, "source": source, "config": config_dict(config),
                                "history": history.epochs, "train_seconds": round(history.seconds, 1),
                                "seconds": round(time.perf_counter() - started, 1)}
    return snn


#: Old keyword names of fine-tuning settings -> the recipe's names (accepted with a warning).
_RENAMED = {"calibration": "correction", "threshold_method": "thresholds"}


def with_settings(config: FinetuneConfig, settings: dict) -> FinetuneConfig:
    """``config`` with keyword overrides of its own fields or of its ``train`` fields."""
    settings = dict(settings)
    for old, new in _RENAMED.items():
        if old in settings:
            if new in settings:
                raise TypeError(f"finetune() got both {old}= and its new name {new}=")
            warnings.warn(f"finetune({old}=...) is deprecated: use {new}=", DeprecationWarning, stacklevel=3)
            settings[new] = settings.pop(old)
    own = {f.name for f in fields(FinetuneConfig)} - {"train"}
    loop = {f.name for f in fields(TrainConfig)}
    unknown = set(settings) - own - loop
    if unknown:
        raise TypeError(f"finetune() got unknown setting(s) {sorted(unknown)}; "
                        f"valid: {sorted(own | loop)}")
    train_cfg = replace(config.train, **{k: v for k, v in settings.items() if k in loop})
    return replace(config, train=train_cfg, **{k: v for k, v in settings.items() if k in own})


def _fingerprint(config: FinetuneConfig, source: str, data_size) -> dict:
    """What a checkpoint belongs to. QCFS's correction runs after training, so a checkpoint serves
    every correction setting (the surrogate route corrects its starting network: it counts)."""
    settings = asdict(config)
    for name in ("distill", "distill_temperature"):  # added later: checkpoints of runs without them still resume
        if settings[name] == getattr(FinetuneConfig, name):
            settings.pop(name)
    if config.method == "qcfs":
        settings.pop("correction")
        settings.pop("correction_form")
    return {"source": source, "config": repr(settings), "data": str(data_size)}


def _data_size(train_data) -> str:
    tensors = labelled_tensors(train_data)
    return str(tuple(tensors[0].shape)) if tensors is not None else str(len(train_data))


@dataclass(frozen=True)
class _Run:
    """What both routes share."""

    config: FinetuneConfig
    recipe: Recipe
    images: CalibrationSet
    val: object
    val_batch_size: int
    checkpoint_dir: Optional[Union[str, Path]]
    progress: bool
    stop_after_epoch: Optional[float]
    started: float
    teacher: Optional[nn.Module] = None  # the ANN distilled from (config.distill > 0)
    checkpoint_minutes: Optional[float] = CHECKPOINT_MINUTES

    def loss(self, logits: torch.Tensor, y: torch.Tensor, teacher_logits: Optional[torch.Tensor]) -> torch.Tensor:
        """Cross-entropy with the labels, mixed with distillation when there are teacher outputs."""
        ce = F.cross_entropy(logits, y)
        if teacher_logits is None:
            return ce
        t = float(self.config.distill_temperature)
        kd = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(teacher_logits / t, -1), log_target=True,
                      reduction="batchmean") * (t * t)
        return (1 - self.config.distill) * ce + self.config.distill * kd

    def teacher_logits(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The teacher's outputs for ``x`` (None without one)."""
        if self.teacher is None:
            return None
        with torch.no_grad():
            return self.teacher(x).float()


def _place(module: nn.Module, device: DeviceLike) -> tuple[nn.Module, torch.device]:
    """``module`` on ``device`` (a copy when it lives elsewhere: the caller's module is not moved)."""
    home = device_of(module)
    target = resolve_device(device, default=home or torch.device("cpu"))
    if home is not None and home != target:
        module = copy.deepcopy(module).to(target)
    return module, target


def _finetune_qcfs(ann: nn.Module, name: str, train_data, run: _Run, placed: tuple[nn.Module, torch.device]):
    config, recipe, images = run.config, run.recipe, run.images
    ann, device = placed
    normalised = prepare(ann, images.images[:2].to(device), maxpool=recipe.maxpool_rewrite)
    calibrated, stats = calibrate(normalised, images, recipe.calibration_config(), progress=run.progress,
                                  device=device)
    if not stats:
        raise ValueError(f"{name} has no ReLU-like activation site: nothing for QCFS to quantise")
    qgraph, params = trainable_copy(to_qcfs(calibrated, config.levels))

    def batch_step(x, y):
        x = x.to(device)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # ~2x faster convolutions on CPU
        logits = qgraph(x)
        loss = run.loss(logits, y.to(device), run.teacher_logits(x))
        loss.backward()
        return loss.item(), logits.detach().cpu()

    evaluate = (lambda: _accuracy(qgraph, run.val, run.val_batch_size, device)) if run.val is not None else None
    history = train(qgraph, params, batch_step, train_data, config.train,
                    fingerprint=_fingerprint(config, name, _data_size(train_data)),
                    checkpoint_dir=run.checkpoint_dir, evaluate=evaluate, description=f"QCFS L={config.levels}",
                    progress=run.progress, stop_after_epoch=run.stop_after_epoch,
                    checkpoint_minutes=run.checkpoint_minutes)
    freeze(qgraph)
    # thresholds = the fine-tuned clips; the QCFS graph is the correction's teacher
    snn = build_snn(qcfs_thresholds(qgraph), images, recipe, source=name, calibrated=True, stats=stats,
                    device=device, progress=run.progress, started=run.started)
    return snn, history


def _finetune_surrogate(model, train_data, run: _Run, device: DeviceLike, checkpoint, pretrained, trust_checkpoint):
    config = run.config
    T = int(config.timesteps)
    if isinstance(model, SpikingNetwork):
        start = model
        source = str(model.metadata.get("source", "SpikingNetwork"))
        device = resolve_device(device, default=device_of(model.graph_module) or torch.device("cpu"))
    else:
        start = convert(model, run.images, run.recipe, checkpoint=checkpoint, pretrained=pretrained,
                        trust_checkpoint=trust_checkpoint, device=device, progress=run.progress)
        source = str(start.metadata.get("source"))
        device = device_of(start.graph_module) or torch.device("cpu")  # where convert put it
    graph, params = trainable_copy(start.graph_module)
    graph.to(device)  # in place: the parameters in `params` move with it
    snn = SpikingNetwork(graph, replace(start.config, timesteps=T), start.metadata)
    window = int(config.bptt_window) if config.bptt_window else T
    # anytime: the loss at T, 2T, ... anytime*T steps (backpropagation cut at each), so the network
    # learns to be right at its budget and to stay right when run longer; trained at T alone it
    # specialises in T's transient (validation split, ResNet-32 from a QCFS network: 82.6 / 86.8 /
    # 90.0 / 91.6 / 92.0% at T = 4 / 8 / 16 / 32 / 64 with anytime=2, 84.2 / 74.6 / 81.6 / 84.6 /
    # 85.6% with anytime=1)
    steps = T * int(config.anytime)

    def batch_step(x, y):
        x, y = x.to(device), y.to(device)
        total, loss = None, None
        budget_out = None
        teacher_logits = run.teacher_logits(x)  # once per batch: every cut compares with the same outputs
        # chunks of steps between the cuts (larger convolution batches where memory allows)
        for t, out in enumerate(snn.steps(x, steps, window=math.gcd(window, T)), start=1):
            total = out if total is None else total + out
            if t % window == 0 or t % T == 0 or t == steps:
                loss = run.loss(total / t, y, teacher_logits)
                # later windows reuse the static prefix's graph: keep it until the last one
                loss.backward(retain_graph=t < steps)
                snn.detach_state()
                total = total.detach()
            if t == T:
                budget_out = (total / T).detach().cpu()
        return loss.item(), budget_out

    evaluate = ((lambda: _accuracy(lambda x: snn.simulate(x, T), run.val, run.val_batch_size, device))
                if run.val is not None else None)
    history = train(snn.graph_module, params, batch_step, train_data, config.train,
                    fingerprint=_fingerprint(config, source, _data_size(train_data)),
                    checkpoint_dir=run.checkpoint_dir, evaluate=evaluate, description=f"surrogate T={T}",
                    progress=run.progress, stop_after_epoch=run.stop_after_epoch,
                    checkpoint_minutes=run.checkpoint_minutes)
    freeze(snn.graph_module)
    snn.reset()
    return snn, history, source
