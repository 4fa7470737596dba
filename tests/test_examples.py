"""Every example runs (small setting), and the HTML report opens in a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from spikecast.batch import load_jobs, run_batch
from spikecast.paths import shared_dir

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HAVE_CIFAR = (shared_dir() / "models" / "cifar10" / "resnet20.th").is_file() and \
    (shared_dir() / "data" / "cifar10-jpeg" / "test").is_dir()


def run_example(name: str, *args: str, timeout: int = 600) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--fast", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_convert_timm_model_example():
    out = run_example("convert_timm_model.py")
    assert "layers of integrate-and-fire neurons" in out and "| 64 |" in out


def test_finetune_and_export_example(tmp_path):
    out = run_example("finetune_and_export.py", "--out", str(tmp_path))
    assert "onnxruntime SNN, T=4" in out
    for f in ("ann.onnx", "ann_int8.onnx", "snn_step.onnx"):
        assert (tmp_path / f).is_file()


@pytest.mark.skipif(not HAVE_CIFAR, reason="shared CIFAR-10 data / ResNet-20 weights not found (SPIKECAST_SHARED)")
def test_cifar_resnet20_report_example(tmp_path):
    out = run_example("cifar_resnet20_report.py", "--out", str(tmp_path))
    assert "latency to parity" in out and (tmp_path / "report.html").is_file()


def test_batch_example_is_valid_and_its_small_jobs_run(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the example uses the current setting names
        jobs = load_jobs(EXAMPLES / "batch_jobs.toml")
    assert len(jobs) >= 4 and any(j["name"] == "broken-on-purpose" for j in jobs)
    # run the example's digits job and its broken job (the CIFAR jobs are the benchmark's size)
    small = tmp_path / "small.toml"
    text = (EXAMPLES / "batch_jobs.toml").read_text()
    keep = [block for block in text.split("[[job]]") if "digits" in block or "broken" in block or "[defaults]" in block]
    small.write_text("[[job]]".join(keep))
    result = run_batch(small, tmp_path / "out", progress=False, log=lambda s: None)
    assert [j.status for j in result.jobs] == ["done", "failed"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine (.ci/run installs it from the system packages)")
def test_html_report_opens_in_headless_chromium(tmp_path):
    pytest.importorskip("playwright", reason="playwright is in the test extras")
    from playwright.sync_api import sync_playwright

    import numpy as np
    import torch
    from PIL import Image

    import spikecast
    from spikecast.zoo import create_model
    from spikecast.zoo.digits import digits_tensors

    torch.set_num_threads(1)
    x_train, _ = digits_tensors("train")
    x, y = digits_tensors("test")
    ann = create_model("digits-cnn", pretrained=True)
    snn = spikecast.convert(ann, calib=x_train[:128], progress=False)
    report = spikecast.build_report(ann, snn, (x[:200], y[:200]), [1, 2, 4, 8, 16], activity_images=32,
                                    progress=False, quantized_ann={"int8 ANN (onnxruntime)": 0.98})
    page_path = spikecast.report(report, tmp_path)["report.html"]
    shot = tmp_path / "screenshot.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        failed: list[str] = []
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        images_ok = page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        n_images = page.evaluate("document.images.length")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == [] and failed == []
    assert images_ok and n_images == 4
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 1000 and pixels.std() > 10  # not blank: text and plots on white
    assert (pixels < 128).mean() > 0.01
