"""Shared helper of the benchmark scripts: write one section of benchmarks/RESULTS.md.

RESULTS.md is generated, never typed. Each section sits between two markers that name the script
that wrote it::

    <!-- BEGIN RESULTS section="calibration-headline" script="benchmarks/bench_calibration.py" -->
    ## Heading
    ...body...
    **Run**: `python benchmarks/...` · commit abc1234 (dirty) · 2026-11-30 16:30 UTC · machine ·
    2 torch threads · load average 0.52 / 0.71 / 0.90 before, 1.98 / 1.40 / 1.10 after
    <!-- END RESULTS section="calibration-headline" -->

A script calls :func:`start` first (it records the command, commit, time and load average before
any work) and :meth:`Run.write` at the end (load average after). ``tests/test_results_file.py``
checks that every section of RESULTS.md has these markers and this provenance line, and that every
number the README quotes from a section appears in it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# SPIKECAST_RESULTS: write elsewhere (a run on another machine, merged back with `merge`)
RESULTS = Path(os.environ.get("SPIKECAST_RESULTS") or ROOT / "benchmarks" / "RESULTS.md")
TITLE = ("# spikecast benchmark results\n\n"
         "Every section is written by the script named in its markers and its **Run** line; rerun that\n"
         "command to regenerate it. Nothing here is typed by hand (`tests/test_results_file.py` checks the\n"
         "markers, and that README numbers quoted from a section appear in it).\n")
BEGIN = re.compile(r'^<!-- BEGIN RESULTS section="(?P<slug>[a-z0-9-]+)" script="(?P<script>[^"]+)" -->$', re.M)
# Files a benchmark itself writes while it runs: not "dirt" in the tree it measures.
_OWN_OUTPUTS = ("benchmarks/RESULTS.md",)


def cpu_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


# Libraries whose versions can move a section's numbers, named on its Run line when the script loaded
# them: pip resolves them afresh on each machine (only torch is capped), and an int8 ANN's top-1 read
# 81.34% and 80.64% in two runs of the same sources in two sessions, with nothing recorded to tell why.
VERSIONED = ("numpy", "onnx", "onnxruntime", "timm", "spikingjelly", "sinabs", "snntorch", "norse", "rockpool", "nir")


def loaded_versions() -> list[str]:
    """``"name version"`` for each of :data:`VERSIONED` this process has imported."""
    found = []
    for name in VERSIONED:
        if name in sys.modules:
            try:
                found.append(f"{name} {importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:  # imported from a source tree, not installed
                found.append(f"{name} {getattr(sys.modules[name], '__version__', '(version unknown)')}")
    return found


def machine() -> str:
    """The machine in words: CPU (or GPU), logical CPUs, torch / Python versions, and the versions of
    the other libraries loaded that can move numbers (:data:`VERSIONED`)."""
    what = f"{cpu_name()}, {os.cpu_count()} logical CPUs"
    if torch.cuda.is_available():
        what += f", GPU {torch.cuda.get_device_name(0)}"
    return "; ".join([what, f"torch {torch.__version__}", f"Python {platform.python_version()}", *loaded_versions()])


def git_commit() -> str:
    """``abc1234`` or ``abc1234 (dirty: N files)`` for the tree this process runs from.

    ``SPIKECAST_GIT_COMMIT`` wins when set: a copy of the tree on another machine may carry stale
    git metadata (or none), and the caller knows which commit it shipped."""
    given = os.environ.get("SPIKECAST_GIT_COMMIT")
    if given:
        return f"{given} (a copy of that commit's tree, named by SPIKECAST_GIT_COMMIT)"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    dirty = [line[3:] for line in status if line[3:] not in _OWN_OUTPUTS]
    return f"{sha} (dirty: {len(dirty)} file{'s' if len(dirty) != 1 else ''})" if dirty else sha


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def command() -> str:
    """The command line that started this process, as one would type it from the repository root."""
    return " ".join(["python", _script(), *(shlex.quote(a) for a in sys.argv[1:])])


def _script() -> str:
    """This process's script, relative to the repository root when it lies inside it."""
    script = Path(sys.argv[0]).resolve()
    try:
        return str(script.relative_to(ROOT))
    except ValueError:
        return script.name


@dataclass
class Run:
    """One benchmark process: what it was started as, where and when; writes its sections."""

    script: str
    command: str
    commit: str
    started: str
    load_before: str
    threads: int
    t0: float = field(default_factory=time.time)

    def provenance(self) -> str:
        minutes = (time.time() - self.t0) / 60
        return (f"**Run**: `{self.command}` · commit {self.commit} · {self.started} · {minutes:.1f} min · "
                f"{machine()} · {self.threads} torch threads · load average (1 / 5 / 15 min) "
                f"{self.load_before} before, {load_average()} after")

    def write(self, slug: str, heading: str, body: str, path: Path = RESULTS, replaces: tuple[str, ...] = ()) -> str:
        """Write section ``slug`` (``## heading`` + body + the Run line) into RESULTS.md, replacing
        that section only; returns the section's text.

        ``replaces``: sections an older version of the same script wrote under other names (their
        numbers are now this section's); they are removed, so a stale copy cannot outlive the re-run."""
        if not re.fullmatch(r"[a-z0-9-]+", slug):
            raise ValueError(f"section slug must be lowercase letters, digits and '-', got {slug!r}")
        block = (f'<!-- BEGIN RESULTS section="{slug}" script="{self.script}" -->\n'
                 f"## {heading}\n\n{body.strip()}\n\n{self.provenance()}\n"
                 f'<!-- END RESULTS section="{slug}" -->\n')
        text = path.read_text() if path.exists() else TITLE
        for old in replaces:
            if old != slug:
                text = _put_section(text, old, "", append=False)
        path.write_text(_put_section(text, slug, block))
        return block


def _put_section(text: str, slug: str, block: str, append: bool = True) -> str:
    """``text`` with section ``slug`` replaced by ``block`` (appended when absent, unless not ``append``)."""
    pattern = re.compile(rf'^<!-- BEGIN RESULTS section="{re.escape(slug)}" .*?'
                         rf'^<!-- END RESULTS section="{re.escape(slug)}" -->\n\n?', re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block + ("\n" if block and _m.group(0).endswith("\n\n") else ""), text)
    elif append:
        text = text.rstrip() + "\n\n" + block
    return text.rstrip() + "\n"


def start(threads: int | None = None) -> Run:
    """Call first thing in a benchmark's ``main``: records command, commit, time, load average."""
    if threads is not None:
        torch.set_num_threads(threads)
    return Run(script=_script(), command=command(), commit=git_commit(),
               started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load_before=load_average(),
               threads=torch.get_num_threads())


def sections(path: Path = RESULTS) -> dict[str, str]:
    """``{slug: text between its markers}`` of RESULTS.md."""
    text = path.read_text() if path.exists() else ""
    out = {}
    for match in BEGIN.finditer(text):
        slug = match["slug"]
        end = text.find(f'<!-- END RESULTS section="{slug}" -->', match.end())
        if end < 0:
            raise ValueError(f"RESULTS.md: section {slug!r} has no END marker")
        out[slug] = text[match.end():end]
    return out


def merge(source: Path, path: Path = RESULTS, note: str = "") -> list[str]:
    """Copy every marked section of ``source`` (a RESULTS file written on another machine) into
    ``path`` verbatim, replacing sections of the same name; returns the names copied. ``note``, when
    given, is appended after the section's Run line as a line of its own, saying it was added here."""
    text = path.read_text() if path.exists() else TITLE
    copied = []
    for slug, inner in sections(source).items():
        if note:
            inner = inner.rstrip("\n") + f"\n\n*Note added by `results_file.py merge`*: {note}\n"
        script = next(m["script"] for m in BEGIN.finditer(source.read_text()) if m["slug"] == slug)
        block = (f'<!-- BEGIN RESULTS section="{slug}" script="{script}" -->{inner}'
                 f'<!-- END RESULTS section="{slug}" -->\n')
        text = _put_section(text, slug, block)
        copied.append(slug)
    path.write_text(text)
    return copied


def prune(path: Path = RESULTS) -> list[str]:
    """Remove every ``## `` section that lies outside the markers (typed, or written by an older
    version of a script) and put the title back; returns the headings removed."""
    text = path.read_text() if path.exists() else ""
    kept, removed, inside = [], [], False
    blocks = re.split(r"(?m)^(?=## |<!-- BEGIN RESULTS |<!-- END RESULTS )", text)
    for block in blocks:
        if block.startswith("<!-- BEGIN RESULTS "):
            inside = True
            kept.append(block)
        elif block.startswith("<!-- END RESULTS "):
            inside = False
            end, _, rest = block.partition("\n")
            kept.append(end + "\n")
            if rest.strip().startswith("## "):
                removed.append(rest.strip().splitlines()[0][3:])
        elif block.startswith("## ") and not inside:
            removed.append(block.splitlines()[0][3:])
        elif inside:
            kept.append(block)
    body = "".join(kept)
    body = body[body.find("<!-- BEGIN RESULTS "):] if "<!-- BEGIN RESULTS " in body else ""
    path.write_text((TITLE + "\n" + body).rstrip() + "\n")
    return removed


if __name__ == "__main__":
    # python benchmarks/results_file.py merge [--note TEXT] OTHER_RESULTS.md [...]
    # python benchmarks/results_file.py prune
    import argparse

    parser = argparse.ArgumentParser(description="copy the marked sections of RESULTS files written elsewhere")
    parser.add_argument("command", choices=["merge", "prune"])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--note", default="", help="a line appended to every merged section")
    cli = parser.parse_args()
    if cli.command == "prune":
        print("removed:", "; ".join(prune()) or "nothing")
    for name in cli.files:
        print(name, "->", ", ".join(merge(name, note=cli.note)) or "no sections")
