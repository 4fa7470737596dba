"""Bad input: each case gets a clear one-line error that names the problem, and nothing is lost.

One test per case: broken / untrusted / ill-fitting checkpoints, unknown models, missing data,
devices that do not exist, impossible timesteps, NaN data, wrong channel counts, and the
caller's ANN left as it was found by ``validate``.
"""

from __future__ import annotations

import os
import pathlib
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from spikecast import errors
from spikecast.paths import shared_dir

REPO = Path(__file__).resolve().parent.parent


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    """The exception's message, asserted to be a single line."""
    message = str(excinfo.value)
    assert "\n" not in message, f"multi-line error message: {message!r}"
    assert message.strip(), "empty error message"
    return message


def shared_weights(name: str) -> Path:
    path = shared_dir() / "models" / "cifar10" / name
    if not path.is_file():
        pytest.skip(f"shared weights not found at {path}: set SPIKECAST_SHARED")
    return path


class Marker:
    """Pickles as "touch <path>": loading it runs code, which must only happen when trusted."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def tiny_ann() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


@pytest.fixture(scope="module")
def ann_snn():
    import spikecast

    ann = tiny_ann()
    snn = spikecast.convert(ann, calib=torch.rand(16, 3, 8, 8), correction="none", progress=False)
    return ann, snn


@pytest.fixture
def data():
    torch.manual_seed(1)
    return torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))


# ----------------------------------------------------------------------------- checkpoints


def test_truncated_checkpoint(tmp_path):
    from spikecast.zoo import create_model

    blob = shared_weights("resnet20.th").read_bytes()
    path = tmp_path / "half.th"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(errors.CorruptCheckpointError, match=r"half\.th is truncated or corrupt") as excinfo:
        create_model("cifar10-resnet20", checkpoint=path)
    one_line(excinfo)


def test_garbage_checkpoint(tmp_path):
    from spikecast.zoo import load_state_dict

    path = tmp_path / "noise.pth"
    noise = bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist())
    path.write_bytes(noise)
    with pytest.raises(errors.CorruptCheckpointError, match=r"noise\.pth is truncated or corrupt") as excinfo:
        load_state_dict(path)
    one_line(excinfo)
    # even when trusted: a file that is not a checkpoint stays an error, not a traceback
    with pytest.raises(errors.CorruptCheckpointError, match=r"noise\.pth"):
        load_state_dict(path, trust_checkpoint=True)


def test_garbage_that_starts_like_a_pickle(tmp_path):
    from spikecast.zoo import load_state_dict

    path = tmp_path / "noise.pt"
    path.write_bytes(b"\x80\x02" + bytes(range(253, 0, -1)) * 8)
    with pytest.raises(errors.CorruptCheckpointError, match=r"noise\.pt is truncated or corrupt") as excinfo:
        load_state_dict(path)
    assert "In PyTorch 2.6" not in one_line(excinfo)  # torch's generic preamble is dropped


def test_empty_checkpoint(tmp_path):
    from spikecast.zoo import load_state_dict

    path = tmp_path / "empty.th"
    path.write_bytes(b"")
    with pytest.raises(errors.CorruptCheckpointError, match=r"empty\.th is empty \(0 bytes\)") as excinfo:
        load_state_dict(path)
    one_line(excinfo)


def test_corrupt_safetensors(tmp_path):
    from safetensors.torch import save_file

    from spikecast.zoo import load_state_dict

    path = tmp_path / "w.safetensors"
    save_file({"weight": torch.zeros(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(errors.CorruptCheckpointError, match=r"w\.safetensors is truncated or corrupt") as excinfo:
        load_state_dict(path)
    one_line(excinfo)


def test_missing_checkpoint(tmp_path):
    from spikecast.models import resolve_model

    with pytest.raises(FileNotFoundError, match=r"checkpoint file not found: .*nowhere\.th") as excinfo:
        resolve_model(tiny_ann(), checkpoint=tmp_path / "nowhere.th")
    assert isinstance(excinfo.value, errors.SpikecastError)
    one_line(excinfo)


def test_folder_given_as_checkpoint(tmp_path):
    from spikecast.zoo import load_state_dict

    with pytest.raises(FileNotFoundError, match="is a folder, not a weight file") as excinfo:
        load_state_dict(tmp_path)
    one_line(excinfo)


def test_wrong_architecture_checkpoint():
    from spikecast.models import resolve_model

    with pytest.raises(errors.CheckpointMismatchError,
                       match=r"resnet32\.th does not fit cifar10-resnet20: 60 unexpected keys \(layer1\.3\.") as excinfo:
        resolve_model("zoo:cifar10-resnet20", checkpoint=shared_weights("resnet32.th"))
    one_line(excinfo)
    with pytest.raises(errors.CheckpointMismatchError,
                       match=r"resnet20\.th does not fit cifar10-resnet32: 60 missing keys \(layer1\.3\."):
        resolve_model("zoo:cifar10-resnet32", checkpoint=shared_weights("resnet20.th"))


def test_state_dict_of_another_model(tmp_path):
    from spikecast.zoo import create_model

    path = tmp_path / "tiny.pth"
    torch.save(tiny_ann().state_dict(), path)
    with pytest.raises(errors.CheckpointMismatchError, match=r"tiny\.pth does not fit digits-cnn: .*missing keys "
                       r".*unexpected keys .*no key in common") as excinfo:
        create_model("digits-cnn", checkpoint=path)
    one_line(excinfo)


def test_shape_mismatch_leaves_the_model_unchanged(tmp_path):
    from spikecast.models import resolve_model

    other = tiny_ann()
    other[3] = nn.Linear(4 * 6 * 6, 7)  # 7 classes instead of 5
    path = tmp_path / "seven.pth"
    torch.save({"state_dict": other.state_dict(), "epoch": 3}, path)
    model = tiny_ann()
    model[0].weight.data.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(errors.CheckpointMismatchError,
                       match=r"seven\.pth does not fit Sequential: 2 shape mismatches \(3\.weight: file \(7, 144\) "
                             r"vs model \(5, 144\), 3\.bias") as excinfo:
        resolve_model(model, checkpoint=path)
    one_line(excinfo)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a failed load changed weights"


def test_pickled_code_is_not_run_without_trust(tmp_path):
    from spikecast.zoo import load_state_dict

    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": tiny_ann().state_dict(), "payload": Marker(marker)}, path)
    with pytest.raises(errors.UntrustedCheckpointError,
                       match=r"evil\.pth holds pickled Python objects .*trust_checkpoint=True "
                             r"\(CLI: --trust-checkpoint\) only if you trust this file") as excinfo:
        load_state_dict(path)
    one_line(excinfo)
    assert not marker.exists(), "loading an untrusted checkpoint ran code from it"

    from spikecast.models import resolve_model

    with pytest.raises(errors.UntrustedCheckpointError):
        resolve_model(tiny_ann(), checkpoint=path)
    assert not marker.exists()

    # explicitly trusted: the file is read in full (here: its payload runs)
    model, _ = resolve_model(tiny_ann(), checkpoint=path, trust_checkpoint=True)
    assert marker.exists()
    assert isinstance(model, nn.Sequential)


def test_pickled_code_in_a_data_file_is_not_run(tmp_path):
    from spikecast.datasets import resolve_data

    marker = tmp_path / "code-ran"
    path = tmp_path / "data.pt"
    torch.save({"x": torch.rand(4, 3, 8, 8), "y": Marker(marker)}, path)
    with pytest.raises(errors.DataError, match=r"data\.pt as tensors: it pickles Python objects") as excinfo:
        resolve_data(str(path))
    one_line(excinfo)
    assert not marker.exists()


def test_only_the_trusted_path_unpickles_arbitrary_objects():
    offenders = []
    for file in sorted((REPO / "spikecast").rglob("*.py")):
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            if re.search(r"weights_only\s*=\s*False", line):
                offenders.append(f"{file.relative_to(REPO)}:{number}")
    assert offenders == [o for o in offenders if o.startswith("spikecast/zoo/checkpoint.py:")], offenders
    assert len(offenders) == 1, offenders


# ----------------------------------------------------------------------------- models and data


def test_unknown_zoo_model():
    from spikecast.models import resolve_model

    with pytest.raises(errors.UnknownModelError, match=r"unknown zoo model 'nope'.*available: .*cifar10-resnet20") \
            as excinfo:
        resolve_model("zoo:nope")
    one_line(excinfo)
    with pytest.raises(ValueError, match=r"did you mean zoo:cifar10-resnet20\?"):
        resolve_model("zoo:resnet20")


def test_unknown_timm_model():
    from spikecast.models import resolve_model

    with pytest.raises(errors.UnknownModelError,
                       match=r"'resnet19' is neither a zoo model .* nor a timm model\. Did you mean: .*resnet18") \
            as excinfo:
        resolve_model("resnet19")
    one_line(excinfo)


def test_unknown_model_in_the_registry():
    from spikecast.zoo import create_model

    with pytest.raises(errors.UnknownModelError, match=r"unknown model 'digits-cn'; did you mean digits-cnn\?") \
            as excinfo:
        create_model("digits-cn")
    one_line(excinfo)


def test_missing_data_folder(tmp_path):
    from spikecast.datasets import resolve_data

    missing = tmp_path / "no" / "such" / "images"
    with pytest.raises(errors.DataNotFoundError, match=re.escape(str(missing))) as excinfo:
        resolve_data(str(missing))
    assert isinstance(excinfo.value, FileNotFoundError)
    one_line(excinfo)


def test_shared_folder_pointing_nowhere(tmp_path, monkeypatch):
    from spikecast.datasets import resolve_data
    from spikecast.zoo import create_model

    nowhere = tmp_path / "nowhere"
    monkeypatch.setenv("SPIKECAST_SHARED", str(nowhere))
    with pytest.raises(FileNotFoundError, match=re.escape(str(nowhere / "data" / "cifar10-jpeg" / "test"))) \
            as excinfo:
        resolve_data("cifar10:test", limit=4)
    one_line(excinfo)
    with pytest.raises(FileNotFoundError, match=re.escape(str(nowhere / "models" / "cifar10" / "resnet20.th"))) \
            as excinfo:
        create_model("cifar10-resnet20", pretrained=True)
    one_line(excinfo)


# ----------------------------------------------------------------------------- devices


def test_nonexistent_device():
    from spikecast.devices import resolve_device

    with pytest.raises(errors.DeviceError, match=r"unknown device 'nonsense'") as excinfo:
        resolve_device("nonsense")
    one_line(excinfo)
    absent = "cuda:99" if torch.cuda.is_available() else "cuda"
    with pytest.raises(errors.DeviceError, match=rf"device '{absent}' is not available") as excinfo:
        resolve_device(absent)
    one_line(excinfo)
    with pytest.raises(errors.DeviceError, match="holds no data"):
        resolve_device("meta")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")


def test_validate_with_nonexistent_device(ann_snn, data):
    import spikecast

    ann, snn = ann_snn
    with pytest.raises(errors.DeviceError, match=r"unknown device 'nonsense'") as excinfo:
        spikecast.validate(ann, snn, data, timesteps=[2], progress=False, device="nonsense")
    one_line(excinfo)


# ----------------------------------------------------------------------------- timesteps


@pytest.mark.parametrize("timesteps", [[], [0], [-1, 4], 0, [2.5]])
def test_validate_rejects_impossible_timesteps(ann_snn, data, timesteps):
    import spikecast

    ann, snn = ann_snn
    with pytest.raises(ValueError, match=r"timesteps") as excinfo:
        spikecast.validate(ann, snn, data, timesteps=timesteps, progress=False)
    assert isinstance(excinfo.value, errors.InvalidArgumentError)
    one_line(excinfo)


@pytest.mark.parametrize("timesteps", [0, -3, [], [0, 4]])
def test_simulate_rejects_impossible_timesteps(ann_snn, data, timesteps):
    _, snn = ann_snn
    with pytest.raises(ValueError, match="timesteps") as excinfo:
        snn.simulate(data[0], timesteps)
    one_line(excinfo)


# ----------------------------------------------------------------------------- data meets the model


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_validate_rejects_non_finite_data(ann_snn, data, bad):
    import spikecast

    ann, snn = ann_snn
    x, y = data
    x = x.clone()
    x[3, 1, 2, 2] = bad
    kind = "NaN" if bad != bad else "Inf"
    with pytest.raises(errors.DataError, match=rf"validation data \(batch 0\) holds 1 {kind} value") as excinfo:
        spikecast.validate(ann, snn, (x, y), timesteps=[2], progress=False)
    one_line(excinfo)


def test_validate_rejects_wrong_channel_count(ann_snn, data):
    import spikecast

    ann, snn = ann_snn
    gray = data[0][:, :1]  # 1-channel images into a 3-channel model
    with pytest.raises(errors.DataError, match=r"expects 3 input channels, got 1") as excinfo:
        spikecast.validate(ann, snn, (gray, data[1]), timesteps=[2], progress=False)
    one_line(excinfo)
    assert all(not m._forward_pre_hooks for m in ann.modules()), "the channel check left hooks behind"


def test_validate_leaves_the_ann_as_found(ann_snn, data):
    import spikecast

    ann, snn = ann_snn
    params = list(ann.parameters())
    device = params[0].device
    ann.train()
    ann[1].eval()  # mixed modes must come back exactly
    modes = [m.training for m in ann.modules()]
    result = spikecast.validate(ann, snn, data, timesteps=[1, 4], progress=False)
    assert result.samples == 8
    assert [m.training for m in ann.modules()] == modes
    assert all(p.device == device for p in ann.parameters())
    assert all(a is b for a, b in zip(params, ann.parameters()))
    # ... also when validation fails half-way
    x = data[0].clone()
    x[-1] = float("nan")
    batches = [(data[0][:4], data[1][:4]), (x[4:], data[1][4:])]
    with pytest.raises(errors.DataError, match=r"batch 1"):
        spikecast.validate(ann, snn, batches, timesteps=[2], progress=False)
    assert [m.training for m in ann.modules()] == modes
    ann.eval()


def test_build_report_leaves_the_ann_as_found(ann_snn, data):
    from spikecast.reporting.report import build_report

    ann, snn = ann_snn
    ann.train()
    ann[1].eval()
    modes = [m.training for m in ann.modules()]
    report = build_report(ann, snn, data, timesteps=[1, 2], activity_images=4, early_exit=None, progress=False)
    assert report.activity is not None
    assert [m.training for m in ann.modules()] == modes
    ann.eval()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to move the ANN to")
def test_validate_moves_the_ann_back(ann_snn, data):
    import copy

    import spikecast

    ann, snn = ann_snn
    gpu_snn = copy.deepcopy(snn).to("cuda")
    ann = copy.deepcopy(ann).cpu()
    spikecast.validate(ann, gpu_snn, data, timesteps=[2], progress=False)
    assert all(p.device.type == "cpu" for p in ann.parameters())
    cpu_snn = copy.deepcopy(snn).cpu()
    spikecast.validate(ann, cpu_snn, data, timesteps=[2], progress=False, device="cuda")
    assert all(p.device.type == "cpu" for p in ann.parameters())
    assert all(p.device.type == "cpu" for p in cpu_snn.parameters())


# ----------------------------------------------------------------------------- reports


def test_report_leaves_the_matplotlib_backend_alone(ann_snn, data, tmp_path, monkeypatch):
    import matplotlib

    import spikecast
    from spikecast.reporting.report import write_report

    ann, snn = ann_snn
    result = spikecast.validate(ann, snn, data, timesteps=[1, 2], progress=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("write_report switched the matplotlib backend")

    monkeypatch.setattr(matplotlib, "use", forbidden)
    backend = matplotlib.rcParams._get_backend_or_none() if hasattr(matplotlib.rcParams, "_get_backend_or_none") \
        else None
    paths = write_report(result, tmp_path / "report")
    assert paths["accuracy_vs_timesteps.png"].read_bytes().startswith(b"\x89PNG")
    if backend is not None:
        assert matplotlib.rcParams._get_backend_or_none() == backend
    assert not list((tmp_path / "report").glob("*.tmp"))


def test_report_into_a_file_path_is_a_clear_error(ann_snn, data, tmp_path):
    import spikecast
    from spikecast.reporting.report import write_report

    ann, snn = ann_snn
    result = spikecast.validate(ann, snn, data, timesteps=[1], progress=False)
    target = tmp_path / "taken"
    target.write_text("keep me")
    with pytest.raises(NotADirectoryError, match="is an existing file") as excinfo:
        write_report(result, target)
    one_line(excinfo)
    assert target.read_text() == "keep me"


def test_errors_are_builtin_subclasses():
    """Callers that catch ValueError / FileNotFoundError keep working."""
    assert issubclass(errors.CheckpointError, ValueError)
    assert issubclass(errors.CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(errors.DataNotFoundError, FileNotFoundError)
    for cls in (errors.UnknownModelError, errors.DataError, errors.DeviceError, errors.InvalidArgumentError):
        assert issubclass(cls, ValueError) and issubclass(cls, errors.SpikecastError)
    assert os.linesep not in errors.one_line("a\n  b\tc")


# ----------------------------------------------------------------------------- calibration data (convert)


def _thresholds(snn) -> list[torch.Tensor]:
    return [n.threshold.clone() for n in snn.neurons().values()]


def test_convert_rejects_wrong_channel_count():
    import spikecast

    with pytest.raises(errors.DataError, match=r"expects 3 input channels, got 1") as excinfo:
        spikecast.convert(tiny_ann(), calib=torch.rand(16, 1, 8, 8), correction="none", progress=False)
    assert "calibration data" in one_line(excinfo)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_convert_rejects_non_finite_calibration_data(bad):
    import spikecast

    x = torch.rand(16, 3, 8, 8)
    x[3, 0, 1, 1] = bad
    with pytest.raises(errors.CalibrationError, match=r"NaN|Inf") as excinfo:
        spikecast.convert(tiny_ann(), calib=x, correction="none", progress=False)
    one_line(excinfo)


@pytest.mark.parametrize("empty", [torch.empty(0, 3, 8, 8), [], iter(())])
def test_convert_rejects_empty_calibration_data(empty):
    import spikecast

    with pytest.raises(errors.CalibrationError, match="calibration data is empty") as excinfo:
        spikecast.convert(tiny_ann(), calib=empty, correction="none", progress=False)
    one_line(excinfo)


def test_convert_without_calibration_data():
    import spikecast

    with pytest.raises(errors.CalibrationError, match="needs calibration data") as excinfo:
        spikecast.convert(tiny_ann(), progress=False)
    one_line(excinfo)


def test_generator_and_shuffling_loader_give_the_tensor_thresholds():
    import spikecast
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(2)
    x = torch.rand(48, 3, 8, 8)
    ann = tiny_ann()
    reference = _thresholds(spikecast.convert(ann, calib=x, correction="none", progress=False))
    generator = (x[i:i + 10] for i in range(0, len(x), 10))  # its first batch must not be eaten
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=7, shuffle=True)
    for source in (generator, loader):
        got = _thresholds(spikecast.convert(ann, calib=source, correction="none", progress=False))
        assert all(torch.equal(a, b) for a, b in zip(reference, got))


@pytest.mark.parametrize("timesteps", [0, -3, 2.5])
def test_convert_rejects_impossible_timesteps(timesteps):
    import spikecast

    with pytest.raises((ValueError, errors.SpikecastError), match="timesteps") as excinfo:
        spikecast.convert(tiny_ann(), calib=torch.rand(8, 3, 8, 8), timesteps=timesteps, progress=False)
    one_line(excinfo)


def test_convert_with_nonexistent_device():
    import spikecast

    with pytest.raises(errors.DeviceError, match="unknown device 'nonsense'") as excinfo:
        spikecast.convert(tiny_ann(), calib=torch.rand(8, 3, 8, 8), device="nonsense", progress=False)
    one_line(excinfo)


def test_convert_rejects_unknown_settings():
    import spikecast

    with pytest.raises(TypeError, match="unknown recipe setting") as excinfo:
        spikecast.convert(tiny_ann(), calib=torch.rand(8, 3, 8, 8), thresholdz="max", progress=False)
    one_line(excinfo)
    with pytest.raises(ValueError, match="unknown thresholds method 'nope'") as excinfo:
        spikecast.convert(tiny_ann(), calib=torch.rand(8, 3, 8, 8), thresholds="nope", progress=False)
    one_line(excinfo)


def test_inspect_refuses_pickled_checkpoint_without_trust(tmp_path):
    import spikecast

    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": tiny_ann().state_dict(), "payload": Marker(marker)}, path)
    with pytest.raises(errors.UntrustedCheckpointError, match="trust_checkpoint") as excinfo:
        spikecast.inspect(tiny_ann(), input_shape=(3, 8, 8), checkpoint=path)
    one_line(excinfo)
    assert not marker.exists()
