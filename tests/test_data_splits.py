"""The CIFAR-10 validation split: carved from the training folder, disjoint, fixed, class balanced."""

from __future__ import annotations

import ast
from pathlib import Path

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


def _leading_slices_of_cifar_sets(source: str) -> list[int]:
    """Lines of ``source`` that take ``v[:n]`` of a variable bound from ``cifar10(...)`` /
    ``cifar10_tensors(...)`` (directly or by tuple unpacking), unless ``n`` is a constant <= 2 (an
    example input for tracing) or the line says ``# timing only``."""
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if called in ("cifar10", "cifar10_tensors"):
                for target in node.targets:
                    elts = target.elts if isinstance(target, ast.Tuple) else [target]
                    names.update(e.id for e in elts if isinstance(e, ast.Name))
    lines = source.splitlines()
    return sorted({node.lineno for node in ast.walk(tree)
                   if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
                   and node.value.id in names and isinstance(node.slice, ast.Slice) and node.slice.lower is None
                   and node.slice.upper is not None
                   and not (isinstance(node.slice.upper, ast.Constant) and node.slice.upper.value <= 2)
                   and "# timing only" not in lines[node.lineno - 1]})


def test_benchmarks_score_on_class_balanced_subsets():
    # Without a limit the splits come in class order: the validation split's first 2,000 images
    # are four classes, and choices made on them were once made on airplanes, cars, birds and cats.
    # A subset must come from the loader's class-balanced ``limit``.
    assert _leading_slices_of_cifar_sets("x, y = cifar10('val')\nx, y = x[:2000], y[:2000]\n") == [2]
    assert _leading_slices_of_cifar_sets("x, y = cifar10('val', 2000)\nx[:8]  # timing only\nx[:2]\n") == []
    found = {path.name: lines for path in sorted((Path(__file__).parents[1] / "benchmarks").glob("*.py"))
             if (lines := _leading_slices_of_cifar_sets(path.read_text()))}
    assert found == {}, f"leading slices of a class-ordered CIFAR split (use cifar10(split, limit)): {found}"
