"""Resolve what the user names as a model: an nn.Module, ``"zoo:<name>"`` or a timm model name."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from torch import nn

ModelLike = Union[nn.Module, str]


def resolve_model(model: ModelLike, checkpoint: Optional[Union[str, Path]] = None,
                  pretrained: Optional[bool] = None) -> tuple[nn.Module, str]:
    """Return ``(module in eval mode, display name)``.

    * ``nn.Module``: used as is (``checkpoint`` loaded into it when given).
    * ``"zoo:<name>"``: a spikecast zoo model; ``pretrained`` defaults to True (its bundled
      default checkpoint from the shared folder).
    * any other string: a timm model name, built with ``pretrained=False`` unless asked
      (``pretrained=True`` downloads timm's weights, which needs internet).
    """
    from spikecast import zoo

    if isinstance(model, nn.Module):
        name = type(model).__name__
        if checkpoint is not None:
            zoo.load_checkpoint(model, checkpoint)
        return model.eval(), name
    if not isinstance(model, str) or not model:
        raise TypeError(f"model must be an nn.Module, 'zoo:<name>' or a timm model name; got {model!r}")
    if model.startswith("zoo:"):
        name = model[4:]
        if not zoo.is_model(name):
            raise ValueError(f"unknown zoo model {name!r}; available: {', '.join(zoo.list_models())}")
        use_default = pretrained if pretrained is not None else checkpoint is None
        net = zoo.create_model(name, pretrained=bool(use_default and checkpoint is None), checkpoint=checkpoint)
        return net.eval(), model
    import timm

    if Path(model).suffix in (".pth", ".pt", ".th", ".safetensors", ".bin"):
        raise ValueError(f"{model!r} looks like a checkpoint file: pass the architecture as `model` "
                         "(timm name or zoo:<name>) and the file as `checkpoint=`")
    if not timm.is_model(model):
        close = timm.list_models(f"*{model}*")[:8]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"{model!r} is neither a zoo model (zoo:<name>) nor a timm model.{hint}")
    net = timm.create_model(model, pretrained=bool(pretrained))
    if checkpoint is not None:
        zoo.load_checkpoint(net, checkpoint)
    return net.eval(), model


def default_input_shape(model: ModelLike, module: nn.Module) -> Optional[tuple[int, ...]]:
    """(C, H, W) the model expects, when known (zoo metadata or timm's pretrained_cfg)."""
    from spikecast import zoo

    if isinstance(model, str) and model.startswith("zoo:"):
        return tuple(zoo.model_info(model[4:]).input_size)
    cfg = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None)
    if isinstance(cfg, dict) and "input_size" in cfg:
        return tuple(cfg["input_size"])
    return None
