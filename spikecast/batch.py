"""Batch conversion: ``spikecast batch jobs.toml`` - many models, one summary.

A TOML file lists jobs; ``[defaults]`` applies to every job, each ``[[job]]`` overrides::

    [defaults]
    data = "cifar10"            # data spec (spikecast.datasets)
    timesteps = [1, 2, 4, 8, 16, 32, 64]
    tolerance = 0.01
    eval_images = 1000
    calib_images = 512

    [[job]]
    name = "resnet20-advanced"
    model = "zoo:cifar10-resnet20"   # zoo name, timm name or file.py:Name (+ checkpoint = "...")
    calibration = "advanced"
    budget = 32

Every job writes ``OUT/<name>/``: ``snn/`` (the saved network), the report (``report.html``,
``report.md``, ``report.json``, plots) and ``job.json`` (status, settings, error, timings). A job
that fails records its error and the batch goes on. Running the batch again skips every job whose
``job.json`` says it finished with the same settings (``force=True`` redoes them). ``OUT/summary.md``,
``summary.html`` and ``summary.json`` put the jobs side by side: accuracy at each T, latency to
parity, energy at the budget.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

JOB_FILE = "job.json"
DEFAULTS: dict[str, Any] = {
    "data": None, "checkpoint": None, "pretrained": None, "method": None, "percentile": None,
    "per_channel": False, "calibration": None, "budget": None, "signed": None, "mask_ratio": 0.0,
    "levels": 1, "compensate": True,
    "timesteps": [1, 2, 4, 8, 16, 32, 64], "tolerance": 0.01, "eval_images": None, "calib_images": 512,
    "activity_images": 64, "batch_size": 256, "report": True,
}
KEYS = set(DEFAULTS) | {"name", "model"}


@dataclass
class JobOutcome:
    name: str
    status: str  # "done", "failed", "skipped" (finished earlier, same settings)
    passed: Optional[bool] = None
    error: Optional[str] = None
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)


@dataclass
class BatchResult:
    jobs: list[JobOutcome]
    out_dir: Path

    @property
    def ok(self) -> bool:
        """Every job finished and met its tolerance."""
        return all(j.status in ("done", "skipped") and j.passed for j in self.jobs)


def load_jobs(path: Union[str, Path]) -> list[dict]:
    """Parse and check a jobs file; returns one settings dict per job (defaults applied)."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"jobs file not found: {path}")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from exc
    unknown_top = set(doc) - {"defaults", "job"}
    if unknown_top:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown_top)}; use [defaults] and [[job]]")
    defaults = dict(DEFAULTS)
    for key, value in doc.get("defaults", {}).items():
        if key not in KEYS - {"name"}:
            raise ValueError(f"{path}: unknown setting {key!r} in [defaults]; known: {sorted(KEYS - {'name'})}")
        defaults[key] = value
    jobs, names = [], set()
    raw_jobs = doc.get("job", [])
    if not raw_jobs:
        raise ValueError(f"{path} lists no [[job]]")
    for k, raw in enumerate(raw_jobs, start=1):
        unknown = set(raw) - KEYS
        if unknown:
            raise ValueError(f"{path}: job {k} has unknown setting(s) {sorted(unknown)}; known: {sorted(KEYS)}")
        job = {**defaults, **raw}
        if not job.get("model"):
            raise ValueError(f"{path}: job {k} has no model")
        job["name"] = str(raw.get("name") or _slug(str(job["model"])))
        if not re.fullmatch(r"[A-Za-z0-9._+-]+", job["name"]):
            raise ValueError(f"{path}: job name {job['name']!r} must be letters, digits, '.', '_', '+' or '-'")
        if job["name"] in names:
            raise ValueError(f"{path}: two jobs are named {job['name']!r}")
        if not job.get("data"):
            raise ValueError(f"{path}: job {job['name']!r} has no data (set data = \"cifar10\" or a path)")
        names.add(job["name"])
        jobs.append(job)
    return jobs


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "job"


def _settings_hash(job: dict) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _timesteps(value) -> list[int]:
    if isinstance(value, str):
        from spikecast.cli import parse_timesteps

        return parse_timesteps(value)
    return sorted({int(t) for t in value})


def run_job(job: dict, out: Path, progress: bool = True) -> dict:
    """Convert, validate and report one job into ``out``; returns its summary numbers."""
    import spikecast
    from spikecast import pipeline as api
    from spikecast.data import TensorBatches
    from spikecast.datasets import parse_data_spec, resolve_data
    from spikecast.models import data_defaults, parse_model_ref, resolve_model

    ref = parse_model_ref(str(job["model"]))
    ann, name = resolve_model(ref, job["checkpoint"], job["pretrained"])
    defaults = data_defaults(ref, ann)
    spec = parse_data_spec(job["data"])
    kw = dict(mean=defaults.get("mean"), std=defaults.get("std"), size=defaults.get("size"))
    x, y = resolve_data(spec, None, job["eval_images"], **kw)
    x_cal, _ = resolve_data(spec, "train" if spec.has_splits else None, job["calib_images"], **kw)
    timesteps = _timesteps(job["timesteps"])
    convert_kw = {k: job[k] for k in ("method", "percentile", "calibration", "signed") if job[k] is not None}
    budget = int(job["budget"] or api.DEFAULT_TIMESTEPS)
    started = time.perf_counter()
    snn = spikecast.convert(ann, calib=TensorBatches(x_cal, batch_size=job["batch_size"]), timesteps=budget,
                            per_channel=bool(job["per_channel"]), mask_ratio=float(job["mask_ratio"]),
                            levels=int(job["levels"]), compensate=bool(job["compensate"]),
                            progress=progress, **convert_kw)
    convert_s = time.perf_counter() - started
    snn.metadata["cli"] = {"model": str(job["model"]), "checkpoint": job["checkpoint"],
                           "pretrained": job["pretrained"], "data": spec.name}
    snn.save(out / "snn")
    report = spikecast.build_report(ann, snn, TensorBatches(x, y, batch_size=job["batch_size"]), timesteps,
                                    model=str(job["model"]), data_name=spec.name, tolerance=float(job["tolerance"]),
                                    activity_images=int(job["activity_images"]) if job["report"] else 0,
                                    progress=progress)
    if job["report"]:
        spikecast.report(report, out)
    v = report.validation
    energy = None
    if report.activity is not None:
        at = budget if budget in report.activity.timesteps else report.activity.timesteps[-1]
        energy = {"timesteps": at, **report.activity.energy(at)}
    return {"ann_top1": v.ann_accuracy, "snn_top1": {str(t): v.snn_accuracy[t] for t in v.timesteps},
            "agreement": {str(t): v.agreement[t] for t in v.timesteps},
            "latency_to_parity": {f"{p:g}": t for p, t in report.latency_to_parity().items()},
            "passed": v.passed, "tolerance": v.tolerance, "energy": energy, "budget": budget,
            "convert_seconds": round(convert_s, 2), "images": v.samples}


def run_batch(path: Union[str, Path], out_dir: Union[str, Path], *, force: bool = False,
              progress: bool = True, log=print) -> BatchResult:
    """Run every job of the TOML file ``path`` into ``out_dir`` (see the module docstring)."""
    from spikecast.progress import progress_bar

    jobs = load_jobs(path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[JobOutcome] = []
    with progress_bar(f"batch: {len(jobs)} jobs", len(jobs), progress) as bar:
        for k, job in enumerate(jobs, start=1):
            job_dir = out_dir / job["name"]
            record = job_dir / JOB_FILE
            digest = _settings_hash(job)
            if not force and record.is_file():
                try:
                    previous = json.loads(record.read_text())
                except ValueError:
                    previous = {}
                if previous.get("status") == "done" and previous.get("settings_hash") == digest:
                    log(f"[{k}/{len(jobs)}] {job['name']}: finished earlier, skipped (use --force to redo)")
                    outcomes.append(JobOutcome(job["name"], "skipped", previous["summary"].get("passed"),
                                               None, previous.get("seconds", 0.0), previous["summary"]))
                    bar.advance()
                    continue
            log(f"[{k}/{len(jobs)}] {job['name']}: {job['model']} on {job['data']}")
            bar.update(description=f"batch: job {k}/{len(jobs)} {job['name']}")
            started = time.perf_counter()
            job_dir.mkdir(parents=True, exist_ok=True)
            try:
                summary = run_job(job, job_dir, progress)
                outcome = JobOutcome(job["name"], "done", summary["passed"], None,
                                     round(time.perf_counter() - started, 2), summary)
                verdict = "within tolerance" if summary["passed"] else "MISSED the tolerance"
                log(f"      done in {outcome.seconds:.0f} s, {verdict}")
            except Exception as exc:  # noqa: BLE001 - a failing job is recorded and the batch goes on
                outcome = JobOutcome(job["name"], "failed", None, f"{type(exc).__name__}: {exc}",
                                     round(time.perf_counter() - started, 2))
                (job_dir / "error.txt").write_text(traceback.format_exc())
                log(f"      FAILED: {outcome.error}")
            doc = {"name": job["name"], "status": outcome.status, "settings": job, "settings_hash": digest,
                   "error": outcome.error, "seconds": outcome.seconds, "summary": outcome.summary}
            tmp = record.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(doc, indent=1, default=str))
            tmp.replace(record)
            outcomes.append(outcome)
            bar.advance()
    result = BatchResult(outcomes, out_dir)
    write_summary(result, jobs)
    return result


# ---------------------------------------------------------------------------------------- summary
def _summary_rows(result: BatchResult, jobs: list[dict]) -> tuple[list[str], list[list[str]]]:
    grid = sorted({int(t) for j in result.jobs for t in (j.summary.get("snn_top1") or {})})
    head = ["job", "model", "status", "ANN top-1"] + [f"T={t}" for t in grid] + \
        ["parity (1 pt)", "energy at budget (µJ)", "tolerance"]
    rows = []
    by_name = {j["name"]: j for j in jobs}
    for o in result.jobs:
        s = o.summary or {}
        accs = s.get("snn_top1") or {}
        cells = [o.name, str(by_name.get(o.name, {}).get("model", "")),
                 o.status if o.status != "failed" else f"failed: {o.error}",
                 _pct(s.get("ann_top1"))] + [_pct(accs.get(str(t))) for t in grid]
        parity = (s.get("latency_to_parity") or {}).get("1")
        cells.append(f"T={parity}" if parity else ("not reached" if s else ""))
        energy = s.get("energy")
        cells.append(f"{energy['snn_total_uj']:.1f} at T={energy['timesteps']}" if energy else "")
        cells.append("" if o.passed is None else ("met" if o.passed else "MISSED"))
        rows.append(cells)
    return head, rows


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def write_summary(result: BatchResult, jobs: list[dict]) -> dict[str, Path]:
    head, rows = _summary_rows(result, jobs)
    out = result.out_dir
    md = ["# spikecast batch summary", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    failed = sum(1 for o in result.jobs if o.status == "failed")
    md += ["", f"{len(result.jobs)} jobs: {sum(1 for o in result.jobs if o.status == 'done')} run, "
               f"{sum(1 for o in result.jobs if o.status == 'skipped')} skipped (finished earlier), {failed} failed. "
               "Reports: `<job>/report.html`."]
    table = "<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
    for row, o in zip(rows, result.jobs):
        link = (f"<a href='{html.escape(o.name)}/report.html'>{html.escape(row[0])}</a>"
                if (out / o.name / "report.html").is_file() else html.escape(row[0]))
        table += "<tr>" + f"<td>{link}</td>" + "".join(f"<td>{html.escape(c)}</td>" for c in row[1:]) + "</tr>"
    table += "</tbody></table>"
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>spikecast batch summary</title>"
            "<style>body{font-family:Helvetica,Arial,sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}td:first-child,th:first-child,"
            "td:nth-child(2),td:nth-child(3){text-align:left}th{background:#f3f5f7}</style></head><body>"
            f"<h1>spikecast batch summary</h1>{table}<p>{html.escape(md[-1])}</p></body></html>")
    paths = {"summary.md": out / "summary.md", "summary.html": out / "summary.html", "summary.json": out / "summary.json"}
    paths["summary.md"].write_text("\n".join(md) + "\n")
    paths["summary.html"].write_text(page)
    paths["summary.json"].write_text(json.dumps([o.__dict__ for o in result.jobs], indent=1, default=str))
    return paths
