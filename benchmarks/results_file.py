"""Shared helper of the benchmark scripts: replace one `## ` section of benchmarks/RESULTS.md."""

from __future__ import annotations

import platform
import re
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TITLE = "# spikecast benchmark results\n\nEach section is written by the script it names; rerun it to refresh.\n"


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"Machine: {cpu}, {torch.get_num_threads()} torch threads; torch {torch.__version__}; "
            f"Python {platform.python_version()}. Command: `{' '.join(['python'] + sys.argv)}`")


def update_section(heading: str, body: str, path: Path = RESULTS) -> None:
    """Write ``## heading`` + body into RESULTS.md, replacing that section only."""
    text = path.read_text() if path.exists() else TITLE
    block = f"## {heading}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text.rstrip() + "\n")
