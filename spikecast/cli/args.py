"""Flags shared by several commands, their parsing, and the deprecated old names.

Naming: a flag is the library argument it feeds, with ``-`` for ``_``. The recipe flags of
``convert`` / ``finetune`` are :class:`spikecast.recipe.Recipe`'s fields (``--timesteps T``: the
budget calibrated for, ``--thresholds``, ``--correction``, ``--calib-images``...). The budgets a
command validates at are ``--eval-timesteps LIST`` on every command that validates; ``validate``,
``quantize`` and ``report`` (whose library call takes the list as ``timesteps``) also take it as
``--timesteps LIST``. Old names still work and print a one-line deprecation note.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from spikecast.jobs import parse_timesteps
from spikecast.nn.encoding import ENCODINGS
from spikecast.nn.simulation import DEFAULT_EVAL_TIMESTEPS
from spikecast.recipe import (AUTO_RECONSTRUCT_DROP, AUTO_RECONSTRUCT_LEVELS, AUTO_RECONSTRUCT_TIMESTEPS,
                               MAXPOOL_METHODS, PROFILES, RECONSTRUCT_MODES, Recipe, build_recipe)

__all__ = ["parse_timesteps", "parse_shape", "parse_floats", "parse_confidences", "positive_int", "int_flag",
           "Deprecated",
           "add_model_args", "add_data_args", "add_eval_args", "add_recipe_args", "recipe_from", "eval_timesteps",
           "EXIT_OK", "EXIT_MISSED", "EXIT_ERROR", "THRESHOLDS", "CORRECTIONS", "RECIPE_FLAGS"]

#: Exit codes: 0 success; 1 ran, but the SNN missed its tolerance (inspect: unsupported ops; batch: a
#: job missed it); 2 error (bad usage, bad input, a library error; batch: a job failed).
EXIT_OK, EXIT_MISSED, EXIT_ERROR = 0, 1, 2
THRESHOLDS = ("mse", "percentile", "max")
CORRECTIONS = ("none", "light", "advanced")
CORRECTION_FORMS = ("current", "charge")
EVAL_DEFAULT = ",".join(str(t) for t in DEFAULT_EVAL_TIMESTEPS)
#: Recipe fields with a flag of the same name, read by :func:`recipe_from` (``timesteps`` too).
RECIPE_FLAGS = ("thresholds", "percentile", "per_channel", "correction", "correction_form", "signed", "levels", "v_init",
                "mask_ratio", "mask_seed", "compensate", "encoding", "calib_images", "profile", "weight_bits",
                "reconstruct", "reconstruct_steps", "distill_steps", "maxpool", "reconstruct_timesteps",
                "reconstruct_drop")


def note(text: str) -> None:
    print(f"spikecast: note: {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- values
def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "positive")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "non-negative")


def auto_or_positive_int(text: str):
    """``"auto"`` or a positive integer."""
    return "auto" if text == "auto" else _int_at_least(text, 1, "positive")


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}") from None
    if not value >= 0:  # (nan fails too)
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value:g}")
    return value


def auto_or_fraction(text: str):
    """``"auto"`` or a number in [0, 1)."""
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a fraction in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value:g}")
    return value


def int_flag(flag: str, text: Optional[str]) -> Optional[int]:
    """A positive integer given as text (a flag read as a string first), or None."""
    if text is None:
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"{flag}: {exc}") from None


def parse_shape(text: Optional[str]) -> Optional[tuple[int, ...]]:
    """``"3,32,32"`` or ``"3x32x32"`` -> (3, 32, 32) (one input, no batch dimension)."""
    if text is None:
        return None
    try:
        shape = tuple(int(t) for t in str(text).lower().replace("x", ",").split(",") if t.strip())
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"cannot read --input-shape {text!r}: give the shape of one input, e.g. 3,32,32")
    return shape


def parse_floats(text: Optional[str], flag: str) -> Optional[tuple[float, ...]]:
    if text is None:
        return None
    try:
        return tuple(float(t) for t in str(text).split(",") if t.strip())
    except ValueError:
        raise ValueError(f"cannot read {flag} {text!r}: give comma-separated numbers, e.g. 0.485,0.456,0.406") from None


def parse_confidences(text: Optional[str]) -> tuple[float, ...]:
    """``--early-exit 0.9`` or ``0.9,0.99`` -> confidences in (0, 1]."""
    values = parse_floats(text, "--early-exit") or ()
    if any(not 0.0 < c <= 1.0 for c in values):
        raise ValueError(f"--early-exit takes confidences in (0, 1], got {text!r}")
    return values


class Deprecated(argparse.Action):
    """An old flag name: stores into the new flag's ``dest`` and prints a one-line note (hidden in --help)."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        kwargs["help"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        note(f"{option_string} is deprecated, use {self.new}")
        setattr(namespace, self.dest, values)


# ------------------------------------------------------------------------------------------- groups
def add_model_args(p, weights_help: str = "local weights file (.pth/.pt/.th/.safetensors)") -> None:
    p.add_argument("--checkpoint", metavar="FILE", help=weights_help)
    p.add_argument("--pretrained", action="store_true", default=None,
                   help="load the model's default weights (zoo: the default; timm: downloads)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint that unpickles Python objects (runs code from the file: only for "
                        "files you trust)")


def add_data_args(p, required: bool = True) -> None:
    """The data read, and how images are normalised."""
    p.add_argument("--data", metavar="SPEC", required=required,
                   help="cifar10[:test], digits[:test], a folder of class subfolders, or a .pt file of x or (x, y)"
                        + ("" if required else " (default: recorded in SNN_DIR)"))
    p.add_argument("--eval-images", type=positive_int, metavar="N", help="validate on N images (class-balanced; "
                                                                           "default all)")
    p.add_argument("--mean", metavar="M,M,M", help="image folders: normalisation mean (default: the model's)")
    p.add_argument("--std", metavar="S,S,S", help="image folders: normalisation std (default: the model's)")
    p.add_argument("--size", type=positive_int, metavar="PX",
                   help="image folders: resize + centre-crop to PX (default: the model's)")
    p.add_argument("--workers", type=non_negative_int, metavar="N",
                   help="image folders: processes that decode the evaluation images while the network runs "
                        "(default: up to 4 when there is more than one batch; 0 decodes in this process)")


def add_eval_args(p, *, list_flag_is_timesteps: bool = False, default: str = EVAL_DEFAULT,
                  early_exit: Optional[str] = None) -> None:
    """Validation: budgets, tolerance, early exit, batch size, device."""
    flags = ("--timesteps", "--eval-timesteps") if list_flag_is_timesteps else ("--eval-timesteps",)
    p.add_argument(*flags, dest="eval_timesteps", default=None if not list_flag_is_timesteps else default,
                   metavar="LIST", help=f"budgets T to validate at, e.g. 1,2,4,...,128 or 32,64 (default {default})")
    if not list_flag_is_timesteps:
        p.set_defaults(eval_default=default)
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="allowed drop of top-1 at the largest T, as a fraction (default 0.01 = 1 point)")
    p.add_argument("--early-exit", metavar="CONF[,CONF]", default=early_exit,
                   help="also report early exit: a sample stops once the softmax of its mean output reaches CONF"
                        + (f" (default {early_exit})" if early_exit else ""))
    p.add_argument("--batch-size", type=positive_int, default=128, metavar="B", help="batch size (default 128)")
    p.add_argument("--device", help="cpu (default), cuda, cuda:1, mps, auto (checked: an unavailable device is an "
                                    "error)")
    p.add_argument("--compile", action="store_true",
                   help="simulate with each step graph compiled (torch.compile): the same values, faster over many "
                        "images after a compile of seconds to a minute")


def add_recipe_args(p) -> None:
    """The conversion recipe (:class:`spikecast.recipe.Recipe`); defaults are the recipe's."""
    r = Recipe()
    p.add_argument("--timesteps", metavar="T",
                   help=f"the budget T the SNN is calibrated for (and its default T) (default {r.timesteps})")
    p.add_argument("--budget", type=positive_int, dest="budget", action=Deprecated, new="--timesteps")
    p.add_argument("--thresholds", choices=THRESHOLDS, help=f"threshold selection (default {r.thresholds})")
    p.add_argument("--method", choices=THRESHOLDS, dest="thresholds", action=Deprecated, new="--thresholds")
    p.add_argument("--percentile", type=float, help=f"--thresholds percentile: which one (default {r.percentile:g})")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None,
                   help="one threshold per channel; --no-per-channel: one per layer (default: per channel where a "
                        "reconstruction starts from them at --timesteps x --levels <= 4, else per layer)")
    p.add_argument("--correction", choices=("auto",) + CORRECTIONS,
                   help="layer-wise correction with the ANN as teacher: light = bias + potential, advanced = + "
                        f"threshold refinement (default {r.correction}: light after a reconstruction, else advanced)")
    p.add_argument("--calibration", choices=CORRECTIONS, dest="correction", action=Deprecated, new="--correction")
    p.add_argument("--correction-form", choices=("auto",) + CORRECTION_FORMS,
                   help="current: per-step currents sized for --timesteps (plus initial charge); charge: initial "
                        f"charge only, which fades in longer runs (default {r.correction_form}: charge after a "
                        "reconstruction, else current)")
    p.add_argument("--signed", action=argparse.BooleanOptionalAction, default=None,
                   help="signed neurons: a neuron may take back a spike it sent on a transient (default on; "
                        "--no-signed for binary spikes)")
    p.add_argument("--levels", type=positive_int, metavar="K",
                   help="multi-threshold neurons: up to K spikes per step (default 1; log2(K+1) bits per step)")
    p.add_argument("--v-init", type=float, metavar="F", help=f"initial potential / threshold (default {r.v_init})")
    p.add_argument("--mask-ratio", type=float, metavar="P",
                   help="random spike masking: drop each spike with probability P (rescaled)")
    p.add_argument("--mask-seed", type=int, metavar="S", help="--mask-ratio: seed of the masks (default 0)")
    p.add_argument("--compensate", action=argparse.BooleanOptionalAction, default=None,
                   help="run GELU / LayerNorm / softmax / attention... inside the spiking part with expectation "
                        "compensation (default); --no-compensate refuses them, naming each module path")
    p.add_argument("--encoding", choices=ENCODINGS, help="input encoding (default analog)")
    p.add_argument("--calib-images", type=positive_int, metavar="N",
                   help=f"class-balanced calibration images (default {r.calib_images})")
    p.add_argument("--profile", choices=PROFILES,
                   help="nir: only what a NIR IF node carries (binary spikes, zero start, no compensation), in NIR "
                        f"units, for `spikecast export --nir` (default {r.profile})")
    p.add_argument("--reconstruct", choices=RECONSTRUCT_MODES,
                   help="label-free reconstruction: train the network's quantised twin against the ANN on the "
                        f"calibration images before conversion (auto: when timesteps x levels <= "
                        f"{AUTO_RECONSTRUCT_LEVELS}; default {r.reconstruct})")
    p.add_argument("--reconstruct-steps", type=positive_int, metavar="N",
                   help=f"--reconstruct: optimiser steps (default {r.reconstruct_steps})")
    p.add_argument("--reconstruct-timesteps", type=auto_or_positive_int, metavar="T",
                   help="--reconstruct: the budget the reconstruction, correction and distillation train for; the "
                        "SNN still runs --timesteps (auto: --timesteps, at most "
                        f"{AUTO_RECONSTRUCT_TIMESTEPS}; default {r.reconstruct_timesteps})")
    p.add_argument("--reconstruct-drop", type=auto_or_fraction, metavar="P",
                   help="--reconstruct: share of the twin's activations passed unrounded at each step (QDrop; "
                        f"auto: {AUTO_RECONSTRUCT_DROP:g} when it trains for fewer steps than --timesteps, else 0; "
                        f"default {r.reconstruct_drop})")
    p.add_argument("--distill-steps", type=non_negative_int, metavar="N",
                   help="--reconstruct: steps of backpropagation through time that then train the SNN itself "
                        f"against the ANN, no labels (0: none; default {r.distill_steps})")
    p.add_argument("--maxpool", choices=MAXPOOL_METHODS,
                   help="max-pools inside the spiking part: moved (before the neurons, also through channel "
                        "concatenations; pools currents), spikes (a pool of a concatenation pools its spikes), "
                        "gate (as spikes, with Rueckauer's gate), decompose (a pool of a concatenation becomes "
                        f"the exact tree max(a, b) = b + relu(a - b) of extra neuron layers) (default {r.maxpool})")
    p.add_argument("--weight-bits", type=positive_int, metavar="B",
                   help="--profile nir: weights and biases on a power-of-two grid of B bits per layer (every NIR "
                        "reader then computes the same membranes bit for bit; 8 = Speck's resolution)")


def _is_list(text: Optional[str]) -> bool:
    return text is not None and ("," in text or "..." in text)


def eval_timesteps(args) -> list[int]:
    """The budgets to validate at; on convert / finetune an old ``--timesteps LIST`` is taken as
    ``--eval-timesteps`` (with a note) and ``--budget`` as ``--timesteps``."""
    if hasattr(args, "budget"):  # a command with recipe flags: --timesteps is the budget
        if _is_list(args.timesteps):
            if args.eval_timesteps is not None:
                raise ValueError("--timesteps is the budget T calibrated for (one number); the budgets to validate "
                                 "at are --eval-timesteps")
            note("--timesteps LIST is deprecated here: the budgets to validate at are --eval-timesteps LIST, "
                 "--timesteps T is the budget the SNN is calibrated for")
            args.eval_timesteps, args.timesteps = args.timesteps, None
        if args.budget is not None:
            if args.timesteps is not None:
                raise ValueError("--budget (deprecated) and --timesteps name the same budget: give --timesteps only")
            args.timesteps = str(args.budget)
    text = args.eval_timesteps if args.eval_timesteps is not None else getattr(args, "eval_default", EVAL_DEFAULT)
    return parse_timesteps(text)


def recipe_from(args, base: Recipe = Recipe()) -> Recipe:
    """``base`` with the recipe flags given (call :func:`eval_timesteps` first)."""
    given = {}
    for name in RECIPE_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            given[name] = value
    if getattr(args, "timesteps", None) is not None:
        given["timesteps"] = int_flag("--timesteps", args.timesteps)
    recipe = build_recipe(base, **given)  # (profile="nir" brings its fields)
    if "percentile" in given and recipe.thresholds != "percentile":
        raise ValueError(f"--percentile applies to --thresholds percentile (the thresholds are {recipe.thresholds})")
    if "mask_seed" in given and not recipe.mask_ratio:
        raise ValueError("--mask-seed seeds random spike masking: give --mask-ratio P too")
    return recipe


def add_saved_snn_args(p, *, early_exit: Optional[str] = None) -> None:
    """SNN_DIR, and its ANN and data (default: those recorded in SNN_DIR), validated at a list of
    budgets (``--timesteps LIST`` as well as ``--eval-timesteps``)."""
    p.add_argument("snn_dir", metavar="SNN_DIR")
    p.add_argument("--model", metavar="MODEL", help="the source ANN (default: recorded in SNN_DIR)")
    add_model_args(p)
    add_data_args(p, required=False)
    add_eval_args(p, list_flag_is_timesteps=True, early_exit=early_exit)
