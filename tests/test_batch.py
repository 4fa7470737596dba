"""`spikecast batch`: jobs from TOML, a failing job recorded, resume, summary; every job is the job runner's."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from spikecast.batch import load_jobs, run_batch
from spikecast.cli import main
from spikecast.recipe import Recipe

JOBS = """
[defaults]
data = "data.pt"                  # relative to the working directory of the batch
eval_timesteps = [1, 4, 16]
eval_images = 120
calib_images = 64
activity_images = 16

[[job]]
name = "digits-default"
model = "digits-cnn"
calib_data = "digits"             # its train split
timesteps = 8

[[job]]
name = "digits-max"
model = "digits-cnn"
data = "digits"
thresholds = "max"
correction = "none"

[[job]]
name = "broken"
model = "zoo:no-such-model"
"""


def test_batch_runs_records_failures_and_resumes(tmp_path, capsys, monkeypatch, single_thread):
    from spikecast.datasets import resolve_data

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    x, y = resolve_data("digits", "test")
    torch.save({"x": x, "y": y}, work / "data.pt")
    jobs = work / "jobs.toml"
    jobs.write_text(JOBS)
    assert main(["batch", "jobs.toml", "--out", "out"]) == 2  # one job failed: the batch's worst exit code
    text = capsys.readouterr().out
    assert "FAILED" in text and "no-such-model" in text
    out = work / "out"
    for name in ("digits-default", "digits-max"):
        record = json.loads((out / name / "job.json").read_text())
        assert record["status"] == "done" and record["summary"]["passed"]
        assert (out / name / "snn" / "spikecast.json").is_file() and (out / name / "report.html").is_file()
        assert (out / name / "validation.json").is_file()
    summary = json.loads((out / "digits-default" / "job.json").read_text())["summary"]
    assert summary["recipe"] == Recipe(timesteps=8, calib_images=64).to_dict() and summary["budget"] == 8
    broken = json.loads((out / "broken" / "job.json").read_text())
    assert broken["status"] == "failed" and "no-such-model" in broken["error"]
    assert (out / "broken" / "error.txt").is_file()
    summary = (out / "summary.md").read_text()
    assert "digits-default" in summary and "failed" in summary and (out / "summary.html").is_file()
    stamp = (out / "digits-default" / "snn" / "weights.safetensors").stat().st_mtime_ns

    # the saved SNN records absolute references: `spikecast validate OUT/job/snn` works from anywhere
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["validate", str(out / "digits-default" / "snn"), "--eval-images", "40", "--timesteps", "8",
                 "--tolerance", "1"]) == 0
    assert "| 8 |" in capsys.readouterr().out
    monkeypatch.chdir(work)

    # second run: finished jobs are skipped (nothing recomputed), the broken one is retried
    result = run_batch(jobs, out, progress=False, log=lambda s: None)
    assert [j.status for j in result.jobs] == ["skipped", "skipped", "failed"]
    assert (out / "digits-default" / "snn" / "weights.safetensors").stat().st_mtime_ns == stamp
    # changed settings or --force redo a job
    jobs.write_text(JOBS.replace("timesteps = 8", "timesteps = 4"))
    result = run_batch(jobs, out, progress=False, log=lambda s: None)
    assert [j.status for j in result.jobs] == ["done", "skipped", "failed"]
    jobs.write_text(JOBS.replace('[[job]]\nname = "broken"\nmodel = "zoo:no-such-model"\n', ""))
    assert main(["batch", str(jobs), "--out", str(out), "--force"]) == 0
    assert "skipped" not in capsys.readouterr().out.split("summary")[0]


def test_old_setting_names_still_work(tmp_path):
    old = tmp_path / "old.toml"
    old.write_text("[defaults]\ndata = 'digits'\ntimesteps = [1, 4]\n\n"
                   "[[job]]\nmodel = 'digits-cnn'\nbudget = 8\nmethod = 'max'\ncalibration = 'none'\n")
    with pytest.warns(FutureWarning) as caught:
        (job,) = load_jobs(old)
    messages = " ".join(str(w.message) for w in caught)
    for name in ("'budget'", "'method'", "'calibration'", "'timesteps' as a list"):
        assert name in messages
    new = tmp_path / "new.toml"
    new.write_text("[defaults]\ndata = 'digits'\neval_timesteps = [1, 4]\n\n"
                   "[[job]]\nmodel = 'digits-cnn'\ntimesteps = 8\nthresholds = 'max'\ncorrection = 'none'\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_jobs(new) == [job]
    bad = tmp_path / "bad.toml"
    bad.write_text("[[job]]\nmodel = 'digits-cnn'\ndata = 'digits'\nbudget = 8\ntimesteps = 8\n")
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="set twice"):
        load_jobs(bad)


def test_jobs_file_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[job]]\nmodel = 'digits-cnn'\ndata = 'digits'\ncorection = 'none'\n")
    with pytest.raises(ValueError, match="unknown setting"):
        load_jobs(bad)
    bad.write_text("[[job]\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_jobs(bad)
    bad.write_text("[defaults]\ndata = 'digits'\n")
    with pytest.raises(ValueError, match="no \\[\\[job\\]\\]"):
        load_jobs(bad)
    bad.write_text("[[job]]\nmodel = 'digits-cnn'\n")
    with pytest.raises(ValueError, match="no data"):
        load_jobs(bad)
    with pytest.raises(FileNotFoundError):
        load_jobs(tmp_path / "missing.toml")


def test_batch_and_cli_do_not_import_each_other():
    """batch runs jobs through spikecast.jobs; neither it nor the job runner imports the CLI."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("layering", Path(__file__).with_name("test_layering.py"))
    layering = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layering)
    modules = layering.all_modules()
    for name in ("spikecast.batch", "spikecast.jobs"):
        imported = {target for target, _, _ in layering.imports(modules[name])}
        assert not {t for t in imported if t == "spikecast.cli" or t.startswith("spikecast.cli.")}, name
    assert "spikecast.jobs" in {t for t, _, _ in layering.imports(modules["spikecast.batch"])}
    assert layering.layer_of("spikecast.jobs") < layering.layer_of("spikecast.batch")
