"""``spikecast batch JOBS.toml``: many conversion jobs, one summary; finished jobs are skipped on a rerun."""

from __future__ import annotations

from pathlib import Path

from spikecast.batch import run_batch
from spikecast.cli.args import EXIT_ERROR, EXIT_MISSED, EXIT_OK
from spikecast.cli.common import out_path, say


def register(sub, parents) -> None:
    p = sub.add_parser("batch", parents=parents, help="convert, validate and report many models from a TOML file",
                       description="Run every [[job]] of JOBS.toml (model, data, recipe settings, eval_timesteps, "
                                   "tolerance...: the convert flags with _ for -; [defaults] for all) into OUT/<job>/ "
                                   "(SNN, validation and report) and write OUT/summary.md / .html / .json. A failing "
                                   "job is recorded and the batch goes on; a second run skips finished jobs unless "
                                   "--force. Exit 0: every job met its tolerance, 1: some missed it, 2: some failed.")
    p.add_argument("jobs", metavar="JOBS.toml")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the jobs file's name without .toml)")
    p.add_argument("--force", action="store_true", help="redo jobs that finished earlier")
    p.set_defaults(func=run)


def run(args) -> int:
    out = out_path(args.out) if args.out else Path(args.jobs).with_suffix("")
    say(f"spikecast batch: {args.jobs} -> {out}/")
    result = run_batch(args.jobs, out, force=args.force, log=say)
    say()
    say((out / "summary.md").read_text().strip())
    say()
    say(f"saved: {out / 'summary.md'}, {out / 'summary.html'}, {out / 'summary.json'}")
    if result.failed:
        return EXIT_ERROR
    return EXIT_OK if result.ok else EXIT_MISSED
