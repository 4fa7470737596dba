"""The calibration set: any calibration source read once into a bounded sample chosen by content.

Every statistic, threshold and the layer-wise correction are computed from one
:class:`CalibrationSet`, held in memory, so the user's data is iterated exactly once whatever it
is - a tensor, a list of batches, ``(x, y)`` batches, a DataLoader (shuffling, augmenting, with
worker processes), a generator, an IterableDataset or a map-style Dataset.

The sample is **independent of order and batching**: of all the images read it keeps the
``max_images`` with the smallest hash of their content (bottom-k by ``blake2b`` of the image's
float32 bytes; equal hashes broken by the bytes), stored in that canonical order. A shuffled
DataLoader over an image folder and a tensor of the same images therefore give the same sample,
hence the same thresholds and the same correction. The sample is class-agnostic (labels are
dropped) and bounded: at most ``max_images`` images (plus the batch being read) are held at any
time. The counts of what was read (images, batches) are kept with it.

Bad data fails loudly with one line: NaN / Inf values (how many, which batch), an empty source,
images whose shape or dtype changes between batches.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from spikecast.data import as_loader, check_finite, split_batch
from spikecast.errors import CalibrationError
from spikecast.progress import progress_bar

#: Images kept when the caller does not say (enough for thresholds and the correction; the user
#: can ask for more).
DEFAULT_MAX_IMAGES = 512
#: Batch size of the passes over the in-memory sample (fixed: the results do not depend on the
#: batching of the user's data), and of a Dataset given without a DataLoader.
PASS_BATCH_SIZE = 256

__all__ = ["CalibrationSet", "DEFAULT_MAX_IMAGES", "PASS_BATCH_SIZE", "as_calibration_set", "calibration_set",
           "image_digest", "iterate_inputs"]


def iterate_inputs(data) -> Iterator[torch.Tensor]:
    """The input tensors of ``data`` (a DataLoader / iterable of batches / tensor / ``(x, y)``),
    labels dropped. One pass over ``data``; for calibration use :func:`calibration_set`."""
    for batch in as_loader(data):
        x, _ = split_batch(batch)
        yield x


def image_digest(image: torch.Tensor) -> bytes:
    """The content hash that orders images: blake2b (16 bytes) of the float32 contiguous bytes."""
    return hashlib.blake2b(_image_bytes(image), digest_size=16).digest()


def _image_bytes(image: torch.Tensor) -> bytes:
    return image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()


@dataclass
class CalibrationSet:
    """A bounded sample of calibration images, in canonical (content-hash) order.

    ``images``: ``[n, *shape]`` on the CPU, ``n <= max_images``. ``images_read`` /
    ``batches_read``: what was read from the source to choose them (the source was iterated once).
    """

    images: torch.Tensor
    images_read: int
    batches_read: int
    max_images: int
    digests: list = field(default_factory=list, repr=False)  # per kept image, ascending

    def __post_init__(self):
        if len(self.images) == 0:
            raise CalibrationError("the calibration data is empty: it yielded no images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one image."""
        return tuple(int(s) for s in self.images.shape[1:])

    def batches(self, batch_size: int = PASS_BATCH_SIZE) -> Iterator[torch.Tensor]:
        """The images in canonical order, ``batch_size`` at a time (views, no copies)."""
        for start in range(0, len(self), batch_size):
            yield self.images[start:start + batch_size]

    def num_batches(self, batch_size: int = PASS_BATCH_SIZE) -> int:
        return -(-len(self) // batch_size)

    def input_scale(self) -> float:
        """The largest ``|x|`` of the sample (the range of a Poisson input code)."""
        return float(self.images.abs().max())

    def to_dict(self) -> dict:
        return {"images": len(self), "images_read": self.images_read, "batches_read": self.batches_read,
                "max_images": self.max_images, "shape": list(self.shape)}

    def subset(self, max_images: int) -> "CalibrationSet":
        """The bottom-``max_images`` of this set (what reading the source with that bound gives)."""
        if max_images >= len(self):
            return self
        return CalibrationSet(self.images[:max_images].clone(), self.images_read, self.batches_read, int(max_images),
                              list(self.digests[:max_images]))


def _source_batches(data) -> Any:
    """What to iterate: a Dataset (map-style or iterable) yields single samples, so it is batched
    by a DataLoader; everything else goes through :func:`spikecast.data.as_loader`."""
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        return DataLoader(data, batch_size=PASS_BATCH_SIZE, shuffle=False)
    try:
        return as_loader(data, batch_size=PASS_BATCH_SIZE)
    except TypeError as exc:
        raise CalibrationError(f"cannot read calibration data of type {type(data).__name__}: pass a tensor, "
                               "batches, (x, y) batches, a DataLoader, a Dataset or a generator") from exc


def _sort_key_order(digests: list, images: list) -> list[int]:
    """Indices ordering ``images`` by (digest, bytes): the bytes are read only for equal digests."""
    order = sorted(range(len(digests)), key=lambda i: digests[i])
    out, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and digests[order[end]] == digests[order[start]]:
            end += 1
        group = order[start:end]
        if len(group) > 1:
            group = sorted(group, key=lambda i: _image_bytes(images[i]))
        out.extend(group)
        start = end
    return out


def calibration_set(data, max_images: Optional[int] = DEFAULT_MAX_IMAGES, *, progress: bool = False
                    ) -> CalibrationSet:
    """Read ``data`` once into a :class:`CalibrationSet` of at most ``max_images`` images.

    Args:
        data: a tensor ``x``; a tuple ``(x,)`` / ``(x, y)`` of tensors; an iterable of batches
            (``x``, ``(x, y, ...)`` or dicts with an ``image`` / ``input`` / ``x`` entry) such as a
            list, a generator or a DataLoader; a Dataset (batched here); or a CalibrationSet
            (returned, cut to ``max_images``). Labels are dropped.
        max_images: how many images to keep (``None``: all of them). Of the images read, the ones
            with the smallest content hash are kept, so the result does not depend on the order
            or batching of ``data``.
        progress: show a progress bar while reading.

    Raises:
        CalibrationError: empty data, NaN / Inf values, images of different shapes or dtypes, a
            batch that is not a tensor of images.
    """
    if max_images is not None and (isinstance(max_images, bool) or int(max_images) != max_images or max_images < 1):
        raise ValueError(f"max_images must be a positive integer or None, got {max_images!r}")
    if isinstance(data, CalibrationSet):
        return data if max_images is None else data.subset(int(max_images))
    source = _source_batches(data)
    limit = None if max_images is None else int(max_images)
    kept: list[torch.Tensor] = []  # one tensor per kept image (its own storage)
    digests: list[bytes] = []
    worst = None  # index of the largest kept key, once the sample is full
    images_read = batches_read = 0
    shape = dtype = None
    try:
        total = len(source)
    except TypeError:  # generators, IterableDatasets without a length
        total = None
    with progress_bar("calibration: reading images", total, progress) as bar:
        for batch in source:
            x, _ = split_batch(batch)
            if not isinstance(x, torch.Tensor):
                raise CalibrationError(f"calibration batch {batches_read} is a {type(x).__name__}, not a tensor "
                                       "of images")
            if x.dim() < 1:
                raise CalibrationError(f"calibration batch {batches_read} is a scalar: a batch of images "
                                       "[N, ...] was expected")
            x = x.detach()
            if shape is None and x.shape[0] > 0:
                shape, dtype = tuple(x.shape[1:]), x.dtype
            elif x.shape[0] > 0 and tuple(x.shape[1:]) != shape:
                raise CalibrationError(f"calibration batch {batches_read} has images of shape {tuple(x.shape[1:])}, "
                                       f"the earlier ones {shape}: every calibration image must have the same shape")
            elif x.shape[0] > 0 and x.dtype != dtype:
                raise CalibrationError(f"calibration batch {batches_read} is {x.dtype}, the earlier ones {dtype}: "
                                       "every calibration batch must have the same dtype")
            check_finite(x, f"calibration batch {batches_read}", CalibrationError)
            x = x.cpu()
            for i in range(int(x.shape[0])):
                digest = image_digest(x[i])
                if limit is None or len(kept) < limit:
                    kept.append(x[i].clone())
                    digests.append(digest)
                    worst = None
                    continue
                if worst is None:
                    worst = _sort_key_order(digests, kept)[-1]
                if digest > digests[worst] or (digest == digests[worst]
                                               and _image_bytes(x[i]) >= _image_bytes(kept[worst])):
                    continue  # not among the smallest
                kept[worst], digests[worst] = x[i].clone(), digest
                worst = None
            images_read += int(x.shape[0])
            batches_read += 1
            bar.advance()
            del x, batch
    if not kept:
        raise CalibrationError("the calibration data is empty: it yielded no images")
    order = _sort_key_order(digests, kept)
    images = torch.empty((len(kept), *shape), dtype=dtype)
    for j, i in enumerate(order):
        images[j] = kept[i]
        kept[i] = None  # free as we go: never two copies of the sample
    return CalibrationSet(images, images_read, batches_read, limit if limit is not None else len(images),
                          [digests[i] for i in order])


def as_calibration_set(data, max_images: Optional[int] = DEFAULT_MAX_IMAGES) -> CalibrationSet:
    """``data`` as a calibration set: a CalibrationSet as it is, a tensor as all of its images
    (in canonical order), any other source read once with ``max_images``."""
    if isinstance(data, CalibrationSet):
        return data
    if isinstance(data, torch.Tensor):
        return calibration_set(data, max_images=None)
    return calibration_set(data, max_images=max_images)
