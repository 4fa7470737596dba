"""Regenerate every section of benchmarks/RESULTS.md (and the README's output blocks) at one commit.

The table below is the one place that says which command writes which section. ``--list`` prints
it; ``--check`` prints each section's commit (from its Run line) and exits 1 unless every section
was written at the same commit by a clean tree; the default runs the commands in order.

Sections marked ``gpu`` take ``--device`` (their accuracy does not depend on the machine, and a GPU
makes them minutes instead of hours); ``cpu`` sections measure CPU behaviour (throughput, memory,
the CPU value the CI guard recomputes) and always run on the CPU.

``--at COMMIT`` runs the commands from a git worktree of that commit (the code measured) while
writing into this checkout's RESULTS.md, so work can go on at HEAD while a long regeneration runs,
and sections written in several sittings still come from one commit.

    python benchmarks/regenerate.py --list
    python benchmarks/regenerate.py --check
    python benchmarks/regenerate.py --device cuda --only finetune-resnet20,finetune-resnet32
    python benchmarks/regenerate.py --at a832ab3 --only headline-guard
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import results_file

ROOT = results_file.ROOT


@dataclass(frozen=True)
class Step:
    """One command and the RESULTS.md sections it writes."""

    sections: tuple[str, ...]
    command: str
    where: str  # "gpu": takes --device; "cpu": measures the CPU, always run there
    hours_on_2_cores: float  # rough, to plan a sitting


STEPS: tuple[Step, ...] = (
    Step(("calibration-ablation",), "python benchmarks/bench_calibration.py ablation", "gpu", 1.0),
    Step(("calibration-headline",), "python benchmarks/bench_calibration.py headline", "gpu", 0.5),
    Step(("modern-cifar",), "python benchmarks/bench_modern_cifar.py", "gpu", 2.0),
    Step(("modern-cifar-t4",), "python benchmarks/bench_modern_cifar.py --budget 4 --levels 1", "gpu", 1.0),
    # bench_finetune.py's surrogate start, length and distillation weight are chosen by bench_anytime.py
    Step(("anytime-validation",), "python benchmarks/bench_anytime.py --images 2000", "gpu", 2.6),
    Step(("finetune-resnet20", "finetune-resnet32"), "python benchmarks/bench_finetune.py", "gpu", 2.5),
    Step(("fewstep-validation",), "python benchmarks/bench_fewstep.py choose --images 2000 --seeds 0,1,2 --settings "
         "600:light:charge:80:channel:0:0,600:light:charge:80:channel:0:0.5", "gpu", 1.1),
    Step(("fewstep-validation-t8",), "python benchmarks/bench_fewstep.py choose --timesteps 8 --images 2000 --seeds "
         "0,1,2 --settings 600:light:charge:80:layer:0:0:8,600:light:charge:80:channel:0:0:4,"
         "600:light:charge:80:channel:0:0.5:4", "gpu", 2.5),
    Step(("fewstep",), "python benchmarks/bench_fewstep.py test", "cpu", 0.5),
    Step(("nir-profile",), "python benchmarks/bench_nir.py profile", "cpu", 1.5),
    Step(("nir-readers",), "python benchmarks/bench_nir.py readers", "cpu", 0.5),
    Step(("headline-guard",), "python benchmarks/bench_calibration.py guard", "cpu", 0.1),
    Step(("calibration-memory",), "python benchmarks/bench_calibration_memory.py", "cpu", 0.1),
    Step(("coverage-timm-relu", "coverage-timm-modern"), "python benchmarks/bench_coverage.py --suite all", "cpu",
         0.5),
    Step(("spikingjelly",), "python benchmarks/bench_spikingjelly.py --images 1000 --timesteps 8 16 32 64", "cpu",
         1.3),
    Step(("speed",), "python benchmarks/bench_speed.py", "cpu", 0.4),
    Step(("scale", "scale-resnet50", "scale-vit-small-patch16-224"), "python benchmarks/bench_scale.py",
         "cpu", 1.0),
    Step(("classic-cifar",), "python benchmarks/bench_classic_cifar.py", "cpu", 0.5),
    Step(("maxpool-methods",), "python benchmarks/bench_maxpool.py", "cpu", 0.7),
    Step(("timm-real-size",), "python benchmarks/bench_timm_size.py", "cpu", 0.6),
    Step(("readme-outputs",), "python benchmarks/readme_outputs.py", "cpu", 0.2),
)
# not a RESULTS.md section: readme_outputs.py rewrites README.md's <!-- output: --> blocks
NOT_A_SECTION = {"readme-outputs"}
# sections an older version of a step's script wrote, which its next run removes (bench_scale.py's "scale" is now
# "scale-resnet50"): listed under the step until then, never reported missing
RETIRED = {"scale"}
RUN_COMMIT = re.compile(r"^\*\*Run\*\*: `[^`]*` · commit (?P<commit>[0-9a-f]+)(?P<rest>[^·]*) ·", re.M)


def section_commits(path: Path = results_file.RESULTS) -> dict[str, str]:
    """``{slug: commit as its Run line gives it ("abc1234", "abc1234 (dirty: 2 files)", ...)}``."""
    out = {}
    for slug, text in results_file.sections(path).items():
        match = RUN_COMMIT.search(text)
        out[slug] = (match["commit"] + match["rest"]).strip() if match else "no Run line"
    return out


def readme_output_commits() -> set[str]:
    return set(re.findall(r"Printed at commit (\S+) by", (ROOT / "README.md").read_text()))


def check() -> int:
    commits = section_commits()
    for step in STEPS:  # sections no run has written yet
        for slug in step.sections:
            if slug not in NOT_A_SECTION | RETIRED:
                commits.setdefault(slug, "missing: never written")
    width = max(map(len, commits), default=0)
    for slug, commit in commits.items():
        print(f"{slug:<{width}}  {commit}")
    outputs = readme_output_commits()
    print(f"{'README output blocks':<{width}}  {', '.join(sorted(outputs)) or 'none'}")
    plain = {c.split()[0] for c in commits.values() if not c.startswith("missing")} | {c.split()[0] for c in outputs}
    dirty = [slug for slug, c in commits.items() if "dirty" in c or c.startswith("missing")]
    if len(plain) == 1 and not dirty:
        print(f"all sections at one commit: {plain.pop()}")
        return 0
    print(f"NOT one commit: {len(plain)} commits" + (f"; written from a modified tree or missing: {', '.join(dirty)}"
                                                     if dirty else ""))
    return 1


def worktree(commit: str) -> Path:
    """A detached worktree of ``commit`` (created once, reused by later sittings)."""
    sha = subprocess.run(["git", "rev-parse", "--short", commit], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"spikecast-regenerate-{sha}"
    if not (path / ".git").exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT, check=True)
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    parser.add_argument("--check", action="store_true", help="print each section's commit; exit 1 unless one")
    parser.add_argument("--only", default="", help="comma-separated sections to regenerate (default: all)")
    parser.add_argument("--device", default="cpu", help="device of the gpu sections (cpu sections stay on the CPU)")
    parser.add_argument("--at", default="", help="run the code of this commit (a worktree), write here")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    known = {s for step in STEPS for s in step.sections}
    only = {s for s in args.only.split(",") if s}
    if only - known:
        parser.error(f"unknown section(s) {', '.join(sorted(only - known))}; known: {', '.join(sorted(known))}")
    steps = [step for step in STEPS if not only or only & set(step.sections)]
    if args.list:
        for step in steps:
            print(f"{','.join(step.sections):<40} {step.where}  ~{step.hours_on_2_cores:g} h on 2 cores  {step.command}")
        return 0
    cwd, env = ROOT, dict(os.environ)
    if args.at:
        cwd = worktree(args.at)
        env.update(PYTHONPATH=str(cwd), SPIKECAST_RESULTS=str(results_file.RESULTS),
                   SPIKECAST_README=str(ROOT / "README.md"))
        env.setdefault("SPIKECAST_SHARED", str((ROOT / ".." / "shared").resolve()))
    for step in steps:
        command = step.command
        if step.where == "gpu" and args.device != "cpu":
            command += f" --device {shlex.quote(args.device)}"
        print(f"==> {command}   (in {cwd})", flush=True)
        done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env)
        if done.returncode != 0:
            print(f"{command!r} exited with {done.returncode}; later steps not run", file=sys.stderr)
            return done.returncode
    return check()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
