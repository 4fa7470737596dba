"""Regenerate the command outputs shown in README.md.

Every ``<!-- output: COMMAND -->`` ... ``<!-- /output -->`` block of README.md holds what COMMAND
prints (run from the repository root with bash), in a ``text`` fence. This script runs each command
and rewrites its block, so the README shows what the code at this commit prints; the block ends
with a line naming the commit. ``--only SUBSTRING`` runs the blocks whose command contains it.

    python benchmarks/readme_outputs.py
    python benchmarks/readme_outputs.py --only "spikecast demo"
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import results_file

# SPIKECAST_README: rewrite another checkout's README (regenerate.py --at runs this from a worktree)
README = Path(os.environ.get("SPIKECAST_README") or results_file.ROOT / "README.md")
BLOCK = re.compile(r"(?P<open><!-- output: (?P<command>.+?) -->\n)(?P<body>.*?)(?P<close><!-- /output -->)", re.S)


def run(command: str) -> str:
    done = subprocess.run(["bash", "-c", command], cwd=results_file.ROOT, capture_output=True, text=True)
    output = done.stdout
    if done.returncode not in (0, 2):  # 2: the batch example fails one job on purpose
        sys.exit(f"{command!r} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return output.rstrip("\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None)
    args = parser.parse_args(argv)
    text = README.read_text()
    commit = results_file.git_commit()

    def replace(match: re.Match) -> str:
        command = match["command"]
        if args.only and args.only not in command:
            return match.group(0)
        started = time.perf_counter()
        output = run(command)
        print(f"{command}: {time.perf_counter() - started:.0f} s", flush=True)
        return (f"{match['open']}```text\n$ {command}\n{output}\n```\n"
                f"<sub>Printed at commit {commit} by `python benchmarks/readme_outputs.py`.</sub>\n{match['close']}")

    new = BLOCK.sub(replace, text)
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
