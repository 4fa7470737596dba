"""Tests of the command line (``spikecast.cli``), ``spikecast.inspect`` and the data specs."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import spikecast
from spikecast.cli import COMMANDS, build_parser, main, parse_shape, parse_timesteps
from spikecast.cli.args import RECIPE_FLAGS, eval_timesteps, recipe_from
from spikecast.datasets import parse_data_spec, resolve_data
from spikecast.recipe import AUTO_RECONSTRUCT_DROP, Recipe
from spikecast.train.loop import CHECKPOINT_MINUTES

CLI = Path(spikecast.cli.__file__).parent

# A model whose time-varying part (after the first ReLU) calls torch.sigmoid inside `blocks.1`.
SIGMOID_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return torch.sigmoid(self.fc(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(4, 8)
            self.blocks = nn.Sequential(nn.ReLU(), Gate())
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)))
""")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: one thread is fastest, and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, one_thread):
    """`spikecast convert` on the digits data spec, end to end (shared by the tests below)."""
    out = tmp_path_factory.mktemp("convert")
    code = main(["convert", "digits-cnn", "--data", "digits", "--calib-images", "200", "--eval-images", "100",
                 "--eval-timesteps", "1,2,4,...,64", "--batch-size", "64", "--out", str(out)])
    return code, out


def test_demo_writes_results_and_snn_matches_ann(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| 128 |" in printed and "PASSED" in printed
    for name in ("validation.json", "validation.md", "snn/spikecast.json", "snn/weights.safetensors"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "validation.json").read_text())
    assert doc["timesteps"] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert doc["samples"] == 450
    assert abs(doc["snn_accuracy"]["128"] - doc["ann_accuracy"]) <= 0.02
    assert doc["model"]["name"] == "zoo:digits-cnn" and doc["calibration"]["images"] == 1347
    assert doc["recipe"] == Recipe(calib_images=1347).to_dict()
    assert "| 128 |" in (out / "validation.md").read_text()
    snn = spikecast.load(out / "snn")
    assert len(snn.neurons()) == 3
    assert snn.metadata["origin"] == {"model": "zoo:digits-cnn", "checkpoint": None, "pretrained": None,
                                      "trust_checkpoint": False, "data": "digits"}


def test_inspect_cli_names_unsupported_sigmoid(tmp_path, capsys):
    model_file = tmp_path / "sigmoid_model.py"
    model_file.write_text(SIGMOID_MODEL)
    assert main(["inspect", f"{model_file}:Net", "--input-shape", "4", "--no-compensate"]) == 1
    printed = capsys.readouterr().out
    assert "UNSUPPORTED" in printed and "blocks.1" in printed and "aten.sigmoid" in printed
    assert "NOT convertible" in printed and "Net" in printed
    # by default the sigmoid is compensated and the head reads a bipolar neuron
    assert main(["inspect", f"{model_file}:Net", "--input-shape", "4"]) == 0
    printed = capsys.readouterr().out
    assert "compensated: runs on the running means" in printed and "bipolar IF neuron" in printed
    assert "1 compensated" in printed and "convertible" in printed


def test_inspect_cli_says_what_each_maxpool_method_does_with_the_pools(capsys):
    model = "zoo:cifar10-googlenet-small"
    assert main(["inspect", model]) == 0
    moved = capsys.readouterr().out
    assert "moved through the concatenation before new neurons" in moved and "decomposition" not in moved
    assert main(["inspect", model, "--maxpool", "decompose"]) == 0
    decomposed = capsys.readouterr().out
    assert "exact max-pool decomposition max(a, b) = b + relu(a - b) (layer 4 of 4" in decomposed
    assert main(["inspect", model, "--maxpool", "spikes"]) == 0
    assert "max-pool: spiking max-pool, stateful" in capsys.readouterr().out


def test_inspect_report_lists_every_op():
    namespace: dict = {}
    exec(SIGMOID_MODEL, namespace)
    report = spikecast.inspect(namespace["Net"](), input_shape=(4,), compensate=False)
    assert not report.ok
    assert [(s.path, s.op) for s in report.unsupported] == [("blocks.1", "aten.sigmoid")]
    kinds = [(r.path, r.kind) for r in report.rows]
    assert kinds == [("stem", "static"), ("blocks.0", "neuron"), ("blocks.1.fc", "weighted"),
                     ("blocks.1", "unsupported"), ("head", "neuron"), ("head", "weighted")]
    assert report.to_dict()["summary"]["unsupported"] == 1
    compensated = spikecast.inspect(namespace["Net"](), input_shape=(4,))
    assert compensated.ok and [r.kind for r in compensated.rows][3] == "compensated"
    assert "blocks.1" in report.table() and "blocks.1" in report.table(markdown=False)

    digits = spikecast.inspect("zoo:digits-cnn")
    assert digits.ok and digits.neurons == 3 and digits.folded_batchnorms == 2
    assert digits.rows[0].action == "static prefix: computed once (weighted layer, BN folded: features.1)"
    assert digits.rows[2].action == "weighted layer, spike-driven (BN folded: features.4)"
    # stem max-pool (after the first ReLU) moves into the static prefix; a later one pools a varying current
    vgg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 2))
    pools = [(r.path, r.kind) for r in spikecast.inspect(vgg, input_shape=(3, 8, 8)).rows if "max_pool" in r.op]
    assert pools == [("2", "static"), ("5", "maxpool-spiking")]
    with pytest.raises(ValueError, match="input_shape"):
        spikecast.inspect(nn.Sequential(nn.Linear(4, 2), nn.ReLU()))


def test_convert_digits_end_to_end(converted, capsys):
    code, out = converted
    assert code == 0
    doc = json.loads((out / "validation.json").read_text())
    assert doc["timesteps"] == [1, 2, 4, 8, 16, 32, 64] and doc["samples"] == 100
    assert doc["calibration"]["images"] == 200 and doc["calibration"]["spec"] == "digits:train"
    assert doc["recipe"]["calib_images"] == 200 and doc["recipe"]["timesteps"] == 32
    # passed at the library's default tolerance (no --tolerance given): within 1 point of the ANN
    assert doc["passed"] is True and doc["tolerance"] == pytest.approx(0.01)
    assert doc["snn_dir"] == str((out / "snn").resolve())
    assert (out / "validation.md").is_file() and (out / "snn" / "spikecast.json").is_file()


def test_validate_saved_snn(converted, capsys):
    _, out = converted
    args = ["validate", str(out / "snn"), "--eval-images", "50", "--timesteps", "32,64"]
    assert main(args + ["--out", str(out / "again")]) == 0  # model and data recorded by convert
    assert "| 64 |" in capsys.readouterr().out
    assert json.loads((out / "again" / "validation.json").read_text())["samples"] == 50
    assert main(args + ["--tolerance", "-1"]) == 1  # validated, but missed the (impossible) tolerance
    # --eval-timesteps is the same list on every command that validates
    assert main(["validate", str(out / "snn"), "--eval-images", "30", "--eval-timesteps", "4"]) == 0
    assert "| 4 |" in capsys.readouterr().out


def test_data_spec_errors_are_clear(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown data spec 'imagenet'.*cifar10"):
        parse_data_spec("imagenet")
    with pytest.raises(ValueError, match="unknown split 'val'.*digits:train or digits:test"):
        parse_data_spec("digits:val")
    with pytest.raises(FileNotFoundError, match="not found: ./missing/folder"):
        parse_data_spec("./missing/folder")
    bad = tmp_path / "bad.pt"
    torch.save([1, 2, 3], bad)
    with pytest.raises(ValueError, match="must hold a tensor"):
        resolve_data(str(bad))
    with pytest.raises(ValueError, match="at least 1"):
        resolve_data("digits", limit=0)

    # errors: one line `spikecast: error: ...`, exit code 2, no traceback
    assert main(["convert", "digits-cnn", "--data", "imagenet", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spikecast: error: unknown data spec 'imagenet'") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["convert", "digits-cnn", "--data", "digits", "--eval-timesteps", "1,x"]) == 2
    assert "spikecast: error: cannot read the timesteps '1,x'" in capsys.readouterr().err
    assert main(["convert", "digits-cnn"]) == 2  # --data missing: a usage error
    assert "--data" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spikecast: error: ") and "not a saved spikecast network" in err and len(err.splitlines()) == 1


def test_data_specs_load_tensors(tmp_path):
    x, y = resolve_data("digits", "train", limit=50)
    assert x.shape == (50, 1, 8, 8) and torch.bincount(y).tolist() == [5] * 10
    assert len(resolve_data("digits:test")[0]) == 450
    path = tmp_path / "data.pt"
    torch.save({"x": x, "y": y}, path)
    x2, y2 = resolve_data(str(path), limit=20)
    assert x2.shape == (20, 1, 8, 8) and len(set(y2.tolist())) == 10
    torch.save(x, path)
    assert resolve_data(str(path))[1] is None


def test_argument_parsing_helpers():
    assert parse_timesteps("1,2,4,...,128") == [1, 2, 4, 8, 16, 32, 64, 128]
    assert parse_timesteps("8,16,...,40") == [8, 16, 24, 32, 40]
    assert parse_timesteps("64, 32") == [32, 64]
    assert parse_timesteps("1,3,9,...,30") == [1, 3, 9, 27, 30]
    assert parse_shape("3,32,32") == parse_shape("3x32x32") == (3, 32, 32)
    with pytest.raises(ValueError):
        parse_timesteps("0,4")
    with pytest.raises(ValueError):
        parse_shape("3,,-1")


def test_python_dash_m_runs():
    done = subprocess.run([sys.executable, "-m", "spikecast", "--version"], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and done.stdout.startswith("spikecast ")


def test_convert_recipe_flags_early_exit_and_report(tmp_path, capsys):
    out = tmp_path / "flags"
    args = ["convert", "digits-cnn", "--data", "digits", "--calib-images", "100", "--eval-images", "60",
            "--eval-timesteps", "4,8", "--timesteps", "8", "--thresholds", "percentile", "--percentile", "99.9",
            "--per-channel", "--correction", "light", "--no-signed", "--early-exit", "0.99", "--report",
            "--activity-images", "16", "--out", str(out)]
    assert main(args + ["--tolerance", "1"]) == 0
    printed = capsys.readouterr().out
    assert "percentile 99.9 per channel" in printed and "binary neurons" in printed
    assert "light for T=4" in printed and "for T=4, run at T=8" in printed  # T=8 reconstructs, trained for 4
    assert "Early exit (softmax confidence >= 0.99" in printed
    doc = json.loads((out / "validation.json").read_text())
    assert doc["recipe"] == Recipe(timesteps=8, thresholds="percentile", percentile=99.9, per_channel=True,
                                   correction="light", signed=False, calib_images=100).to_dict()
    assert doc["early_exit"][0]["confidence"] == 0.99 and 1 <= doc["early_exit"][0]["mean_steps"] <= 8
    snn = json.loads((out / "snn" / "spikecast.json").read_text())
    assert snn["metadata"]["correction"]["level"] == "light" and snn["metadata"]["correction"]["timesteps"] == 4
    report = json.loads((out / "report.json").read_text())  # --report: the full report, activity included
    assert report["activity"] is not None and set(report["snn"]["top1"]) == {"4", "8"}
    assert main(["convert", "digits-cnn", "--data", "digits", "--correction", "heavy"]) == 2


def test_finetune_resumes_and_quantize_and_export(tmp_path, capsys):
    out = tmp_path / "ft"
    args = ["finetune", "digits-cnn", "--data", "digits", "--levels", "4", "--epochs", "2", "--lr", "0.005",
            "--train-images", "256", "--eval-images", "100", "--calib-images", "64", "--eval-timesteps", "2,4,8",
            "--tolerance", "1", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "fine-tuned in" in text and "| 4 |" in text
    assert (out / "checkpoints" / "finetune.pt").is_file() and (out / "snn" / "spikecast.json").is_file()
    doc = json.loads((out / "validation.json").read_text())
    assert len(doc["finetune"]["history"]) == 2
    # the same command again resumes from the finished checkpoint: no epoch runs again
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "epoch 1/2:" not in err
    # a different run refuses the checkpoint instead of mixing it in
    assert main(args[:5] + ["8"] + args[6:]) == 2
    assert "different fine-tuning run" in capsys.readouterr().err

    qdir = tmp_path / "q4"
    assert main(["quantize", str(out / "snn"), "--bits", "4", "--eval-images", "100", "--timesteps", "4,8",
                 "--early-exit", "0.9", "--tolerance", "1", "--out", str(qdir)]) == 0
    text = capsys.readouterr().out
    assert "int4 SNN" in text and (qdir / "snn" / "spikecast.json").is_file()
    assert "Early exit (confidence >= 0.9): int4 SNN top-1" in text
    assert spikecast.load(qdir / "snn").metadata["weight_quantization"]["bits"] == 4

    edir = tmp_path / "onnx"
    assert main(["export", "--snn", str(out / "snn"), "--model", "digits-cnn", "--int8", "--data", "digits",
                 "--eval-images", "60", "--calib-images", "64", "--out", str(edir)]) == 0
    text = capsys.readouterr().out
    for f in ("ann.onnx", "ann_int8.onnx", "snn_step.onnx"):
        assert (edir / f).is_file()
    assert "SNN step graph x T=16" in text

    # integer arithmetic: the step graph fires the same spikes in onnxruntime as in torch
    idir = tmp_path / "int8"
    assert main(["quantize", str(out / "snn"), "--integer", "--eval-images", "60", "--calib-images", "64",
                 "--timesteps", "4,8", "--tolerance", "1", "--out", str(idir)]) == 0
    assert "accumulate integers (kernels: int8" in capsys.readouterr().out
    assert spikecast.load(idir / "snn").metadata["integer_arithmetic"]["layers"]
    # the fastest runtime, int8 kernels with the step graph compiled, validates to the same table
    tables = []
    for flags in ([], ["--compile"]):
        assert main(["validate", str(idir / "snn"), *flags, "--eval-images", "60", "--timesteps", "4,8",
                     "--tolerance", "1"]) == 0
        tables.append([line for line in capsys.readouterr().out.splitlines() if line.startswith("|")])
    assert tables[0] and tables[0] == tables[1]
    assert main(["export", "--snn", str(idir / "snn"), "--data", "digits", "--eval-images", "60",
                 "--out", str(edir / "int")]) == 0
    assert "max abs diff to torch 0.0e+00" in capsys.readouterr().out
    assert main(["export", "--out", str(edir)]) == 2
    assert "nothing to export" in capsys.readouterr().err


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    """150 test digits as 8x8 grayscale PNGs in class subfolders (an image folder, read by DataLoader)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits-folder")
    for i in range(150):
        folder = root / f"digit{digits.target[i]}"
        folder.mkdir(exist_ok=True)
        pixels = (digits.images[i] / 16 * 255).round().astype("uint8")
        Image.fromarray(pixels, "L").save(folder / f"{i:04d}.png")
    return root


def test_validate_and_report_stream_image_folders_through_dataloader_workers(converted, digits_folder, tmp_path,
                                                                            monkeypatch, capsys):
    from spikecast.datasets import ImageData, open_data
    from spikecast.zoo.digits import DIGITS_MEAN, DIGITS_STD

    _, out = converted
    snn = spikecast.load(out / "snn")
    x, y = resolve_data(digits_folder, mean=DIGITS_MEAN, std=DIGITS_STD)
    ann = spikecast.zoo.create_model("digits-cnn", pretrained=True)
    expected = spikecast.validate(ann, snn, (x, y), timesteps=[4, 16], progress=False)

    # the CLI never holds the folder in memory: it reads batches, decoded by worker processes
    monkeypatch.setattr(ImageData, "tensors", lambda self: pytest.fail("the evaluation images were all loaded"))
    args = ["validate", str(out / "snn"), "--data", str(digits_folder), "--timesteps", "4,16", "--batch-size", "32",
            "--tolerance", "1"]
    for workers in ("2", "0"):
        assert main(args + ["--workers", workers, "--out", str(tmp_path / workers)]) == 0
        doc = json.loads((tmp_path / workers / "validation.json").read_text())
        assert doc["samples"] == 150 and doc["ann_accuracy"] == expected.ann_accuracy
        assert doc["snn_accuracy"] == {str(t): a for t, a in expected.snn_accuracy.items()}
    assert main(["report", str(out / "snn"), "--data", str(digits_folder), "--timesteps", "4", "--workers", "2",
                 "--activity-images", "16", "--tolerance", "1", "--out", str(tmp_path / "report")]) == 0
    assert json.loads((tmp_path / "report" / "report.json").read_text())["snn"]["top1"]["4"] == \
        pytest.approx(expected.snn_accuracy[4])
    # a shard (torchrun) reads only its images
    images = open_data(digits_folder, mean=DIGITS_MEAN, std=DIGITS_STD)
    shard = [xb for xb, _ in images.batches(batch_size=8, workers=1, indices=range(3, 20, 2))]
    assert torch.equal(torch.cat(shard), x[3:20:2])
    capsys.readouterr()


def test_unreadable_and_mixed_size_images_in_a_folder_are_one_line_errors(converted, digits_folder, tmp_path, capsys):
    import shutil

    from PIL import Image

    _, out = converted
    bad = tmp_path / "bad"
    shutil.copytree(digits_folder, bad)
    (bad / "digit0" / "zz-broken.png").write_bytes(b"not a png")
    args = ["validate", str(out / "snn"), "--data", str(bad), "--timesteps", "4", "--batch-size", "32"]
    for workers in ("2", "0"):
        assert main(args + ["--workers", workers]) == 2
        err = capsys.readouterr().err
        assert err.startswith("spikecast: error: cannot read image ") and "zz-broken.png" in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    (bad / "digit0" / "zz-broken.png").unlink()
    Image.new("L", (9, 9)).save(bad / "digit0" / "zz-larger.png")
    assert main(args) == 0  # the model's input size (8 px): every image is resized to it
    capsys.readouterr()
    from spikecast.datasets import open_data  # no size given: the images must agree
    for workers in (2, 0):
        with pytest.raises(ValueError, match=r"^images in .* have different sizes .*--size") as info:
            list(open_data(bad, mean=(0.5,), std=(0.5,)).batches(batch_size=200, workers=workers))
        assert "\n" not in str(info.value)


def test_report_command_writes_every_file(converted, tmp_path, capsys):
    code, out = converted
    rdir = tmp_path / "report"
    assert main(["report", str(out / "snn"), "--eval-images", "120", "--timesteps", "1,4,16", "--activity-images", "32",
                 "--early-exit", "0.95", "--tolerance", "1", "--out", str(rdir)]) == 0
    text = capsys.readouterr().out
    assert "energy / image" in text
    for name in ("report.html", "report.md", "report.json", "accuracy_vs_timesteps.png", "energy_vs_accuracy.png",
                 "firing_rates.png", "layer_error.png"):
        assert (rdir / name).is_file() and (rdir / name).stat().st_size > 0, name
    doc = json.loads((rdir / "report.json").read_text())
    assert doc["format"] == "spikecast-report" and doc["schema_version"] == 1
    assert set(doc["snn"]["top1"]) == {"1", "4", "16"} and "latency_to_parity" in doc
    assert [e["confidence"] for e in doc["early_exit"]] == [0.95]
    page = (rdir / "report.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    assert page.count("data:image/png;base64,") == 4


def test_torchrun_two_processes_give_the_single_process_table(converted, tmp_path):
    code, out = converted
    args = ["validate", str(out / "snn"), "--eval-images", "150", "--timesteps", "1,4,16", "--early-exit", "0.99",
            "--tolerance", "1"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
                          "-m", "spikecast", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("spikecast validate: 2 processes") == 1  # rank 0 alone talks
    one = json.loads((tmp_path / "one" / "validation.json").read_text())
    two = json.loads((tmp_path / "two" / "validation.json").read_text())
    assert two["config"]["processes"] == 2 and two["samples"] == one["samples"] == 150
    for key in ("ann_accuracy", "snn_accuracy", "agreement", "passed"):
        assert two[key] == one[key], key
    for key in ("logit_error", "cosine"):
        for t, v in one[key].items():
            assert two[key][t] == pytest.approx(v, rel=1e-5), key  # batch composition: float32 rounding
    assert two["early_exit"][0]["accuracy"] == one["early_exit"][0]["accuracy"]
    assert two["early_exit"][0]["mean_steps"] == pytest.approx(one["early_exit"][0]["mean_steps"])


# ------------------------------------------------------------------------------------------- flags
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: a for a in parser._actions for opt in a.option_strings if opt not in ("-h", "--help")}


def test_every_flag_of_every_command_is_read():
    """No flag is a silent no-op: each option a command's parser accepts is read by the command's module
    (or the shared helpers it calls), and the help lists every visible flag."""
    shared = (CLI / "args.py").read_text() + (CLI / "common.py").read_text()
    commands = {module.__name__.rsplit(".", 1)[1]: module for module in COMMANDS}
    parsers = _subparsers()
    assert set(parsers) == {"demo", "inspect", "convert", "validate", "finetune", "quantize", "export", "report",
                            "batch"}
    for name, parser in parsers.items():
        source = Path(commands[name].__file__).read_text()
        help_text = parser.format_help()
        for flag, action in _flags(parser).items():
            if flag == "--debug":
                continue  # read by main()
            dest = action.dest
            if dest in RECIPE_FLAGS and "recipe_from(args" in source:
                continue  # recipe_from reads every recipe flag (test_deprecated_aliases... checks the mapping)
            read = re.search(rf"args\.{dest}\b|getattr\(args, \"{dest}\"", source + shared)
            assert read, f"spikecast {name} {flag}: args.{dest} is never read"
            if action.help != argparse.SUPPRESS:
                assert flag in help_text, f"spikecast {name} --help does not list {flag}"


def test_flag_names_follow_the_library():
    flags = {name: set(_flags(p)) for name, p in _subparsers().items()}
    recipe = {"--" + f.replace("_", "-") for f in Recipe().to_dict() if f != "mask_sites"}
    assert recipe <= flags["convert"]  # every recipe field is a convert flag
    for name in ("convert", "finetune", "validate", "quantize", "report"):
        assert {"--eval-timesteps", "--tolerance", "--early-exit", "--batch-size", "--device"} <= flags[name], name
    for name in ("inspect", "convert", "validate", "finetune", "quantize", "export", "report"):
        assert "--trust-checkpoint" in flags[name], name  # every command that loads a checkpoint
    assert {"--timesteps", "--correction", "--thresholds", "--calib-images", "--levels", "--no-signed"} <= flags["finetune"]
    # what used to be accepted and ignored is gone
    assert "--mask-ratio" not in flags["finetune"] and "--device" not in flags["export"]


def test_per_channel_flag_forces_either_way_and_its_absence_leaves_auto():
    parser = build_parser()
    base = ["convert", "m", "--data", "d", "--timesteps", "4"]
    for extra, value, used in (([], "auto", True), (["--per-channel"], True, True), (["--no-per-channel"], False, False)):
        args = parser.parse_args(base + extra)
        eval_timesteps(args)
        recipe = recipe_from(args)
        assert recipe.per_channel == value and recipe.per_channel_used == used, extra


def test_reconstruct_timesteps_flag_sets_the_budget_trained_for():
    parser = build_parser()
    base = ["convert", "m", "--data", "d", "--timesteps", "8"]
    for extra, value, used in (([], "auto", 4), (["--reconstruct-timesteps", "8"], 8, 8),
                               (["--reconstruct-timesteps", "auto"], "auto", 4)):
        args = parser.parse_args(base + extra)
        eval_timesteps(args)
        recipe = recipe_from(args)
        assert recipe.reconstruct_timesteps == value and recipe.calibration_timesteps == used, extra
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--reconstruct-timesteps", "0"])


def test_reconstruct_drop_flag_sets_qdrop_and_its_absence_leaves_auto(capsys):
    parser = build_parser()
    base = ["convert", "m", "--data", "d", "--timesteps", "8"]
    for extra, value, used in (([], "auto", AUTO_RECONSTRUCT_DROP), (["--reconstruct-drop", "0"], 0.0, 0.0),
                               (["--reconstruct-drop", "0.25"], 0.25, 0.25),
                               (["--reconstruct-timesteps", "8"], "auto", 0.0)):
        args = parser.parse_args(base + extra)
        eval_timesteps(args)
        recipe = recipe_from(args)
        assert recipe.reconstruct_drop == value and recipe.reconstruction_config().drop == used, extra
    for bad in ("1", "-0.1", "half"):
        with pytest.raises(SystemExit):
            parser.parse_args(base + ["--reconstruct-drop", bad])
        assert "--reconstruct-drop" in capsys.readouterr().err


def test_finetune_checkpoint_minutes_flag(capsys):
    parser = build_parser()
    base = ["finetune", "m", "--data", "d"]
    assert parser.parse_args(base).checkpoint_minutes == CHECKPOINT_MINUTES
    assert parser.parse_args(base + ["--checkpoint-minutes", "0"]).checkpoint_minutes == 0.0
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(SystemExit):
            parser.parse_args(base + ["--checkpoint-minutes", bad])
        assert "--checkpoint-minutes" in capsys.readouterr().err


def test_deprecated_aliases_map_to_the_new_names(capsys):
    parser = build_parser()
    args = parser.parse_args(["convert", "m", "--data", "d", "--budget", "8", "--method", "max", "--calibration", "none",
                              "--timesteps", "1,2,4,...,16"])
    assert eval_timesteps(args) == [1, 2, 4, 8, 16]
    assert recipe_from(args) == Recipe(timesteps=8, thresholds="max", correction="none")
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 4 and all(n.startswith("spikecast: note: ") for n in notes)
    assert "--budget is deprecated, use --timesteps" in notes[0] and "--eval-timesteps" in notes[3]
    args = parser.parse_args(["finetune", "m", "--data", "d", "--calibration", "advanced", "--timesteps", "2,4"])
    assert args.correction == "advanced" and eval_timesteps(args) == [2, 4]
    capsys.readouterr()
    # the new names give the same recipe, and say nothing
    args = parser.parse_args(["convert", "m", "--data", "d", "--timesteps", "8", "--thresholds", "max",
                              "--correction", "none", "--eval-timesteps", "1,2,4,...,16"])
    assert eval_timesteps(args) == [1, 2, 4, 8, 16]
    assert recipe_from(args) == Recipe(timesteps=8, thresholds="max", correction="none")
    assert capsys.readouterr().err == ""
    # deprecated flags stay out of --help
    help_text = _subparsers()["convert"].format_help()
    assert "--budget" not in help_text and "--method" not in help_text and "--calibration " not in help_text


@pytest.mark.parametrize("argv, message", [
    (["finetune", "digits-cnn", "--data", "digits", "--bptt-window", "2"], "--bptt-window belongs to --method surrogate"),
    (["finetune", "digits-cnn", "--data", "digits", "--timesteps", "4"], "--timesteps belongs to --method surrogate"),
    (["finetune", "digits-cnn", "--data", "digits", "--method", "surrogate", "--thresholds", "max"], "--thresholds"),
    (["finetune", "digits-cnn", "--data", "digits", "--device", "no-such-device"], "unknown device 'no-such-device'"),
    (["finetune", "digits-cnn", "--data", "digits", "--distill", "2"], "distill must be a weight in [0, 1]"),
    (["finetune", "digits-cnn", "--data", "digits", "--distill-temperature", "4"], "add --distill W"),
    (["convert", "digits-cnn", "--data", "digits", "--percentile", "99"], "--percentile applies to --thresholds"),
    (["convert", "digits-cnn", "--data", "digits", "--mask-seed", "3"], "--mask-seed seeds random spike masking"),
    (["convert", "digits-cnn", "--data", "digits", "--activity-images", "8"], "add --report"),
    (["convert", "digits-cnn", "--data", "digits", "--budget", "8", "--timesteps", "8"], "give --timesteps only"),
    (["convert", "digits-cnn", "--data", "digits", "--early-exit", "2"], "--early-exit takes confidences"),
    (["convert", "digits-cnn", "--data", "digits", "--device", "cuda:7"], "device 'cuda:7' is not available"),
    (["quantize", "x", "--input-bits", "4"], "add --integer"),
    (["report", "x", "--calib-images", "64"], "add --int8"),
    (["export", "--model", "digits-cnn", "--int8"], "--int8 need(s) --data"),
    (["export", "--model", "digits-cnn", "--check-timesteps", "4", "--data", "digits"], "add --snn"),
])
def test_flags_that_do_not_apply_are_rejected(argv, message, capsys):
    if "cuda:7" in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("spikecast: note: ")]
    assert len(err) == 1 and err[0].startswith("spikecast: error: ") and message in err[0], err


def test_usage_errors_exit_2(capsys):
    assert main(["convert", "digits-cnn", "--data", "digits", "--calib-images", "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err
    assert main(["validate", "x", "--levels", "4"]) == 2  # not a validate flag
    assert "unrecognized arguments: --levels" in capsys.readouterr().err
    assert main([]) == 2


def test_trust_checkpoint_flag_reaches_the_loader(tmp_path, capsys):
    state = spikecast.zoo.create_model("digits-cnn", pretrained=True).state_dict()
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, path)  # needs unpickling
    assert main(["inspect", "digits-cnn", "--checkpoint", str(path), "--text"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spikecast: error: checkpoint") and "--trust-checkpoint" in err
    assert main(["inspect", "digits-cnn", "--checkpoint", str(path), "--trust-checkpoint", "--text"]) == 0
    assert "zoo:digits-cnn: convertible" in capsys.readouterr().out
