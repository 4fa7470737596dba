"""Read weight files into plain state dicts and load them into models.

Supported formats:

* PyTorch pickles (``.pth``, ``.pt``, ``.th``, ``.bin``, ``.ckpt``...): read with
  ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers. A file
  that also pickles other Python objects (an ``argparse.Namespace`` of training arguments, a
  whole model class...) is refused with :class:`~spikecast.errors.UntrustedCheckpointError`:
  reading it means running code from the file, which happens only when the caller passes
  ``trust_checkpoint=True`` (CLI: ``--trust-checkpoint``).
* ``.safetensors`` files (recognised by their content too, whatever the suffix).

Training checkpoints often wrap the weights (``{"state_dict": ..., "epoch": ...}``,
``{"model": ...}``, ``{"state_dict_ema": ...}``) and prefix their keys with
``module.`` (``DataParallel``) or ``_orig_mod.`` (``torch.compile``);
:func:`load_state_dict` unwraps and strips both.

Every failure is one line naming the file: missing
(:class:`~spikecast.errors.CheckpointNotFoundError`), empty / truncated / not a weight file
(:class:`~spikecast.errors.CorruptCheckpointError`), needs unpickling of arbitrary objects
(:class:`~spikecast.errors.UntrustedCheckpointError`), or weights that do not fit the model
(:class:`~spikecast.errors.CheckpointMismatchError`, listing missing / unexpected keys and
shape mismatches).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, TypeVar

import torch
from torch import Tensor, nn

from spikecast.errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UntrustedCheckpointError,
    one_line,
)

__all__ = ["load_state_dict", "load_checkpoint", "strip_key_prefixes", "unwrap_state_dict"]

#: Keys under which checkpoints nest their weights, in order of preference.
NESTED_STATE_DICT_KEYS: tuple[str, ...] = (
    "state_dict",
    "model",
    "model_state_dict",
    "state_dict_ema",
    "ema",
)

#: Key prefixes added by ``nn.DataParallel`` / DDP and by ``torch.compile``.
WRAPPER_KEY_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")

#: How many missing / unexpected keys an error message lists.
MAX_KEYS_IN_ERROR = 10

#: What to tell the user about ``trust_checkpoint``.
TRUST_HINT = "pass trust_checkpoint=True (CLI: --trust-checkpoint) only if you trust this file"

ModuleT = TypeVar("ModuleT", bound=nn.Module)

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # first byte of a pickle of protocol >= 2 (torch's legacy format)


def _sniff(path: Path) -> str:
    """``"safetensors"``, ``"torch"`` (zip or legacy pickle) or ``"unknown"``, from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        raise CorruptCheckpointError(f"checkpoint {path} is empty (0 bytes): not a torch/safetensors file")
    if head.startswith(_ZIP_MAGIC) or head[0] == _PICKLE_PROTO:
        return "torch"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    return "unknown"


def load_error_detail(error: BaseException) -> str:
    """The useful part of a ``torch.load`` / safetensors error, on one line (torch's weights-only
    errors open with a long generic preamble)."""
    text = " ".join(str(error).split())
    match = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text)
    if match and match.group(1):
        text = match.group(1)
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return f"{type(error).__name__}: {one_line(text, 160)}"


def _corrupt(path: Path, kind: str, error: BaseException) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"checkpoint {path} is truncated or corrupt (not a readable {kind} file: {load_error_detail(error)})"
    )


def refused_pickle_object(error: BaseException) -> Optional[str]:
    """What pickled object torch's weights-only unpickler refused (e.g. ``"argparse.Namespace"``), or
    None when the error is not about a refused global (garbage bytes, a truncated file)."""
    text = str(error)
    match = re.search(r"GLOBAL\s+([\w.]+)", text)
    if match:
        return match.group(1)
    if re.search(r"safe_globals|unsupported class|allowlist", text, re.IGNORECASE):
        return "Python objects other than tensors"
    return None


def _read_file(path: Path, trust_checkpoint: bool = False) -> Any:
    """Deserialise ``path`` into whatever object it holds (dict, module...).

    Pickled code runs only when ``trust_checkpoint`` is True; otherwise a file that needs it
    raises :class:`UntrustedCheckpointError`.
    """
    kind = _sniff(path)
    if kind == "unknown" and path.suffix != ".safetensors":
        with open(path, "rb") as handle:
            head = handle.read(8).hex(" ")
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated or corrupt (not a torch/safetensors file: it starts with bytes {head})"
        )
    if kind == "safetensors" or path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # noqa: BLE001 - SafetensorError and friends
            raise _corrupt(path, "safetensors", error) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = refused_pickle_object(error)
        if not trust_checkpoint:
            if refused is None:
                raise _corrupt(path, "torch", error) from None
            raise UntrustedCheckpointError(
                f"checkpoint {path} holds pickled Python objects ({refused}) that only load by running code "
                f"from the file; {TRUST_HINT}"
            ) from None
    except (EOFError, RuntimeError, ValueError, zipfile.BadZipFile, UnicodeDecodeError, AttributeError,
            ImportError, IndexError, KeyError, TypeError, OverflowError, MemoryError) as error:
        raise _corrupt(path, "torch", error) from None
    # trust_checkpoint=True, and the weights-only reader refused the file: the caller vouches for it.
    try:
        return torch.load(path, map_location="cpu", weights_only=False)  # trusted path only
    except Exception as error:  # noqa: BLE001 - anything the full unpickler raises
        raise _corrupt(path, "torch", error) from None


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """Return the tensor state dict inside a checkpoint object.

    ``obj`` may be a state dict, a module, or a mapping nesting one of those under
    a key of :data:`NESTED_STATE_DICT_KEYS` (``state_dict`` preferred), at any
    depth.  Non-tensor entries next to tensors (e.g. ``_extra_state``) are
    dropped.  ``source`` names the file in error messages.
    """
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state dict or a mapping holding one, got {type(obj).__name__}")
    if obj and all(isinstance(value, Tensor) for value in obj.values()):
        return dict(obj)
    for key in NESTED_STATE_DICT_KEYS:
        nested = obj.get(key)
        if isinstance(nested, (Mapping, nn.Module)):
            return unwrap_state_dict(nested, source)
    tensors = {key: value for key, value in obj.items() if isinstance(value, Tensor)}
    if tensors:
        return tensors
    raise CheckpointError(
        f"{source}: no tensors found; top-level keys are {sorted(map(str, obj))[:MAX_KEYS_IN_ERROR]} "
        f"and none of {list(NESTED_STATE_DICT_KEYS)} holds a state dict"
    )


def strip_key_prefixes(state_dict: Mapping[str, Tensor], prefixes: tuple[str, ...] = WRAPPER_KEY_PREFIXES) -> dict[str, Tensor]:
    """Remove leading wrapper prefixes (``module.``, ``_orig_mod.``, repeated or mixed) from every key."""
    stripped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new_key = key
        while True:
            prefix = next((p for p in prefixes if new_key.startswith(p)), None)
            if prefix is None:
                break
            new_key = new_key[len(prefix):]
        stripped[new_key] = value
    return stripped


def load_state_dict(path: str | Path, *, trust_checkpoint: bool = False) -> dict[str, Tensor]:
    """Read a weight file into a flat ``{name: tensor}`` dict on the CPU.

    Nested checkpoints are unwrapped (see :func:`unwrap_state_dict`) and the
    ``module.`` / ``_orig_mod.`` key prefixes are stripped.

    Args:
        path: a torch pickle or a safetensors file.
        trust_checkpoint: allow reading a torch file that pickles arbitrary Python objects,
            which runs code from the file. Only for files you trust.

    Raises:
        CheckpointNotFoundError (a FileNotFoundError): ``path`` does not exist.
        CorruptCheckpointError (a ValueError): empty, truncated or not a weight file.
        UntrustedCheckpointError (a ValueError): the file needs ``trust_checkpoint=True``.
        CheckpointError (a ValueError): the file holds no tensors.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} is a {'folder' if path.is_dir() else 'special file'}, "
                                      "not a weight file")
    return strip_key_prefixes(unwrap_state_dict(_read_file(path, trust_checkpoint), source=str(path)))


def _format_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_IN_ERROR])
    more = f", ... {len(keys) - MAX_KEYS_IN_ERROR} more" if len(keys) > MAX_KEYS_IN_ERROR else ""
    return f"({shown}{more})"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else ("es" if what.endswith("ch") else "s"))


def load_checkpoint(model: ModuleT, path: str | Path, strict: bool = True, *, trust_checkpoint: bool = False,
                    model_name: Optional[str] = None) -> ModuleT:
    """Load the weights in ``path`` into ``model`` (in place) and return ``model``.

    Nothing is copied into ``model`` unless the whole file fits: a mismatch leaves the model's
    weights as they were.

    Args:
        model: the module to fill.
        path: a weight file readable by :func:`load_state_dict`.
        strict: if True, any missing or unexpected key is an error.
        trust_checkpoint: see :func:`load_state_dict`.
        model_name: how error messages name the model (default: its class name).

    Raises:
        CheckpointNotFoundError (a FileNotFoundError): ``path`` does not exist.
        CheckpointMismatchError (a ValueError): tensor shapes differ, or (``strict``) keys do not
            match; the one-line message names the file and lists up to ten keys of each kind.
        CorruptCheckpointError / UntrustedCheckpointError: see :func:`load_state_dict`.
    """
    state_dict = load_state_dict(path, trust_checkpoint=trust_checkpoint)
    expected = model.state_dict()
    name = model_name or type(model).__name__

    def mismatch(missing: list[str], unexpected: list[str], shapes: list[str]) -> Optional[CheckpointMismatchError]:
        missing = [key for key in missing if not _optional_key(key)]
        unexpected = [key for key in unexpected if not _optional_key(key)]
        problems = []
        if strict and missing:
            problems.append(f"{_count(len(missing), 'missing key')} {_format_keys(missing)}")
        if strict and unexpected:
            problems.append(f"{_count(len(unexpected), 'unexpected key')} {_format_keys(unexpected)}")
        if shapes:
            problems.append(f"{_count(len(shapes), 'shape mismatch')} {_format_keys(shapes)}")
        if not problems:
            return None
        hint = ""
        if strict and expected and not any(key in expected for key in state_dict):
            hint = f"; no key in common (the file has {_count(len(state_dict), 'tensor')}: is it for another model?)"
        return CheckpointMismatchError(f"checkpoint {path} does not fit {name}: {', '.join(problems)}{hint}")

    # Check before copying anything, so that a file that does not fit leaves the model as it was.
    shapes = [
        f"{key}: file {tuple(tensor.shape)} vs model {tuple(expected[key].shape)}"
        for key, tensor in state_dict.items()
        if key in expected and not isinstance(expected[key], nn.parameter.UninitializedParameter)
        and tensor.shape != expected[key].shape
    ]
    # Modules with load hooks may rename keys (old weight-norm files...): let torch decide for those.
    hooked = any(getattr(module, "_load_state_dict_pre_hooks", None) for module in model.modules())
    error = mismatch([] if hooked else [key for key in expected if key not in state_dict],
                     [] if hooked else [key for key in state_dict if key not in expected], shapes)
    if error is not None:
        raise error
    result = model.load_state_dict(state_dict, strict=False)
    error = mismatch(list(result.missing_keys), list(result.unexpected_keys), [])
    if error is not None:
        raise error
    return model


def _optional_key(key: str) -> bool:
    """BatchNorm's ``num_batches_tracked`` counter: torch fills it in when a file lacks it (older
    checkpoints) and frozen BatchNorms drop it, so it never makes a file not fit."""
    return key.rsplit(".", 1)[-1] == "num_batches_tracked"
