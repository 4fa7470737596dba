"""The CIFAR-10 validation split: carved from the training folder, disjoint, fixed, class balanced."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikecast.data import (VAL_PER_CLASS, cifar10_root, cifar10_split_indices, cifar10_tensors, cifar10_uint8,
                            normalise_uint8)
from spikecast.datasets import resolve_data
from spikecast.errors import DataError


def test_split_indices_are_disjoint_balanced_and_fixed():
    labels = np.repeat(np.arange(10), 700)  # any folder: the split depends only on the labels' order
    val = cifar10_split_indices("val", labels)
    train = cifar10_split_indices("train", labels)
    assert len(np.intersect1d(val, train)) == 0 and len(val) + len(train) == len(labels)
    assert np.bincount(labels[val]).tolist() == [VAL_PER_CLASS] * 10
    assert np.array_equal(val, cifar10_split_indices("val", labels))  # the seed is fixed
    assert np.all(np.diff(val) > 0) and not np.array_equal(val[:VAL_PER_CLASS], np.arange(VAL_PER_CLASS))  # drawn
    with pytest.raises(ValueError, match="split"):
        cifar10_split_indices("test", labels)


def test_shared_cifar10_splits():
    if not (cifar10_root() / "train").is_dir():
        pytest.skip(f"shared CIFAR-10 not found at {cifar10_root()}: set SPIKECAST_SHARED")
    x_val, y_val = cifar10_tensors("val", limit=100)
    x_train, _ = cifar10_tensors("train", limit=100)
    assert x_val.shape == (100, 3, 32, 32) and torch.bincount(y_val).tolist() == [10] * 10
    # no validation image is a calibration / training image (compared pixel for pixel)
    val_all, _ = cifar10_uint8("val")
    assert len(val_all) == 5000
    val_keys = {bytes(v.numpy().tobytes()) for v in val_all}
    train_u8, _ = cifar10_uint8("train", limit=512)
    assert not any(bytes(t.numpy().tobytes()) in val_keys for t in train_u8)
    assert torch.equal(normalise_uint8(train_u8[:100]), x_train)
    x, y = resolve_data("cifar10:val", limit=20)
    assert torch.equal(x, x_val[:20]) and torch.equal(y, y_val[:20])
    with pytest.raises(DataError, match="cifar10:val"):
        resolve_data("cifar10:valid")
    with pytest.raises(DataError, match="split"):
        resolve_data("digits", split="val")
