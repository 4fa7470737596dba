"""Resolve what the user names as a model: an nn.Module, ``"zoo:<name>"`` or a timm model name."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Optional, Union

from torch import nn

from spikecast import zoo
from spikecast.errors import UnknownModelError
from spikecast.zoo.registry import close_matches

ModelLike = Union[nn.Module, str]


def resolve_model(model: ModelLike, checkpoint: Optional[Union[str, Path]] = None,
                  pretrained: Optional[bool] = None, *, trust_checkpoint: bool = False) -> tuple[nn.Module, str]:
    """Return ``(module in eval mode, display name)``.

    * ``nn.Module``: used as is (``checkpoint`` loaded into it when given).
    * ``"zoo:<name>"``: a spikecast zoo model; ``pretrained`` defaults to True (its bundled
      default checkpoint from the shared folder).
    * any other string: a timm model name, built with ``pretrained=False`` unless asked
      (``pretrained=True`` downloads timm's weights, which needs internet).

    ``trust_checkpoint``: allow ``checkpoint`` to be a torch file that pickles arbitrary Python
    objects - reading it runs code from the file. Only for files you trust (CLI:
    ``--trust-checkpoint``).

    Raises:
        UnknownModelError (a ValueError): not a zoo / timm name; the message lists close matches.
        CheckpointError (a ValueError) / CheckpointNotFoundError (a FileNotFoundError): the
            checkpoint cannot be read or does not fit (see :func:`spikecast.zoo.load_checkpoint`).
    """
    if isinstance(model, nn.Module):
        name = type(model).__name__
        if checkpoint is not None:
            zoo.load_checkpoint(model, checkpoint, trust_checkpoint=trust_checkpoint)
        return model.eval(), name
    if not isinstance(model, str) or not model.strip():
        raise TypeError(f"model must be an nn.Module, 'zoo:<name>' or a timm model name; got {model!r}")
    model = model.strip()
    if model.startswith("zoo:"):
        name = model[4:]
        if not zoo.is_model(name):
            close = close_matches(name, zoo.list_models())
            hint = f"did you mean {', '.join('zoo:' + c for c in close)}? " if close else ""
            raise UnknownModelError(f"unknown zoo model {name!r}; {hint}available: {', '.join(zoo.list_models())}")
        use_default = pretrained if pretrained is not None else checkpoint is None
        net = zoo.create_model(name, pretrained=bool(use_default and checkpoint is None), checkpoint=checkpoint,
                               trust_checkpoint=trust_checkpoint)
        return net.eval(), model
    import timm

    if Path(model).suffix in (".pth", ".pt", ".th", ".safetensors", ".bin", ".ckpt"):
        raise ValueError(f"{model!r} looks like a checkpoint file: pass the architecture as `model` "
                         "(timm name or zoo:<name>) and the file as `checkpoint=`")
    if not timm.is_model(model):
        close = close_matches(model, zoo.list_models())
        close = [f"zoo:{c}" for c in close] + [c for c in close_matches(model, timm.list_models(), n=8)
                                                if c not in close]
        hint = f" Did you mean: {', '.join(close[:8])}?" if close else ""
        raise UnknownModelError(f"{model!r} is neither a zoo model (zoo:<name>) nor a timm model.{hint}")
    net = timm.create_model(model, pretrained=bool(pretrained))
    if checkpoint is not None:
        zoo.load_checkpoint(net, checkpoint, trust_checkpoint=trust_checkpoint, model_name=model)
    return net.eval(), model


def default_input_shape(model: ModelLike, module: nn.Module) -> Optional[tuple[int, ...]]:
    """(C, H, W) the model expects, when known (zoo metadata or timm's pretrained_cfg)."""
    if isinstance(model, str) and model.startswith("zoo:"):
        return tuple(zoo.model_info(model[4:]).input_size)
    cfg = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None)
    if isinstance(cfg, dict) and "input_size" in cfg:
        return tuple(cfg["input_size"])
    return None


def parse_model_ref(text: str):
    """What the user typed as MODEL -> something :func:`spikecast.models.resolve_model` takes."""
    text = text.strip()
    if text.startswith("zoo:"):
        return text
    if ":" in text:
        return import_model(text)
    if zoo.is_model(text):
        return f"zoo:{text}"
    return text


def import_model(text: str):
    """``file.py:Name`` or ``package.module:Name`` -> nn.Module (an instance, or a class / factory
    called without arguments)."""
    where, _, attr = text.rpartition(":")
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {where}")
        spec = importlib.util.spec_from_file_location(f"_spikecast_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ValueError(f"cannot import {where!r} for model {text!r}: {exc}") from exc
    if not hasattr(module, attr):
        raise ValueError(f"{where} has no attribute {attr!r}")
    obj = getattr(module, attr)
    if not isinstance(obj, nn.Module) and callable(obj):
        obj = obj()
    if not isinstance(obj, nn.Module):
        raise ValueError(f"{text} is a {type(obj).__name__}, not an nn.Module (or a class / function making one)")
    return obj


def data_defaults(ref, ann) -> dict:
    """mean / std / size / input shape of the model, from zoo metadata or timm's pretrained_cfg."""
    out = {}
    if isinstance(ref, str) and ref.startswith("zoo:"):
        info = zoo.model_info(ref[4:])
        out.update(mean=tuple(info.mean), std=tuple(info.std))
    else:
        cfg = getattr(ann, "pretrained_cfg", None) or getattr(ann, "default_cfg", None)
        if isinstance(cfg, dict) and "mean" in cfg and "std" in cfg:
            out.update(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    shape = default_input_shape(ref, ann)
    if shape:
        out["input_shape"] = tuple(shape)
        if len(shape) == 3:
            out["size"] = int(shape[-1])
    return out
