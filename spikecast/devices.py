"""Turn what a user names as a device into a ``torch.device`` that exists on this machine.

:func:`resolve_device` is the one place that checks a device string: ``"cpu"``, ``"cuda"``,
``"cuda:1"``, ``"mps"``, ``"auto"`` (the first accelerator available, else the CPU), a
``torch.device`` or a CUDA index. A name torch does not know, or a device this machine does not
have, raises :class:`~spikecast.errors.DeviceError` with a one-line message naming it - instead
of a failure deep inside the first ``.to(device)``.

This module imports nothing from spikecast but :mod:`spikecast.errors`, so any layer may use it.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from spikecast.errors import DeviceError

__all__ = ["DeviceLike", "resolve_device", "available_devices"]

DeviceLike = Union[str, int, torch.device, None]


def available_devices() -> list[str]:
    """Names of the devices usable here, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def _available_text() -> str:
    return ", ".join(available_devices())


def _auto() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: DeviceLike, default: Optional[torch.device] = None) -> torch.device:
    """``device`` as a ``torch.device``, checked to exist on this machine.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"auto"``, a ``torch.device``, a
            CUDA index, or None.
        default: returned for None (default: the CPU).

    Raises:
        DeviceError: unknown device name, or the device is not available (no CUDA, index out
            of range...); the message names the device and lists the available ones.
    """
    if device is None:
        return default if default is not None else torch.device("cpu")
    if isinstance(device, str):
        text = device.strip()
        if text.lower() == "auto":
            return _auto()
        try:
            resolved = torch.device(text.lower())
        except (RuntimeError, ValueError, TypeError):
            raise DeviceError(f"unknown device {device!r}: not a torch device name; available here: "
                              f"{_available_text()} (or 'auto')") from None
    elif isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, int) and not isinstance(device, bool):
        if device < 0:
            raise DeviceError(f"unknown device {device!r}: a device index must be >= 0")
        resolved = torch.device("cuda", device)
    else:
        raise DeviceError(f"device must be a string such as 'cpu' or 'cuda:0', a torch.device or an index; "
                          f"got {type(device).__name__} {device!r}")

    kind = resolved.type
    if kind == "cpu":
        return resolved
    if kind == "meta":
        raise DeviceError(f"device {str(device)!r} holds no data (shapes only): models moved there lose their "
                          f"weights; available here: {_available_text()}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(device)!r} is not available: this machine has no usable CUDA GPU "
                              f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                              f"available here: {_available_text()}")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(f"device {str(device)!r} is not available: this machine has {count} CUDA "
                              f"device(s) (cuda:0..cuda:{count - 1})")
        return resolved
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"device {str(device)!r} is not available on this machine; "
                              f"available here: {_available_text()}")
        return resolved
    backend = getattr(torch, kind, None)  # xpu, hpu...: torch.<kind>.is_available()
    is_available = getattr(backend, "is_available", None)
    if callable(is_available):
        try:
            ok = bool(is_available())
        except Exception:  # noqa: BLE001 - a backend that cannot even answer is not available
            ok = False
        if ok:
            return resolved
    raise DeviceError(f"device {str(device)!r} is not available on this machine; "
                      f"available here: {_available_text()}")


def device_of(module: torch.nn.Module) -> Optional[torch.device]:
    """The device of the module's first parameter or buffer (None when it has neither)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None
