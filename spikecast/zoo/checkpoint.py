"""Read weight files into plain state dicts and load them into models.

Supported formats:

* PyTorch pickles (``.pth``, ``.pt``, ``.th``, ``.bin``, ``.ckpt``...): read with
  ``torch.load(weights_only=True)``; only if that refuses the file is it read
  again with ``weights_only=False``, with a warning, because that can run
  arbitrary code from the file.
* ``.safetensors`` files.

Training checkpoints often wrap the weights (``{"state_dict": ..., "epoch": ...}``,
``{"model": ...}``, ``{"state_dict_ema": ...}``) and prefix their keys with
``module.`` (``DataParallel``) or ``_orig_mod.`` (``torch.compile``);
:func:`load_state_dict` unwraps and strips both.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

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

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _read_file(path: Path) -> Any:
    """Deserialise ``path`` into whatever object it holds (dict, module...)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        warnings.warn(
            f"{path} could not be read with torch.load(weights_only=True) ({error}). "
            "Reading it with weights_only=False instead, which executes pickled code "
            "from the file: only do this for files you trust.",
            UserWarning,
            stacklevel=3,
        )
        return torch.load(path, map_location="cpu", weights_only=False)


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
        raise ValueError(f"{source}: expected a state dict or a mapping holding one, got {type(obj).__name__}")
    if obj and all(isinstance(value, Tensor) for value in obj.values()):
        return dict(obj)
    for key in NESTED_STATE_DICT_KEYS:
        nested = obj.get(key)
        if isinstance(nested, (Mapping, nn.Module)):
            return unwrap_state_dict(nested, source)
    tensors = {key: value for key, value in obj.items() if isinstance(value, Tensor)}
    if tensors:
        return tensors
    raise ValueError(
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


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a weight file into a flat ``{name: tensor}`` dict on the CPU.

    Nested checkpoints are unwrapped (see :func:`unwrap_state_dict`) and the
    ``module.`` / ``_orig_mod.`` key prefixes are stripped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    return strip_key_prefixes(unwrap_state_dict(_read_file(path), source=str(path)))


def _format_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_IN_ERROR])
    more = f", ... ({len(keys) - MAX_KEYS_IN_ERROR} more)" if len(keys) > MAX_KEYS_IN_ERROR else ""
    return f"{len(keys)}: [{shown}{more}]"


def load_checkpoint(model: ModuleT, path: str | Path, strict: bool = True) -> ModuleT:
    """Load the weights in ``path`` into ``model`` (in place) and return ``model``.

    Args:
        model: the module to fill.
        path: a weight file readable by :func:`load_state_dict`.
        strict: if True, any missing or unexpected key is an error.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: tensor shapes differ, or (``strict``) keys do not match; the
            message names the file and lists up to ten keys of each kind.
    """
    state_dict = load_state_dict(path)
    expected_shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    shape_mismatches = [
        f"{name}: file {tuple(tensor.shape)} vs model {tuple(expected_shapes[name])}"
        for name, tensor in state_dict.items()
        if name in expected_shapes and tensor.shape != expected_shapes[name]
    ]
    if shape_mismatches:
        raise ValueError(
            f"checkpoint {path} does not fit {type(model).__name__}: shape mismatches "
            f"{_format_keys(shape_mismatches)}"
        )
    result = model.load_state_dict(state_dict, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise ValueError(
            f"checkpoint {path} does not match {type(model).__name__}:\n"
            f"  missing keys {_format_keys(list(result.missing_keys))}\n"
            f"  unexpected keys {_format_keys(list(result.unexpected_keys))}"
        )
    return model
