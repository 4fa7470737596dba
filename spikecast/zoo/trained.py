"""Weights that spikecast trains itself (not shipped): where they are cached and how the zoo loads them.

``benchmarks/train_cifar_zoo.py <name>`` trains a registered CIFAR-10 family model on the
45,000-image ``train`` split and writes ``cache_dir() / "<name>-v2.safetensors"``; the loader made by
:func:`pretrained_loader` reads that file for ``create_model(name, pretrained=True)`` or raises a
FileNotFoundError naming the command.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..paths import CACHE_ENV_VAR, cache_dir
from .checkpoint import load_checkpoint

__all__ = ["WEIGHTS_VERSION", "TRAIN_SCRIPT", "weights_path", "pretrained_loader"]

#: v2: trained on the 45,000-image "train" split (v1 used all 50,000, validation images included)
WEIGHTS_VERSION = "v2"
TRAIN_SCRIPT = "benchmarks/train_cifar_zoo.py"


def weights_path(name: str) -> Path:
    """Where the trained weights of zoo model ``name`` are cached: ``cache_dir() / "<name>-v2.safetensors"``."""
    return cache_dir() / f"{name}-{WEIGHTS_VERSION}.safetensors"


def pretrained_loader(name: str):
    """The ``pretrained_loader`` of a registered model whose weights spikecast trains."""
    def load(model: nn.Module) -> nn.Module:
        path = weights_path(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained weights for {name!r} not found at {path}: they are trained by spikecast, "
                f"not shipped. Train them with `python {TRAIN_SCRIPT} {name}` (about 30 minutes on 2 CPU "
                f"cores), or set {CACHE_ENV_VAR} to the cache folder that holds {path.name}."
            )
        return load_checkpoint(model, path, strict=True)

    return load
