"""``spikecast inspect MODEL``: every operation and what conversion does with it (no data needed)."""

from __future__ import annotations

import argparse
import json

from spikecast.cli.args import EXIT_MISSED, EXIT_OK, add_model_args, parse_shape
from spikecast.cli.common import say
from spikecast.inspection import inspect
from spikecast.models import parse_model_ref
from spikecast.nn.encoding import ENCODINGS
from spikecast.recipe import MAXPOOL_METHODS
from spikecast.targets import TARGETS


def register(sub, parents) -> None:
    p = sub.add_parser("inspect", parents=parents, help="list every op and what conversion does with it",
                       description="Trace MODEL (no data needed) and print every operation with its module path and "
                                   "what conversion will do with it. Exit code 1 if any op is unsupported.")
    p.add_argument("model", metavar="MODEL", help="zoo:<name>, a timm name, or file.py:Name")
    add_model_args(p, "weights to load (not needed: the graph does not depend on them)")
    p.add_argument("--input-shape", metavar="C,H,W", help="shape of one input (default: the model's, when known)")
    p.add_argument("--encoding", choices=ENCODINGS, default="analog")
    p.add_argument("--compensate", action=argparse.BooleanOptionalAction, default=True,
                   help="non-linear ops inside the spiking part run with expectation compensation (default); "
                        "--no-compensate lists them as unsupported")
    p.add_argument("--target", choices=sorted(TARGETS),
                   help="also check a hardware target: which layers fit its cores, what does not and why "
                        "(exit code 1 when it does not fit)")
    p.add_argument("--maxpool", choices=MAXPOOL_METHODS, default="moved",
                   help="the conversion's max-pool method whose rewrite to show (as convert --maxpool; "
                        "default moved)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--text", action="store_true", help="aligned text instead of a Markdown table")
    output.add_argument("--json", action="store_true", help="machine-readable JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    # weights are not needed for the graph: only the ones asked for are loaded
    report = inspect(parse_model_ref(args.model), input_shape=parse_shape(args.input_shape),
                     checkpoint=args.checkpoint, pretrained=args.pretrained, encoding=args.encoding,
                     compensate=args.compensate, trust_checkpoint=args.trust_checkpoint, target=args.target,
                     maxpool=args.maxpool)
    if args.json:
        say(json.dumps(report.to_dict(), indent=2))
    else:
        say(report.table(markdown=not args.text))
    fits = report.target is None or report.target.fits
    return EXIT_OK if report.ok and fits else EXIT_MISSED
