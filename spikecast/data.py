"""Data helpers: CIFAR-10 from the shared JPEG folder, and uniform batch handling.

* :func:`cifar10_tensors` decodes ``<shared>/data/cifar10-jpeg/{train,test}`` into
  normalised tensors, optionally a deterministic class-balanced subset.  The 50,000 training
  images are split once, by a fixed seed, into ``"val"`` (5,000, 500 per class: every choice of
  recipe, setting, epoch or network is made on it) and ``"train"`` (the other 45,000: calibration
  and fine-tuning); ``"test"`` is the 10,000-image test folder, read only for reported numbers.
* :func:`as_loader` turns a DataLoader, a tensor ``x`` or a tuple ``(x, y)``
  into something iterable in batches.
* :func:`split_batch` splits any common batch form into ``(x, y or None)``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import DataError, DataNotFoundError
from .paths import SHARED_ENV_VAR, shared_dir
from .zoo.registry import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "augment_batch",
    "CIFAR10_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "cifar10_root",
    "cifar10_tensors",
    "cifar10_split_indices",
    "cifar10_uint8",
    "normalise_uint8",
    "CIFAR10_SPLITS",
    "VAL_PER_CLASS",
    "VAL_SEED",
    "balanced_indices",
    "TensorBatches",
    "as_loader",
    "split_batch",
    "check_finite",
    "input_channel_guard",
]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
#: The shared CIFAR-10 ResNets were trained with ImageNet's normalisation (applied to RGB scaled
#: to [0, 1]), not CIFAR-10's own statistics; hence the names.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

Split = Literal["train", "val", "test"]
#: What the API's ``data`` / ``calib`` / ``train_data`` arguments take (:func:`as_loader` reads them):
#: a tensor of inputs, an ``(inputs, labels)`` tuple of tensors, or an iterable of such batches (a
#: ``DataLoader``, a list, an :class:`~spikecast.datasets.ImageData`).
DataLike = Union[Tensor, tuple[Tensor, ...], Iterable[Any]]
CIFAR10_SPLITS: tuple[str, ...] = ("train", "val", "test")
#: The validation split: VAL_PER_CLASS images of each class drawn from the training folder by
#: ``numpy.random.default_rng(VAL_SEED).permutation`` of that class's files (in file order).
VAL_PER_CLASS = 500
VAL_SEED = 20261130


def cifar10_root() -> Path:
    """Default CIFAR-10 JPEG folder: ``shared_dir() / "data" / "cifar10-jpeg"``."""
    return shared_dir() / "data" / "cifar10-jpeg"


def _decode_rgb(path: str) -> np.ndarray:
    """Decode one image file to an ``[H, W, 3]`` uint8 RGB array."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


@dataclass
class _DecodedSplit:
    """The files of one ``<root>/<split>`` folder (ImageFolder order) and the images decoded so far.

    Images are decoded on demand and kept, so a calibration subset of the
    50,000-image train split only decodes the images it uses.
    """

    folder: Path
    class_names: tuple[str, ...]
    files: tuple[str, ...]
    labels: np.ndarray  # [N] int64
    images: Optional[np.ndarray] = None  # [N, H, W, 3] uint8, allocated on first decode
    decoded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, indices: np.ndarray) -> np.ndarray:
        """uint8 images ``[len(indices), H, W, 3]`` at ``indices``, decoding those not yet decoded."""
        with self.lock:
            if len(self.decoded) != len(self.files):
                self.decoded = np.zeros(len(self.files), dtype=bool)
            missing = np.unique(indices[~self.decoded[indices]])
            if len(missing):
                # A plain loop: 32x32 JPEGs decode in ~0.1 ms each, and a thread pool was slower (GIL-bound).
                arrays = [_decode_rgb(self.files[i]) for i in missing]
                if self.images is None:
                    self.images = np.zeros((len(self.files), *arrays[0].shape), dtype=np.uint8)
                for index, array in zip(missing, arrays):
                    if array.shape != self.images.shape[1:]:
                        raise ValueError(
                            f"{self.files[index]} is {array.shape[1]}x{array.shape[0]}, "
                            f"expected {self.images.shape[2]}x{self.images.shape[1]} like the other images"
                        )
                    self.images[index] = array
                self.decoded[missing] = True
            assert self.images is not None
            return self.images[indices]


@lru_cache(maxsize=8)
def _split_cache(folder: str) -> _DecodedSplit:
    """List ``folder``'s class subfolders and image files in torchvision ImageFolder order (both sorted)."""
    split_folder = Path(folder)
    if not split_folder.is_dir():
        raise DataNotFoundError(
            f"CIFAR-10 image folder not found: {split_folder}. Point the {SHARED_ENV_VAR} environment "
            f"variable at the shared folder holding data/cifar10-jpeg/ (currently {shared_dir()}), "
            "or pass root=."
        )
    class_names = tuple(sorted(entry.name for entry in os.scandir(split_folder) if entry.is_dir()))
    if not class_names:
        raise DataNotFoundError(f"no class subfolders in {split_folder}")
    files: list[str] = []
    labels: list[int] = []
    for label, class_name in enumerate(class_names):
        class_folder = split_folder / class_name
        names = sorted(
            entry.name for entry in os.scandir(class_folder)
            if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        files.extend(str(class_folder / name) for name in names)
        labels.extend([label] * len(names))
    return _DecodedSplit(
        folder=split_folder, class_names=class_names, files=tuple(files), labels=np.asarray(labels, dtype=np.int64)
    )


def balanced_indices(labels: np.ndarray, limit: Optional[int] = None, per_class: Optional[int] = None) -> np.ndarray:
    """Deterministic class-balanced selection of sample indices.

    Samples are taken round-robin over the classes in sorted label order, each
    class in its own file order: the first sample of every class, then the
    second of every class, and so on (a class that runs out is skipped).
    ``per_class`` keeps at most that many samples of each class; ``limit`` then
    keeps the first ``limit`` of the round-robin sequence.  Every prefix of the
    result is therefore class balanced (counts differ by at most one).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if per_class is not None and per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    labels = np.asarray(labels)
    per_label = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    if per_class is not None:
        per_label = [indices[:per_class] for indices in per_label]
    # Rank of each sample within its class; a stable sort by (rank, label) interleaves the classes.
    candidates = np.concatenate(per_label) if per_label else np.zeros(0, dtype=np.int64)
    ranks = np.concatenate([np.arange(len(indices)) for indices in per_label]) if per_label else candidates
    order = np.lexsort((labels[candidates], ranks))
    selected = candidates[order]
    return selected if limit is None else selected[:limit]


def cifar10_split_indices(split: Split, labels: np.ndarray) -> np.ndarray:
    """Indices into the training folder's files (ImageFolder order) that make up ``split``.

    ``"val"``: for each class, the first :data:`VAL_PER_CLASS` of a permutation of that class's
    files drawn with seed :data:`VAL_SEED` (one generator, classes in label order), returned in
    file order.  ``"train"``: every other file, in file order.  Disjoint, and together the folder.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(VAL_SEED)
    val = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        val[members[rng.permutation(len(members))[:VAL_PER_CLASS]]] = True
    if split == "val":
        return np.flatnonzero(val)
    if split == "train":
        return np.flatnonzero(~val)
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")


def cifar10_tensors(
    split: Split = "test",
    limit: Optional[int] = None,
    root: Optional[Union[str, Path]] = None,
    per_class: Optional[int] = None,
) -> tuple[Tensor, Tensor]:
    """CIFAR-10 images from the shared JPEG folder as normalised tensors.

    Args:
        split: ``"train"`` (45,000 images: the training folder without the validation split),
            ``"val"`` (5,000 images carved from the training folder, 500 per class, seed
            :data:`VAL_SEED`; never used for calibration or fine-tuning) or ``"test"`` (10,000).
        limit: keep this many images, chosen class-balanced and deterministic
            (see :func:`balanced_indices`): ``limit=512`` gives 52 or 51 per class.
        root: folder holding ``train/`` and ``test/``; default :func:`cifar10_root`.
        per_class: keep the first ``per_class`` images of each class.

    Returns:
        ``x``: float32 ``[N, 3, 32, 32]``, RGB scaled to [0, 1] then normalised
        with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` (what the shared ResNets were trained with); ``y``: int64 ``[N]``.
        Without ``limit`` and ``per_class`` the order is torchvision ImageFolder's
        (classes sorted, files sorted); with either, classes are interleaved.

    Decoded images are cached in memory per folder, so repeated calls only pay
    for normalisation.

    Raises:
        FileNotFoundError: the image folder is missing (message names the path
            and ``SPIKECAST_SHARED``).
    """
    images, labels = cifar10_uint8(split, limit=limit, root=root, per_class=per_class)
    return normalise_uint8(images), labels


def normalise_uint8(images: Tensor) -> Tensor:
    """``[N, H, W, 3]`` uint8 RGB images -> float32 ``[N, 3, H, W]``: scaled to [0, 1], then
    normalised with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` (what :func:`cifar10_tensors` returns)."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous()


def cifar10_uint8(split: Split = "test", limit: Optional[int] = None,
                  root: Optional[Union[str, Path]] = None, per_class: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """The images :func:`cifar10_tensors` returns, before normalisation: uint8 ``[N, H, W, 3]``
    (4x smaller, e.g. to ship a fixed image set to another machine) and labels; same arguments."""
    if split not in CIFAR10_SPLITS:
        raise ValueError(f"split must be one of {', '.join(repr(s) for s in CIFAR10_SPLITS)}, got {split!r}")
    folder = Path(root).expanduser() if root is not None else cifar10_root()
    decoded_split = _split_cache(str((folder / ("test" if split == "test" else "train")).resolve()))
    indices = (np.arange(len(decoded_split.files)) if split == "test"
               else cifar10_split_indices(split, decoded_split.labels))
    if limit is not None or per_class is not None:
        indices = indices[balanced_indices(decoded_split.labels[indices], limit=limit, per_class=per_class)]
    if len(indices) == 0:
        return torch.zeros(0, 32, 32, 3, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return torch.from_numpy(decoded_split.get(indices)), torch.from_numpy(decoded_split.labels[indices].copy())


class TensorBatches:
    """Re-iterable batches over in-memory tensors: yields ``x`` batches, or ``(x, y)`` when labels are given."""

    def __init__(self, x: Tensor, y: Optional[Tensor] = None, batch_size: int = 256) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if y is not None and len(y) != len(x):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        self.x = x
        self.y = y
        self.batch_size = batch_size

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Union[Tensor, tuple[Tensor, Tensor]]]:
        for start in range(0, len(self.x), self.batch_size):
            stop = start + self.batch_size
            if self.y is None:
                yield self.x[start:stop]
            else:
                yield self.x[start:stop], self.y[start:stop]


def as_loader(data: DataLike, batch_size: int = 256) -> Iterable[Any]:
    """Something to iterate over in batches, in order.

    * a ``torch.utils.data.DataLoader`` (or any other non-tensor iterable of
      batches, e.g. a list) is returned as is;
    * a tensor ``x`` gives ``x`` batches of ``batch_size``;
    * a tuple ``(x, y)`` of tensors gives ``(x, y)`` batches (``(x,)`` gives ``x`` batches).

    The result of the last two is a :class:`TensorBatches`, which can be iterated
    several times and has a ``len``.
    """
    if isinstance(data, Tensor):
        return TensorBatches(data, batch_size=batch_size)
    if isinstance(data, tuple):
        if len(data) == 1 and isinstance(data[0], Tensor):
            return TensorBatches(data[0], batch_size=batch_size)
        if len(data) == 2 and isinstance(data[0], Tensor) and isinstance(data[1], Tensor):
            return TensorBatches(data[0], data[1], batch_size=batch_size)
        raise TypeError("a tuple passed to as_loader must be (x,) or (x, y) of tensors")
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)):
        return data
    raise TypeError(f"as_loader expects a DataLoader, a tensor or a tuple (x, y) of tensors, got {type(data).__name__}")


_INPUT_KEYS = ("image", "input", "x")
_LABEL_KEYS = ("label", "target", "y")


def split_batch(batch: Any) -> tuple[Any, Optional[Any]]:
    """Split a batch into ``(x, y)``; ``y`` is None when the batch has no labels.

    Accepts a tensor ``x``; a tuple or list ``(x,)`` or ``(x, y, ...)`` (extra
    items are ignored); or a mapping with an input under ``image`` / ``input`` /
    ``x`` and optionally a label under ``label`` / ``target`` / ``y``.
    """
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        input_key = next((key for key in _INPUT_KEYS if key in batch), None)
        if input_key is None:
            raise KeyError(f"batch dict has none of the input keys {_INPUT_KEYS}; its keys are {list(batch)}")
        label_key = next((key for key in _LABEL_KEYS if key in batch), None)
        return batch[input_key], (batch[label_key] if label_key is not None else None)
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        if len(batch) == 0:
            raise ValueError("empty batch")
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise TypeError(f"cannot split a batch of type {type(batch).__name__}")


def check_finite(x: Any, where: str = "data", error: type = DataError) -> None:
    """Raise ``error`` (default :class:`~spikecast.errors.DataError`) if tensor ``x`` holds NaN or
    Inf values.

    ``where`` names the data in the one-line message (e.g. ``"validation batch 3"``).
    Non-tensors and integer tensors pass.
    """
    if not isinstance(x, Tensor) or not (x.is_floating_point() or x.is_complex()):
        return
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    nan = int(torch.isnan(x).sum())
    inf = int(x.numel() - int(finite.sum()) - nan)
    bad = " and ".join(part for part in (f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else "") if part)
    raise error(f"{where} holds {bad} value(s) out of {x.numel()}: clean or re-normalise the data first")


_CHANNEL_LAYERS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)


def _is_lazy(module: torch.nn.Module) -> bool:
    return any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in module.parameters(recurse=False))


class input_channel_guard:
    """Context manager: the first weighted layer (Conv1d/2d/3d or Linear) that ``model`` runs
    checks that its input has the channels (features, for Linear) it expects, and raises a
    one-line :class:`~spikecast.errors.DataError` naming expected vs got otherwise - instead of
    torch's shape error from deep inside the model.

    Only the first such layer that runs is checked, and only once; the hooks are removed on
    exit, leaving ``model`` as it was. A model whose first layer receives the wrong channels
    would fail anyway, so the check never rejects data the model accepts::

        with input_channel_guard(ann, "validation data"):
            ann(x)
    """

    def __init__(self, model: torch.nn.Module, where: str = "the data") -> None:
        self.model, self.where = model, where
        self.handles: list[Any] = []
        self.done = False

    def _hook(self, name: str, layer: torch.nn.Module):
        def check(module: torch.nn.Module, args: tuple) -> None:
            if self.done:
                return
            self.done = True
            self.close()
            if not args or not isinstance(args[0], Tensor) or _is_lazy(layer):
                return
            x = args[0]
            where = f"{self.where} does not fit the model: its first layer {name or '<top>'} ({type(layer).__name__})"
            if isinstance(layer, torch.nn.Linear):
                if x.dim() and x.shape[-1] != layer.in_features:
                    raise DataError(f"{where} expects {layer.in_features} input features, got {x.shape[-1]} "
                                    f"(input shape {tuple(x.shape)})")
                return
            spatial = layer.weight.dim() - 2
            if x.dim() not in (spatial + 1, spatial + 2):
                raise DataError(f"{where} takes [N, C, {', '.join('HWD'[:spatial] if spatial > 1 else 'L')}] inputs, "
                                f"got shape {tuple(x.shape)}")
            got = x.shape[-spatial - 1]
            if got != layer.in_channels:
                raise DataError(f"{where} expects {layer.in_channels} input channels, got {got} "
                                f"(input shape {tuple(x.shape)})")

        return check

    def __enter__(self) -> "input_channel_guard":
        for name, module in self.model.named_modules():
            if isinstance(module, _CHANNEL_LAYERS):
                self.handles.append(module.register_forward_pre_hook(self._hook(name, module)))
        return self

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __exit__(self, *exc: Any) -> None:
        self.close()


def augment_batch(x: torch.Tensor, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding by 1/8 of the height (4 px at 32 px), random horizontal flip."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # [n, h]
    cols = (dx[:, None] + torch.arange(w)[None, :])  # [n, w]
    idx = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        flipped = torch.rand(n, generator=generator) < 0.5
        out[flipped] = out[flipped].flip(-1)
    return out.contiguous()
