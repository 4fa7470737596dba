"""The ``spikecast`` command line: one module per command, each a thin layer over the library.

    spikecast demo [--out DIR]                           # digits CNN -> SNN -> validated, offline, < 1 min
    spikecast inspect MODEL [--input-shape 3,32,32]      # what happens to every op; exit 1 if unsupported
    spikecast convert MODEL --data SPEC [--out DIR]      # convert + validate + save (spikecast.jobs.run_job)
    spikecast validate SNN_DIR [--data SPEC]             # validate a saved SNN against its ANN
    spikecast finetune MODEL --data SPEC [--method qcfs] # QCFS / surrogate fine-tune for 4-8 steps (resumable)
    spikecast quantize SNN_DIR --bits 8 [--data SPEC]    # int8 / int4 weights, accuracy before / after
    spikecast export --model M | --snn DIR --out DIR     # ONNX: ANN, int8 ANN (onnxruntime), SNN step graph
    spikecast report SNN_DIR [--data SPEC] [--out DIR]   # HTML / Markdown / JSON report with plots and energy
    spikecast batch JOBS.toml [--out DIR] [--force]      # many jobs, one summary; resumes finished jobs

Flags are named after the library arguments they feed (see :mod:`spikecast.cli.args`). Exit codes:
0 success; 1 ran, but the SNN missed its tolerance (inspect: unsupported operations); 2 error
(usage, bad input, a library error: one line ``spikecast: error: ...``; ``--debug`` shows the
traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata
from typing import Optional, Sequence

import torch.distributed as dist

from spikecast.cli import batch, convert, demo, export, finetune, inspect, quantize, report, validate
from spikecast.cli.args import EXIT_ERROR, parse_shape, parse_timesteps
from spikecast.cli.common import friendly_warnings
from spikecast.errors import SpikecastError

__all__ = ["main", "build_parser", "parse_timesteps", "parse_shape", "COMMANDS"]

#: The commands, in the order of ``spikecast --help``.
COMMANDS = (demo, inspect, convert, validate, finetune, quantize, export, report, batch)
MAX_MESSAGE = 2000  # characters of an error message on its one line (--debug shows all)


def _version() -> str:
    try:
        return metadata.version("spikecast")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's default must not undo `spikecast --debug COMMAND ...`
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of errors")
    parser = argparse.ArgumentParser(
        prog="spikecast", parents=[common],
        description="Convert pretrained PyTorch / timm networks into spiking neural networks, calibrate, validate, "
                    "report and save them.",
        epilog="Exit codes: 0 success; 1 the SNN missed its tolerance (inspect: unsupported ops); 2 error. "
               "Start with `spikecast demo`.")
    parser.add_argument("--version", action="version", version=f"spikecast {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub, [common])
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 30] + "... (--debug shows all)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``spikecast`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0), usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        with friendly_warnings():
            return int(args.func(args))
    except KeyboardInterrupt:
        print("spikecast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `spikecast inspect MODEL | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (SpikecastError, ValueError, OSError) as exc:  # FileNotFoundError is an OSError
        if getattr(args, "debug", False):
            raise
        print(f"spikecast: error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
