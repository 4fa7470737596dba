"""`spikecast batch`: jobs from TOML, a failing job recorded, resume, summary."""

from __future__ import annotations

import json

import pytest

from spikecast.batch import load_jobs, run_batch
from spikecast.cli import main

JOBS = """
[defaults]
data = "digits"
timesteps = [1, 4, 16]
eval_images = 120
calib_images = 64
activity_images = 16

[[job]]
name = "digits-default"
model = "digits-cnn"
budget = 8

[[job]]
name = "digits-max"
model = "digits-cnn"
method = "max"
calibration = "none"

[[job]]
name = "broken"
model = "zoo:no-such-model"
"""


def test_batch_runs_records_failures_and_resumes(tmp_path, capsys, single_thread):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(JOBS)
    out = tmp_path / "out"
    assert main(["batch", str(jobs), "--out", str(out)]) == 1  # one job failed
    text = capsys.readouterr().out
    assert "FAILED" in text and "no-such-model" in text
    for name in ("digits-default", "digits-max"):
        record = json.loads((out / name / "job.json").read_text())
        assert record["status"] == "done" and record["summary"]["passed"]
        assert (out / name / "snn" / "spikecast.json").is_file() and (out / name / "report.html").is_file()
    broken = json.loads((out / "broken" / "job.json").read_text())
    assert broken["status"] == "failed" and "no-such-model" in broken["error"]
    assert (out / "broken" / "error.txt").is_file()
    summary = (out / "summary.md").read_text()
    assert "digits-default" in summary and "failed" in summary and (out / "summary.html").is_file()
    stamp = (out / "digits-default" / "snn" / "weights.safetensors").stat().st_mtime_ns

    # second run: finished jobs are skipped (nothing recomputed), the broken one is retried
    result = run_batch(jobs, out, progress=False, log=lambda s: None)
    assert [j.status for j in result.jobs] == ["skipped", "skipped", "failed"]
    assert (out / "digits-default" / "snn" / "weights.safetensors").stat().st_mtime_ns == stamp
    # changed settings or --force redo a job
    jobs.write_text(JOBS.replace('budget = 8', 'budget = 4'))
    result = run_batch(jobs, out, progress=False, log=lambda s: None)
    assert [j.status for j in result.jobs] == ["done", "skipped", "failed"]
    jobs.write_text(JOBS.replace('[[job]]\nname = "broken"\nmodel = "zoo:no-such-model"\n', ""))
    assert main(["batch", str(jobs), "--out", str(out), "--force"]) == 0
    assert "skipped" not in capsys.readouterr().out.split("summary")[0]


def test_jobs_file_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[job]]\nmodel = 'digits-cnn'\ndata = 'digits'\ncalibraton = 'none'\n")
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
