"""Data specs: one short string names a dataset, for the CLI and for library users.

==========================  =====================================================================
spec                        data
==========================  =====================================================================
``cifar10[:train|val|test]`` CIFAR-10 from the shared JPEG folder (``spikecast.data.cifar10_tensors``;
                            ``val`` is 5,000 images carved from the training folder, ``train`` the rest)
``digits[:train|test]``     scikit-learn's bundled 8x8 digits (no download), the fixed 1,347 / 450
                            split of the ``digits-cnn`` zoo model
``path/to/folder``          a folder of class subfolders (torchvision ImageFolder); when it holds
                            ``train/`` and ``test/`` folders, those are the splits
``path/to/file.pt``         a tensor ``x``, a pair ``(x, y)`` or a dict with ``x`` / ``y`` keys
==========================  =====================================================================

:func:`resolve_data` returns ``(x, y)`` tensors (``y`` is None for unlabelled data); :func:`open_data`
returns the same images as :class:`ImageData`, read batch by batch (image folders are decoded by
``DataLoader`` workers as they are used, never all in memory). A ``limit``
keeps a deterministic class-balanced subset. Named datasets have a train and a test split; the
split suffix of a spec picks the default split, and an explicit ``split`` argument overrides it
(calibration always asks for ``"train"``). A folder without ``train/``/``test/`` and a ``.pt``
file have one split, used for both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from spikecast.data import CIFAR10_SPLITS, TensorBatches, balanced_indices, cifar10_tensors
from spikecast.errors import DataError, DataNotFoundError, one_line
from spikecast.zoo.checkpoint import load_error_detail, refused_pickle_object
from spikecast.zoo.digits import digits_tensors
from spikecast.zoo.registry import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DataSpec", "FolderImages", "ImageData", "open_data", "parse_data_spec", "resolve_data", "DATASETS",
           "SPLITS"]

DATASETS = ("cifar10", "digits")
SPLITS = ("train", "test")
_SPEC_HELP = ("'cifar10', 'cifar10:test', 'digits', 'digits:test', a folder of class subfolders, "
              "or a .pt file holding a tensor or (x, y)")


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec. ``kind``: ``"cifar10"``, ``"digits"``, ``"folder"`` or ``"tensor"``."""

    kind: str
    split: Optional[str] = None  # split named in the spec ("cifar10:test" -> "test")
    path: Optional[Path] = None  # folder / file for "folder" and "tensor"

    @property
    def name(self) -> str:
        if self.path is not None:
            return str(self.path)
        return self.kind if self.split is None else f"{self.kind}:{self.split}"

    @property
    def has_splits(self) -> bool:
        """True when train and test are different images (named datasets, folders with train/ test/)."""
        if self.kind in DATASETS:
            return True
        return self.kind == "folder" and all((self.path / s).is_dir() for s in SPLITS)


def parse_data_spec(spec: Union[str, Path, DataSpec]) -> DataSpec:
    """Parse a data spec string (see the module docstring); raises ValueError / FileNotFoundError
    with a message that lists the accepted forms."""
    if isinstance(spec, DataSpec):
        return spec
    text = str(spec).strip()
    if not text:
        raise DataError(f"empty data spec; expected {_SPEC_HELP}")
    head, sep, tail = text.partition(":")
    if head.lower() in DATASETS:
        split = tail.lower() if sep else None
        allowed = CIFAR10_SPLITS if head.lower() == "cifar10" else SPLITS
        if split is not None and split not in allowed:
            raise DataError(f"unknown split {tail!r} in data spec {text!r}: use "
                            + " or ".join(f"{head}:{s}" for s in allowed))
        return DataSpec(head.lower(), split)
    path = Path(text).expanduser()
    if path.is_dir():
        return DataSpec("folder", None, path)
    if path.suffix.lower() in (".pt", ".pth"):
        if not path.is_file():
            raise DataNotFoundError(f"data file not found: {text}")
        return DataSpec("tensor", None, path)
    if path.exists():
        raise DataError(f"cannot read data from {path}: expected {_SPEC_HELP}")
    looks_like_path = any(c in text for c in "/\\.") or text.startswith("~")
    if looks_like_path:
        raise DataNotFoundError(f"data folder or file not found: {text} (expected {_SPEC_HELP})")
    raise DataError(f"unknown data spec {text!r}: expected {_SPEC_HELP}")


def resolve_data(spec: Union[str, Path, DataSpec], split: Optional[str] = None, limit: Optional[int] = None, *,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 size: Optional[int] = None, channels: Optional[int] = None) -> tuple[Tensor, Optional[Tensor]]:
    """Load the data named by ``spec`` as ``(x, y)`` tensors (``y`` None when unlabelled).

    Args:
        spec: a data spec string (see the module docstring) or a :class:`DataSpec`.
        split: ``"train"`` or ``"test"``; default the spec's own suffix, else ``"test"``.
        limit: keep at most this many samples, a deterministic class-balanced subset when labelled
            (the first ``limit`` otherwise).
        mean, std, size, channels: image folders only - normalisation (default: ImageNet's),
            resize of the shorter side then centre crop to ``size`` (default: keep the images'
            size; they must then all be the same), and 1 (grayscale) or 3 (RGB) channels
            (default: ``len(mean)`` when given, else 3).
    """
    parsed = parse_data_spec(spec)
    split = _check_split(parsed, split, limit)
    if parsed.kind == "cifar10":
        x, y = cifar10_tensors(split, limit=limit)
        return x, y
    if parsed.kind == "digits":
        x, y = digits_tensors(split)
        return _limit(x, y, limit)
    if parsed.kind == "folder":
        images = _folder_images(parsed.path, split, limit, mean, std, size, channels)
        return ImageData(parsed.name, folder=images).tensors()
    return _limit(*_tensor_file(parsed.path), limit)


def _check_split(parsed: DataSpec, split: Optional[str], limit: Optional[int]) -> str:
    """The split to read (default: the spec's own, else ``"test"``), checked with ``limit``."""
    if split is None:
        split = parsed.split or "test"
    allowed = CIFAR10_SPLITS if parsed.kind == "cifar10" else SPLITS
    if split not in allowed:
        raise DataError(f"split must be one of {', '.join(repr(s) for s in allowed)} for {parsed.name}, got {split!r}")
    if limit is not None and limit < 1:
        raise DataError(f"the number of images must be at least 1, got {limit}")
    return split


def _limit(x: Tensor, y: Optional[Tensor], limit: Optional[int]) -> tuple[Tensor, Optional[Tensor]]:
    if limit is None or limit >= len(x):
        return x, y
    if y is None:
        return x[:limit], None
    index = torch.from_numpy(balanced_indices(y.numpy(), limit=limit))
    return x[index], y[index]


def _tensor_file(path: Path) -> tuple[Tensor, Optional[Tensor]]:
    if not path.is_file():
        raise DataNotFoundError(f"data file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # data files never run pickled code
    except Exception as exc:  # unpickling errors come in many types
        refused = refused_pickle_object(exc)
        if refused is not None:
            raise DataError(f"cannot load {path} as tensors: it pickles Python objects ({refused}), which data "
                            "files may not (reading them runs code from the file); save plain tensors, a tuple "
                            "(x, y) or a dict of tensors") from None
        raise DataError(f"cannot load {path} as tensors: truncated, corrupt or not a torch.save file "
                        f"({load_error_detail(exc)})") from None
    if isinstance(obj, dict):
        x = next((obj[k] for k in ("x", "input", "inputs", "image", "images", "data") if k in obj), None)
        y = next((obj[k] for k in ("y", "label", "labels", "target", "targets") if k in obj), None)
    elif isinstance(obj, Tensor):
        x, y = obj, None
    elif isinstance(obj, (tuple, list)) and 1 <= len(obj) <= 2:
        x, y = obj[0], (obj[1] if len(obj) == 2 else None)
    else:
        x, y = None, None
    if not isinstance(x, Tensor) or (y is not None and not isinstance(y, Tensor)):
        raise DataError(f"{path} must hold a tensor x, a pair (x, y) of tensors or a dict with 'x' (and 'y'); "
                         f"found {type(obj).__name__}")
    if x.dim() < 2 or len(x) == 0:
        raise DataError(f"{path}: x must be a non-empty batch [N, ...], got shape {tuple(x.shape)}")
    if y is not None:
        if y.dim() != 1 or len(y) != len(x):
            raise DataError(f"{path}: y must be N integer labels for the N={len(x)} inputs, got shape "
                             f"{tuple(y.shape)}")
        y = y.long()
    return x.float(), y


class FolderImages(Dataset):
    """The images of a class-subfolder folder, each read, resized and normalised when it is asked for:
    the dataset a ``DataLoader`` with workers decodes while the network runs. Items: ``(x, label)``."""

    def __init__(self, folder: Path, files: Sequence[str], labels: np.ndarray, mean: Sequence[float],
                 std: Sequence[float], size: Optional[int], channels: int) -> None:
        self.folder = folder
        self.files = list(files)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.size = size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image  # Pillow comes with torchvision; loaded only where folders are read

        path = self.files[i]
        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
                if self.size is not None:
                    img = _resize_center_crop(img, int(self.size))
                array = np.array(img, dtype=np.uint8, copy=True)
        except OSError as exc:  # PIL's UnidentifiedImageError is an OSError; so are truncated files
            raise DataError(f"cannot read image {path}: {one_line(exc, 200)}") from None
        x = torch.from_numpy(array).float().div_(255.0)
        x = x.unsqueeze(0) if self.channels == 1 else x.permute(2, 0, 1)
        return ((x - self.mean) / self.std).contiguous(), int(self.labels[i])

    def collate(self, items: list) -> tuple[Tensor, Tensor]:
        """Stack a batch; images of different sizes are a :class:`DataError` that says what to pass."""
        shapes = sorted({tuple(x.shape[1:]) for x, _ in items})
        if len(shapes) > 1:
            raise DataError(f"images in {self.folder} have different sizes {shapes[:3]}...: pass a size "
                            "(CLI: --size) to resize them")
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)


class ImageData:
    """The images of a data spec, read batch by batch: image folders are decoded by ``DataLoader``
    worker processes while the network runs, so an ImageNet-size evaluation set is never held in
    memory; tensors (CIFAR-10, digits, .pt files) are sliced. ``len`` is the number of images,
    ``labelled`` whether they have labels."""

    def __init__(self, name: str, *, tensors: Optional[tuple[Tensor, Optional[Tensor]]] = None,
                 folder: Optional[FolderImages] = None) -> None:
        if (tensors is None) == (folder is None):
            raise ValueError("ImageData holds either tensors or a folder")
        self.name = name
        self._tensors = tensors
        self._folder = folder

    def __len__(self) -> int:
        return len(self._folder) if self._folder is not None else len(self._tensors[0])

    @property
    def labelled(self) -> bool:
        return self._folder is not None or self._tensors[1] is not None

    def head(self, n: int) -> Tensor:
        """The first ``n`` images as one tensor (shape checks, tracing)."""
        if self._tensors is not None:
            return self._tensors[0][:n]
        return self._folder.collate([self._folder[i] for i in range(min(n, len(self._folder)))])[0]

    def batches(self, batch_size: int = 256, workers: Optional[int] = None,
                indices: Optional[Sequence[int]] = None) -> Iterable:
        """Re-iterable ``(x, y)`` batches (``x`` when unlabelled) in order; ``indices``: only those images
        (a torchrun shard). ``workers``: decoding processes for image folders (default: up to 4 when
        there is more than one batch; 0 decodes in this process)."""
        if batch_size < 1:
            raise DataError(f"the batch size must be at least 1, got {batch_size}")
        if workers is not None and workers < 0:
            raise DataError(f"the number of data workers must be 0 or more, got {workers}")
        if self._tensors is not None:
            x, y = self._tensors
            if indices is not None:
                index = torch.as_tensor(list(indices), dtype=torch.long)
                x, y = x[index], (None if y is None else y[index])
            return TensorBatches(x, y, batch_size=batch_size)
        dataset = self._folder if indices is None else Subset(self._folder, list(indices))
        if workers is None:
            workers = min(4, os.cpu_count() or 1) if len(dataset) > batch_size else 0
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                            collate_fn=self._folder.collate)
        return _WorkerErrors(loader)

    def tensors(self) -> tuple[Tensor, Optional[Tensor]]:
        """All the images in memory, ``(x, y)``."""
        if self._tensors is not None:
            return self._tensors
        xs, ys = zip(*self.batches(batch_size=256, workers=0))
        return torch.cat(xs), torch.cat(ys)


class _WorkerErrors:
    """Iterate a DataLoader; a :class:`DataError` raised in a worker process comes back as the one line
    it said (DataLoader re-raises it with the worker's whole traceback in the message)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        try:
            yield from self.loader
        except DataError as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            last = lines[-1] if lines else str(exc)
            head, sep, message = last.partition(": ")
            raise type(exc)(message if sep and head.endswith("Error") else last) from None


def open_data(spec: Union[str, Path, DataSpec], split: Optional[str] = None, limit: Optional[int] = None, *,
              mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
              size: Optional[int] = None, channels: Optional[int] = None) -> ImageData:
    """The data named by ``spec`` as :class:`ImageData`, read batch by batch (arguments as
    :func:`resolve_data`). Image folders are listed here and decoded as they are iterated."""
    parsed = parse_data_spec(spec)
    if parsed.kind != "folder":
        return ImageData(parsed.name, tensors=resolve_data(parsed, split, limit))
    split = _check_split(parsed, split, limit)
    return ImageData(parsed.name, folder=_folder_images(parsed.path, split, limit, mean, std, size, channels))


def _folder_images(root: Path, split: str, limit: Optional[int], mean, std, size, channels) -> FolderImages:
    from torchvision.datasets import ImageFolder  # torchvision is imported only where folders are read

    folder = root / split if all((root / s).is_dir() for s in SPLITS) else root
    mean = tuple(float(m) for m in (mean if mean is not None else IMAGENET_MEAN))
    std = tuple(float(s) for s in (std if std is not None else IMAGENET_STD))
    channels = channels or (len(mean) if len(mean) in (1, 3) else 3)
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise DataError(f"mean {mean} / std {std} do not fit {channels}-channel images")
    if not folder.is_dir():
        raise DataNotFoundError(f"data folder not found: {folder}")
    try:
        dataset = ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as exc:  # RuntimeError: older torchvision, no images
        raise DataNotFoundError(f"{folder}: not an image folder with class subfolders ({one_line(exc, 200)})") \
            from None
    labels = np.asarray(dataset.targets, dtype=np.int64)
    index = balanced_indices(labels, limit=limit) if limit is not None else np.arange(len(labels))
    return FolderImages(folder, [dataset.samples[i][0] for i in index], labels[index], mean, std, size, channels)


def _resize_center_crop(img, size: int):
    from PIL import Image

    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img
