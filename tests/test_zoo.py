"""Tests of the model zoo, checkpoint loading, paths and data helpers."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spikecast.data import as_loader, balanced_indices, cifar10_root, cifar10_tensors, split_batch
from spikecast.paths import cache_dir, shared_dir
from spikecast.zoo import (
    ModelInfo,
    create_model,
    is_model,
    list_models,
    load_checkpoint,
    load_state_dict,
    model_info,
)
from spikecast.zoo.digits import DigitsCNN, digits_tensors, evaluate_accuracy, train_digits_cnn
from spikecast.zoo.cifar_modern import WEIGHTS_VERSION


def require_shared_file(relative_path: str) -> Path:
    """Path of a file in the shared folder; skip the test when it is absent."""
    path = shared_dir() / relative_path
    if not path.exists():
        pytest.skip(f"shared weights not found at {path}: set SPIKECAST_SHARED")
    return path


def require_cifar10_test_images() -> Path:
    path = cifar10_root() / "test"
    if not path.is_dir():
        pytest.skip(f"shared CIFAR-10 images not found at {path}: set SPIKECAST_SHARED")
    return path


@torch.inference_mode()
def top1_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    predictions = torch.cat([model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)])
    return (predictions == y).float().mean().item()


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 3)


# --------------------------------------------------------------------------- registry


def test_registry_lists_the_families() -> None:
    assert list_models("cifar10-*") == [
        "cifar10-convnext-nano",
        "cifar10-densenet-small",
        "cifar10-googlenet-small",
        "cifar10-resnet20",
        "cifar10-resnet32",
        "cifar10-resnet44",
        "cifar10-resnet56",
        "cifar10-vgg-small",
        "cifar10-vit-tiny",
    ]
    assert "digits-cnn" in list_models()
    assert is_model("cifar10-resnet20") and not is_model("resnet20")
    info = model_info("cifar10-resnet20")
    assert isinstance(info, ModelInfo)
    assert info.input_size == (3, 32, 32) and info.num_classes == 10
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    assert info.default_checkpoint == "models/cifar10/resnet20.th"
    assert model_info("cifar10-resnet56").default_checkpoint is None
    assert model_info("digits-cnn").input_size == (1, 8, 8)


@pytest.mark.parametrize(("name", "num_blocks", "num_params"), [
    ("cifar10-resnet20", 3, 269_722),
    ("cifar10-resnet32", 5, 464_154),
    ("cifar10-resnet44", 7, 658_586),
    ("cifar10-resnet56", 9, 853_018),
])
def test_cifar_resnet_shapes(name: str, num_blocks: int, num_params: int) -> None:
    model = create_model(name)
    assert not model.training
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == num_blocks
    assert sum(p.numel() for p in model.parameters()) == num_params
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_create_model_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        create_model("no-such-model")
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model("cifar10-resnet56", pretrained=True)
    with pytest.raises(ValueError, match="not both"):
        create_model("cifar10-resnet20", pretrained=True, checkpoint=tmp_path / "w.pth")
    monkeypatch.setenv("SPIKECAST_SHARED", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="SPIKECAST_SHARED"):
        create_model("cifar10-resnet20", pretrained=True)


@pytest.mark.parametrize(("name", "num_params", "pools"), [
    ("cifar10-vgg-small", 814_570, 3),
    ("cifar10-googlenet-small", 168_850, 7),  # 5 inception pool branches, 2 between stages
    ("cifar10-densenet-small", 95_626, 0),
])
def test_cifar_classic_models(name: str, num_params: int, pools: int, monkeypatch: pytest.MonkeyPatch,
                              tmp_path: Path) -> None:
    info = model_info(name)
    assert info.input_size == (3, 32, 32) and info.num_classes == 10 and info.dataset == "cifar10"
    model = create_model(name)
    assert not model.training and sum(p.numel() for p in model.parameters()) == num_params
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == pools
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    monkeypatch.setenv("SPIKECAST_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=rf"{name}-{WEIGHTS_VERSION}\.safetensors.*train_cifar_zoo\.py {name}"):
        create_model(name, pretrained=True)


@pytest.mark.parametrize(("name", "num_params"), [
    ("cifar10-vit-tiny", 460_906),
    ("cifar10-convnext-nano", 569_210),
])
def test_cifar_timm_models(name: str, num_params: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    info = model_info(name)
    assert info.input_size == (3, 32, 32) and info.num_classes == 10 and info.dataset == "cifar10"
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    torch.manual_seed(0)
    model = create_model(name)
    assert type(model).__module__.startswith("timm.") and not model.training
    assert sum(p.numel() for p in model.parameters()) == num_params
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)

    monkeypatch.setenv("SPIKECAST_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=rf"{name}-{WEIGHTS_VERSION}\.safetensors.*benchmarks/train_cifar_zoo\.py {name}"):
        create_model(name, pretrained=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "cache" / f"{name}-{WEIGHTS_VERSION}.safetensors"))
    loaded = create_model(name, pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


# --------------------------------------------------------------------------- shared CIFAR-10 weights


@pytest.mark.parametrize("depth", [20, 32])
def test_shared_checkpoints_load_strictly(depth: int) -> None:
    path = require_shared_file(f"models/cifar10/resnet{depth}.th")
    raw_keys = {key.removeprefix("module.") for key in torch.load(path, map_location="cpu")["state_dict"]}
    model = create_model(f"cifar10-resnet{depth}")
    model_keys = {key for key in model.state_dict() if not key.endswith("num_batches_tracked")}
    assert raw_keys == model_keys
    loaded = create_model(f"cifar10-resnet{depth}", pretrained=True)
    assert torch.equal(loaded.conv1.weight, load_state_dict(path)["conv1.weight"])
    assert torch.equal(create_model(f"cifar10-resnet{depth}", checkpoint=path).linear.bias, loaded.linear.bias)


def test_resnet20_accuracy_on_balanced_subset() -> None:
    require_shared_file("models/cifar10/resnet20.th")
    require_cifar10_test_images()
    x, y = cifar10_tensors("test", limit=1000)
    accuracy = top1_accuracy(create_model("cifar10-resnet20", pretrained=True), x, y)
    # 80.4 % measured here; 81.03 % on the full 10,000 JPEG test images.
    assert 0.75 <= accuracy <= 0.88


# --------------------------------------------------------------------------- checkpoint loader


def test_load_state_dict_unwraps_nested_dicts_and_prefixes(tmp_path: Path) -> None:
    reference = TinyNet().state_dict()
    prefixed = {f"module._orig_mod.{key}": value for key, value in reference.items()}
    nested = {"epoch": 3, "model": {"bad": torch.zeros(1)}, "state_dict": prefixed, "best_prec1": 90.0}
    torch.save(nested, tmp_path / "nested.th")
    loaded = load_state_dict(tmp_path / "nested.th")
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[key], reference[key]) for key in reference)

    torch.save({"model": {"model_state_dict": prefixed}}, tmp_path / "deep.pt")
    assert load_state_dict(tmp_path / "deep.pt").keys() == reference.keys()
    torch.save({"state_dict_ema": reference, "optimizer": {}}, tmp_path / "ema.bin")
    assert load_state_dict(tmp_path / "ema.bin").keys() == reference.keys()


def test_load_state_dict_reads_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    reference = TinyNet().state_dict()
    save_file({f"module.{k}": v.contiguous() for k, v in reference.items()}, str(tmp_path / "w.safetensors"))
    model = load_checkpoint(TinyNet(), tmp_path / "w.safetensors")
    assert all(torch.equal(model.state_dict()[key], reference[key]) for key in reference)


def test_pickled_objects_need_trust_checkpoint(tmp_path: Path) -> None:
    """A file that pickles non-tensor objects is refused unless the caller trusts it explicitly."""
    from spikecast.errors import UntrustedCheckpointError

    reference = TinyNet().state_dict()
    torch.save({"state_dict": reference, "args": argparse.Namespace(lr=0.1)}, tmp_path / "with_args.pth")
    with pytest.raises(UntrustedCheckpointError, match=r"with_args\.pth.*argparse\.Namespace.*trust_checkpoint=True"):
        load_state_dict(tmp_path / "with_args.pth")
    loaded = load_state_dict(tmp_path / "with_args.pth", trust_checkpoint=True)
    assert loaded.keys() == reference.keys()


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_state_dict(tmp_path / "missing.pth")

    state_dict = TinyNet().state_dict()
    del state_dict["fc.bias"]
    state_dict["extra.weight"] = torch.zeros(1)
    torch.save(state_dict, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"(?s)partial\.pth.*fc\.bias.*extra\.weight"):
        load_checkpoint(TinyNet(), tmp_path / "partial.pth")
    load_checkpoint(TinyNet(), tmp_path / "partial.pth", strict=False)

    state_dict = TinyNet().state_dict()
    state_dict["fc.weight"] = torch.zeros(4, 2)
    torch.save(state_dict, tmp_path / "wrong_shape.pth")
    with pytest.raises(ValueError, match="fc.weight"):
        load_checkpoint(TinyNet(), tmp_path / "wrong_shape.pth", strict=False)


# --------------------------------------------------------------------------- digits CNN


def test_digits_split_is_fixed() -> None:
    x_train, y_train = digits_tensors("train")
    x_test, y_test = digits_tensors("test")
    assert x_train.shape == (1347, 1, 8, 8) and x_test.shape == (450, 1, 8, 8)
    assert x_test.min() >= -1 and x_test.max() <= 1
    assert torch.equal(y_test, digits_tensors("test")[1])
    assert y_test.bincount().min() >= 43  # stratified: 43-46 per class


def test_digits_cnn_trains(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = train_digits_cnn()
    accuracy = evaluate_accuracy(model, *digits_tensors("test"))
    assert accuracy >= 0.95, f"digits CNN reached only {accuracy:.3f} test accuracy"

    monkeypatch.setenv("SPIKECAST_CACHE", str(tmp_path / "cache"))
    pretrained = create_model("digits-cnn", pretrained=True)  # trains and caches
    assert (tmp_path / "cache" / "digits-cnn-v1.safetensors").is_file()
    assert not list((tmp_path / "cache").glob("*.tmp"))
    assert isinstance(pretrained, DigitsCNN) and not pretrained.training
    reloaded = create_model("digits-cnn", pretrained=True)  # reads the cache
    x_test, _ = digits_tensors("test")
    with torch.inference_mode():
        assert torch.equal(pretrained(x_test), reloaded(x_test))
    assert evaluate_accuracy(reloaded, *digits_tensors("test")) >= 0.95


# --------------------------------------------------------------------------- paths and data helpers


def test_paths_follow_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPIKECAST_SHARED", str(tmp_path / "shared"))
    assert shared_dir() == tmp_path / "shared"
    monkeypatch.setenv("SPIKECAST_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache" and cache_dir().is_dir()


def test_balanced_indices() -> None:
    labels = np.repeat(np.arange(3), [4, 2, 3])  # class sizes 4, 2, 3
    assert balanced_indices(labels).tolist() == [0, 4, 6, 1, 5, 7, 2, 8, 3]
    assert balanced_indices(labels, limit=4).tolist() == [0, 4, 6, 1]
    assert balanced_indices(labels, per_class=1).tolist() == [0, 4, 6]


def test_cifar10_balanced_limit() -> None:
    require_cifar10_test_images()
    x, y = cifar10_tensors("test", limit=512)
    assert x.shape == (512, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    counts = y.bincount(minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 512
    x_per_class, y_per_class = cifar10_tensors("test", per_class=20)
    assert y_per_class.bincount().tolist() == [20] * 10
    assert torch.equal(x_per_class, cifar10_tensors("test", limit=200)[0])


def test_cifar10_missing_folder_is_explained(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="SPIKECAST_SHARED"):
        cifar10_tensors("test", root=tmp_path)


def test_as_loader_forms() -> None:
    x, y = torch.randn(10, 3), torch.arange(10)
    x_batches = list(as_loader(x, batch_size=4))
    assert [len(batch) for batch in x_batches] == [4, 4, 2]
    assert torch.equal(torch.cat(x_batches), x)
    pairs = as_loader((x, y), batch_size=4)
    assert len(pairs) == 3
    assert torch.equal(torch.cat([batch_y for _, batch_y in pairs]), y)
    assert torch.equal(torch.cat([batch_y for _, batch_y in pairs]), y)  # re-iterable
    data_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    assert as_loader(data_loader) is data_loader
    with pytest.raises(TypeError):
        as_loader((x, y, y))


def test_split_batch_forms() -> None:
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    assert split_batch(x) == (x, None)
    assert split_batch((x,)) == (x, None)
    assert split_batch((x, y)) == (x, y)
    assert split_batch([x, y]) == (x, y)
    assert split_batch({"image": x, "label": y}) == (x, y)
    assert split_batch({"input": x, "target": y}) == (x, y)
    assert split_batch({"x": x}) == (x, None)
    with pytest.raises(KeyError):
        split_batch({"pixels": x})
