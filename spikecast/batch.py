"""Batch conversion: ``spikecast batch jobs.toml`` - many models, one summary.

A TOML file lists jobs; ``[defaults]`` applies to every job, each ``[[job]]`` overrides. The
settings are the CLI's flags with ``_`` for ``-`` (and the library's names: the recipe fields of
:class:`spikecast.recipe.Recipe`, and :class:`spikecast.jobs.JobSpec`)::

    [defaults]
    data = "cifar10"            # data spec (spikecast.datasets)
    eval_timesteps = [1, 2, 4, 8, 16, 32, 64]
    tolerance = 0.01
    eval_images = 1000
    calib_images = 512

    [[job]]
    name = "resnet20-advanced"
    model = "zoo:cifar10-resnet20"   # zoo name, timm name or file.py:Name (+ checkpoint = "...")
    correction = "advanced"
    timesteps = 32                   # the budget T the SNN is calibrated for

The old names still work, with a deprecation note: ``budget`` (now ``timesteps``), ``method``
(``thresholds``), ``calibration`` (``correction``) and ``timesteps`` given as a list (now
``eval_timesteps``).

Every job runs through :func:`spikecast.jobs.run_job` (the same job as ``spikecast convert``) into
``OUT/<name>/``: ``snn/`` (the saved network, with absolute references to its model and data, so
``spikecast validate OUT/<name>/snn`` works from anywhere), the report (``report.html``,
``report.md``, ``report.json``, plots), ``validation.json`` / ``.md`` and ``job.json`` (status,
settings, error, timings). A job that fails records its error and the batch goes on. Running the
batch again skips every job whose ``job.json`` says it finished with the same settings
(``force=True`` redoes them). ``OUT/summary.md``, ``summary.html`` and ``summary.json`` put the
jobs side by side: accuracy at each T, latency to parity, energy at the budget.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
import tomllib
import traceback
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

from spikecast.jobs import JobSpec, parse_timesteps, run_job
from spikecast.progress import progress_bar
from spikecast.recipe import Recipe

JOB_FILE = "job.json"
#: Settings of a job that are not recipe fields, with their defaults.
DEFAULTS: dict[str, Any] = {
    "data": None, "checkpoint": None, "pretrained": None, "trust_checkpoint": False, "calib_data": None,
    "eval_images": None, "eval_timesteps": [1, 2, 4, 8, 16, 32, 64], "tolerance": 0.01, "early_exit": [0.9, 0.99],
    "batch_size": 256, "device": None, "mean": None, "std": None, "size": None, "workers": None, "report": True,
    "activity_images": 64,
}
#: Recipe fields (``None``: the recipe's default).
RECIPE_KEYS = tuple(f.name for f in fields(Recipe))
KEYS = set(DEFAULTS) | set(RECIPE_KEYS) | {"name", "model"}
#: Old setting names -> new ones (``timesteps`` given as a list is also renamed ``eval_timesteps``).
DEPRECATED = {"budget": "timesteps", "method": "thresholds", "calibration": "correction"}


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

    @property
    def failed(self) -> bool:
        return any(j.status == "failed" for j in self.jobs)


def _is_list(value) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, str) and ("," in value or "..." in value))


def _renamed(table: dict, where: str) -> dict:
    """``table`` with deprecated setting names replaced by the new ones (one warning each)."""
    out: dict = {}
    for key, value in table.items():
        new = "eval_timesteps" if key == "timesteps" and _is_list(value) else DEPRECATED.get(key, key)
        if new != key:
            what = f"{key!r} as a list" if key == "timesteps" else repr(key)
            warnings.warn(f"{where}: {what} is deprecated, use {new!r}", FutureWarning, stacklevel=3)
        if new in out:
            raise ValueError(f"{where}: {new!r} is set twice (also under an old name)")
        out[new] = value
    return out


def load_jobs(path: Union[str, Path]) -> list[dict]:
    """Parse and check a jobs file; returns one settings dict per job (defaults applied, new names)."""
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
    defaults = {**DEFAULTS, **{k: None for k in RECIPE_KEYS}}
    for key, value in _renamed(doc.get("defaults", {}), f"{path} [defaults]").items():
        if key not in KEYS - {"name"}:
            raise ValueError(f"{path}: unknown setting {key!r} in [defaults]; known: {sorted(KEYS - {'name'})}")
        defaults[key] = value
    jobs, names = [], set()
    raw_jobs = doc.get("job", [])
    if not raw_jobs:
        raise ValueError(f"{path} lists no [[job]]")
    for k, raw in enumerate(raw_jobs, start=1):
        raw = _renamed(raw, f"{path} job {k}")
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


def _floats(value) -> Optional[tuple[float, ...]]:
    if value is None:
        return None
    return tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else [value]))


def job_spec(job: dict) -> JobSpec:
    """The :class:`JobSpec` of one job of :func:`load_jobs`."""
    recipe = Recipe().replace(**{k: job[k] for k in RECIPE_KEYS if job.get(k) is not None})
    return JobSpec(model=str(job["model"]), data=str(job["data"]), recipe=recipe, checkpoint=job["checkpoint"],
                   pretrained=job["pretrained"], trust_checkpoint=bool(job["trust_checkpoint"]),
                   calib_data=job["calib_data"], eval_images=job["eval_images"],
                   eval_timesteps=tuple(parse_timesteps(job["eval_timesteps"])), tolerance=float(job["tolerance"]),
                   early_exit=_floats(job["early_exit"]) or (), batch_size=int(job["batch_size"]), device=job["device"],
                   mean=_floats(job["mean"]), std=_floats(job["std"]), size=job["size"],
                   workers=None if job["workers"] is None else int(job["workers"]),
                   report=bool(job["report"]),
                   activity_images=int(job["activity_images"]))


def run_batch(path: Union[str, Path], out_dir: Union[str, Path], *, force: bool = False,
              progress: bool = True, log=print) -> BatchResult:
    """Run every job of the TOML file ``path`` into ``out_dir`` (see the module docstring)."""
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
                done = run_job(job_spec(job), job_dir, log=lambda text: log("      " + text.strip()),
                               progress=progress)
                summary = done.summary()
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
