"""What the commands share: output, devices, and loading a saved SNN with its ANN and data."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from spikecast import distributed
from spikecast.cli.args import EXIT_MISSED, EXIT_OK, parse_floats
from spikecast.datasets import DataSpec, ImageData, parse_data_spec
from spikecast.devices import resolve_device
from spikecast.jobs import LoadedModel, load_data, load_model, open_eval_data, origin_of
from spikecast.runtime.network import SpikingNetwork


def say(text: str = "") -> None:
    if distributed.rank() == 0:  # under torchrun only rank 0 talks
        print(text, flush=True)


def exit_code(result) -> int:
    return EXIT_OK if result.passed else EXIT_MISSED


def device_of(args) -> Optional[torch.device]:
    """``--device``, checked to exist here (None when not given)."""
    return resolve_device(args.device) if getattr(args, "device", None) else None


def normalisation(args) -> dict:
    """``--mean`` / ``--std`` / ``--size`` as keyword arguments of :func:`spikecast.jobs.load_data`."""
    return {"mean": parse_floats(getattr(args, "mean", None), "--mean"),
            "std": parse_floats(getattr(args, "std", None), "--std"), "size": getattr(args, "size", None)}


def model_from(args, model: Optional[str] = None, checkpoint=None, pretrained=None,
               device: Optional[torch.device] = None) -> LoadedModel:
    """The ANN named by MODEL / ``--model`` with ``--checkpoint`` / ``--pretrained`` / ``--trust-checkpoint``."""
    return load_model(model or args.model, checkpoint if checkpoint is not None else getattr(args, "checkpoint", None),
                      pretrained if pretrained is not None else getattr(args, "pretrained", None),
                      trust_checkpoint=bool(getattr(args, "trust_checkpoint", False)), device=device)


@dataclass
class Saved:
    """A saved SNN with the ANN and the data it is compared with."""

    snn: SpikingNetwork
    model: LoadedModel
    data: Optional[DataSpec]
    images: Optional[ImageData] = None

    def read(self, args) -> "Saved":
        """Open the evaluation images (``--eval-images``, normalisation flags; image folders are read
        batch by batch, see :meth:`batches`) and check the ANN runs on them."""
        self.images = open_eval_data(self.model, self.data, getattr(args, "eval_images", None), **normalisation(args))
        return self

    def batches(self, args, indices: Optional[Sequence[int]] = None) -> Iterable:
        """The evaluation batches (``--batch-size``, ``--workers``); ``indices``: a torchrun shard."""
        return self.images.batches(args.batch_size, getattr(args, "workers", None), indices)


def load_saved(args, snn_dir: str, *, device: Optional[torch.device] = None, need_data: bool = True,
               read_data: bool = True) -> Saved:
    """Load ``snn_dir`` and its ANN and evaluation data: the flags given, else what its job recorded."""
    snn = SpikingNetwork.load(snn_dir, device=device)
    if getattr(args, "compile", False):
        snn.config = dataclasses.replace(snn.config, compiled=True)
    source = origin_of(snn, str(snn_dir), model=getattr(args, "model", None),
                       checkpoint=getattr(args, "checkpoint", None), pretrained=getattr(args, "pretrained", None),
                       data=getattr(args, "data", None))
    if source["data"] is None and need_data:
        raise ValueError(f"{snn_dir} records no data: pass --data SPEC (e.g. cifar10, digits, a folder or a .pt file)")
    model = model_from(args, source["model"], source["checkpoint"], source["pretrained"], device=device)
    saved = Saved(snn, model, parse_data_spec(source["data"]) if source["data"] else None)
    return saved.read(args) if read_data and saved.data is not None else saved


def calibration_images(args, saved_or_model, spec: DataSpec, limit: int):
    """Unlabelled images for a calibration (int8 / integer grids): the train split when there is one."""
    model = saved_or_model.model if isinstance(saved_or_model, Saved) else saved_or_model
    x, _ = load_data(model, spec, limit, split="train" if spec.has_splits else None, **normalisation(args))
    return x


@contextlib.contextmanager
def friendly_warnings():
    """Show warnings as one ``spikecast: warning: ...`` line on stderr, without the source line."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"spikecast: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with ``n`` intra-op threads (tiny tensors: extra threads only add synchronisation)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def out_path(text: str) -> Path:
    return Path(text).expanduser()
