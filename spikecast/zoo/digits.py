"""A small CNN for scikit-learn's bundled 8x8 digits dataset (no download needed).

The dataset has 1,797 grayscale 8x8 images with pixel values 0..16.  Inputs are
scaled to [0, 1] (``/ 16``) then normalised with mean 0.5, std 0.5, i.e. mapped
to [-1, 1].  :func:`digits_tensors` gives a fixed stratified 75 / 25 split
(1,347 train / 450 test images), and :func:`train_digits_cnn` trains
:class:`DigitsCNN` on it in a few seconds on a CPU.

``create_model("digits-cnn", pretrained=True)`` loads trained weights cached at
``cache_dir() / "digits-cnn-v1.safetensors"``, training and caching them on
first use.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ..paths import cache_dir
from .checkpoint import load_checkpoint
from .registry import register_model

__all__ = [
    "DigitsCNN",
    "digits_tensors",
    "train_digits_cnn",
    "evaluate_accuracy",
    "digits_cnn_weights_path",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "DIGITS_CNN_V1_TEST_ACCURACY",
]

DIGITS_MEAN: tuple[float] = (0.5,)
DIGITS_STD: tuple[float] = (0.5,)
#: Fixed split of the 1,797 images: stratified, 25 % test, ``random_state=0``.
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0
#: Default training schedule of :func:`train_digits_cnn` (weights version 1).
DEFAULT_EPOCHS = 20
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 2e-3
#: Test accuracy reached by ``train_digits_cnn()`` with its defaults (seed 0), measured on CPU.
DIGITS_CNN_V1_TEST_ACCURACY = 447 / 450  # 0.9933
WEIGHTS_FILE_NAME = "digits-cnn-v1.safetensors"


class DigitsCNN(nn.Module):
    """conv(1->16)-BN-ReLU, conv(16->32)-BN-ReLU, avg-pool 2, flatten, linear(512->64)-ReLU, linear(64->10)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@lru_cache(maxsize=None)
def _digits_split() -> dict[str, tuple[Tensor, Tensor]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div_(16.0)
    images = (images - DIGITS_MEAN[0]) / DIGITS_STD[0]
    images = images.unsqueeze(1).contiguous()  # [N, 1, 8, 8]
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(
        range(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=digits.target,
    )
    train_index = torch.tensor(sorted(train_idx))
    test_index = torch.tensor(sorted(test_idx))
    return {
        "train": (images[train_index], labels[train_index]),
        "test": (images[test_index], labels[test_index]),
    }


def digits_tensors(split: Literal["train", "test"] = "test") -> tuple[Tensor, Tensor]:
    """Normalised digits images ``[N, 1, 8, 8]`` float32 and labels ``[N]`` int64.

    The split is fixed and deterministic: 1,347 train / 450 test images,
    stratified by class.  Returns clones, so callers may modify them.
    """
    splits = _digits_split()
    if split not in splits:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = splits[split]
    return images.clone(), labels.clone()


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``images`` / ``labels``."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    return correct / max(len(labels), 1)


def train_digits_cnn(
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
) -> DigitsCNN:
    """Train a :class:`DigitsCNN` on the digits train split with Adam; return it in eval mode.

    Deterministic for a given seed (initialisation and shuffling are seeded).
    With the defaults it takes a few seconds on a CPU and reaches
    :data:`DIGITS_CNN_V1_TEST_ACCURACY` on the test split.
    """
    train_images, train_labels = digits_tensors("train")
    torch.manual_seed(seed)
    shuffle_generator = torch.Generator().manual_seed(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_labels), generator=shuffle_generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(train_images[batch]), train_labels[batch])
            loss.backward()
            optimizer.step()
        scheduler.step()
    return model.eval()


def digits_cnn_weights_path() -> Path:
    """Where the trained ``digits-cnn`` weights are cached."""
    return cache_dir() / WEIGHTS_FILE_NAME


def _save_atomically(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Write ``model``'s state dict as safetensors to a temp file next to ``path``, then rename it into place."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    file_descriptor, temp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(file_descriptor)
    try:
        save_file(state_dict, temp_name, metadata=metadata)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _load_pretrained_digits_cnn(model: nn.Module) -> nn.Module:
    """Fill ``model`` with the cached trained weights, training and caching them first if absent."""
    weights_path = digits_cnn_weights_path()
    if not weights_path.is_file():
        trained = train_digits_cnn()
        test_accuracy = evaluate_accuracy(trained, *digits_tensors("test"))
        _save_atomically(
            trained,
            weights_path,
            metadata={
                "model": "digits-cnn",
                "epochs": str(DEFAULT_EPOCHS),
                "seed": "0",
                "test_accuracy": f"{test_accuracy:.4f}",
            },
        )
    return load_checkpoint(model, weights_path, strict=True)


@register_model(
    "digits-cnn",
    pretrained_loader=_load_pretrained_digits_cnn,
    input_size=(1, 8, 8),
    num_classes=10,
    mean=DIGITS_MEAN,
    std=DIGITS_STD,
    default_checkpoint=None,
    dataset="sklearn-digits",
)
def digits_cnn(num_classes: int = 10) -> DigitsCNN:
    """Small CNN for 8x8 digits; ``pretrained=True`` trains (once, cached) and loads its weights."""
    return DigitsCNN(num_classes=num_classes)
