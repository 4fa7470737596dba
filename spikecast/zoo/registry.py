"""A small timm-like registry of the ANNs spikecast ships with.

Families register builder functions under explicit names::

    @register_model("cifar10-resnet20", default_checkpoint="models/cifar10/resnet20.th")
    def cifar10_resnet20(num_classes: int = 10) -> nn.Module: ...

and users build them with :func:`create_model`, which returns the model in eval
mode, optionally with its pretrained weights.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

from torch import nn

from ..errors import CheckpointNotFoundError, UnknownModelError
from ..paths import SHARED_ENV_VAR, shared_dir
from .checkpoint import load_checkpoint

__all__ = ["ModelInfo", "register_model", "list_models", "is_model", "model_info", "create_model"]

#: Mean / std of the torchvision-style ImageNet normalisation, also used by the CIFAR-10 ResNets.
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

BuilderT = TypeVar("BuilderT", bound=Callable[..., nn.Module])
#: Fills a freshly built model with its pretrained weights (for weights not in the shared folder).
PretrainedLoader = Callable[[nn.Module], nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model expects and where its pretrained weights live.

    Attributes:
        name: registry name, e.g. ``"cifar10-resnet20"``.
        input_size: ``(channels, height, width)`` of one input.
        num_classes: number of output logits.
        mean: per-channel mean subtracted from inputs scaled to [0, 1].
        std: per-channel std the centred inputs are divided by.
        default_checkpoint: weight file relative to :func:`~spikecast.paths.shared_dir`,
            or None when the model has no shared pretrained file.
        dataset: name of the dataset the pretrained weights were trained on.
    """

    name: str
    input_size: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 10
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    default_checkpoint: Optional[str] = None
    dataset: str = "cifar10"

    def default_checkpoint_path(self) -> Optional[Path]:
        """Absolute path of :attr:`default_checkpoint` under the current shared folder, or None."""
        return None if self.default_checkpoint is None else shared_dir() / self.default_checkpoint


@dataclass(frozen=True)
class _RegistryEntry:
    builder: Callable[..., nn.Module]
    info: ModelInfo
    pretrained_loader: Optional[PretrainedLoader] = field(default=None)


_REGISTRY: dict[str, _RegistryEntry] = {}


def register_model(
    name: str,
    *,
    pretrained_loader: Optional[PretrainedLoader] = None,
    **info_fields: Any,
) -> Callable[[BuilderT], BuilderT]:
    """Decorator registering a model builder under ``name``.

    Args:
        name: registry name (e.g. ``"cifar10-resnet20"``); must be unused.
        pretrained_loader: optional function loading pretrained weights into a
            built model, for weights that are not a file in the shared folder
            (e.g. trained on first use and cached).  Takes precedence over
            ``default_checkpoint``.
        **info_fields: the other :class:`ModelInfo` fields (``input_size``,
            ``num_classes``, ``mean``, ``std``, ``default_checkpoint``, ``dataset``).

    The builder is returned unchanged, so it stays callable directly.
    """
    info = ModelInfo(name=name, **info_fields)

    def decorator(builder: BuilderT) -> BuilderT:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].builder.__qualname__})")
        _REGISTRY[name] = _RegistryEntry(builder=builder, info=info, pretrained_loader=pretrained_loader)
        return builder

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models matching the shell-style ``pattern``."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern))


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _REGISTRY


def close_matches(name: str, candidates: list[str], n: int = 5) -> list[str]:
    """Up to ``n`` of ``candidates`` that look like ``name`` (typos, substrings), best first."""
    lowered = {candidate.lower(): candidate for candidate in candidates}
    found = [lowered[m] for m in difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.6)]
    needle = str(name).lower()
    if len(needle) >= 3:
        found += [c for c in candidates if needle in c.lower() and c not in found]
    return found[:n]


def _entry(name: str) -> _RegistryEntry:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        close = close_matches(name, list_models()) if isinstance(name, str) else []
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownModelError(f"unknown model {name!r}; {hint}registered models: {', '.join(list_models())}") \
            from None


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of registered model ``name`` (ValueError if unknown)."""
    return _entry(name).info


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint: Optional[str | Path] = None,
    *,
    trust_checkpoint: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build registered model ``name`` and return it in eval mode.

    Args:
        name: a name from :func:`list_models`.
        pretrained: load the model's default pretrained weights (from the shared
            folder, or its own pretrained loader).
        checkpoint: path of a weight file to load instead (strictly).
        trust_checkpoint: allow ``checkpoint`` to be a torch file that pickles arbitrary Python
            objects, which runs code from the file (see :func:`~spikecast.zoo.load_checkpoint`).
            Only for files you trust.
        **kwargs: passed to the model's builder (e.g. ``num_classes``).

    Raises:
        ValueError: unknown name (:class:`~spikecast.errors.UnknownModelError`), both
            ``pretrained`` and ``checkpoint`` given, no pretrained weights for this model, or
            weights that do not fit / cannot be read (:class:`~spikecast.errors.CheckpointError`).
        FileNotFoundError: the weight file is missing (the message says how to
            point ``SPIKECAST_SHARED`` at the shared folder).
    """
    entry = _entry(name)
    if pretrained and checkpoint is not None:
        raise ValueError("give either pretrained=True or checkpoint=<path>, not both")
    model = entry.builder(**kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, strict=True, trust_checkpoint=trust_checkpoint, model_name=name)
    elif pretrained:
        if entry.pretrained_loader is not None:
            model = entry.pretrained_loader(model)
        else:
            weights_path = entry.info.default_checkpoint_path()
            if weights_path is None:
                raise ValueError(f"model {name!r} has no pretrained weights; pass checkpoint=<path>")
            if not weights_path.is_file():
                raise CheckpointNotFoundError(
                    f"pretrained weights for {name!r} not found at {weights_path}. Set the "
                    f"{SHARED_ENV_VAR} environment variable to the shared folder holding "
                    f"{entry.info.default_checkpoint} (currently resolves to {shared_dir()})."
                )
            load_checkpoint(model, weights_path, strict=True, model_name=name)
    return model.eval()
