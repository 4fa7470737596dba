"""Integer kernels for spike-driven layers: int8 spikes x int8 weights, summed in int32.

The integer-arithmetic form of a network (:func:`spikecast.quant.integer_network`) feeds each
layer that reads spikes with their signs (-1 / 0 / +1) and integer weights, both held in float32
tensors: every sum is an integer below 2^24, so float32 computes it exactly - but at float32 speed.
The ops here compute the same sums with integer instructions (oneDNN's u8 x s8 convolution and
matrix product with int32 accumulators, VNNI / AMX where the CPU has them) and return them as
float32, so they are drop-in replacements that change no value:

* ``spikecast::spike_conv2d(input, weight, bias, stride, padding, dilation, groups)`` - the
  arguments of ``aten.conv2d``;
* ``spikecast::spike_linear(input, weight, bias)`` - the arguments of ``aten.linear``.

``input`` holds spike signs (or any integers in -1..254 after the shift below), ``weight``
integers in -127..127. The signs enter oneDNN as unsigned bytes ``sign + 1`` with zero point 1.
Where oneDNN's integer path is not available (no oneDNN build, a CUDA tensor, autograd, weights
out of the int8 range) the op runs the float computation it replaces - the same numbers, slower.
Packed weights are cached per weight tensor (its storage and version), so a simulation packs each
layer once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

_PACKED: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_PACKED_LIMIT = 512  # layers; an entry is the int8 copy of one weight


def int8_available() -> bool:
    """Whether this PyTorch build has oneDNN's integer convolution and matrix product."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.onednn, "qconv_pointwise") \
        and hasattr(torch.ops.onednn, "qlinear_pointwise")


def _usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and weight.device.type == "cpu" and x.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and int8_available())


def _cached(kind: str, weight: torch.Tensor, extra: tuple, build) -> Optional[torch.Tensor]:
    key = (kind, weight.data_ptr(), weight._version, tuple(weight.shape), extra)
    packed = _PACKED.get(key)
    if packed is None:
        if float(weight.abs().max()) > 127 or not torch.equal(weight, weight.round()):
            return None  # not int8 integers: the float path
        packed = build(weight.to(torch.int8))
        _PACKED[key] = packed
        while len(_PACKED) > _PACKED_LIMIT:
            _PACKED.popitem(last=False)
    else:
        _PACKED.move_to_end(key)
    return packed


def _unsigned(x: torch.Tensor) -> torch.Tensor:
    # signs -1 / 0 / 1 -> bytes 0 / 1 / 2 (zero point 1), in the layout of x (NHWC stays NHWC)
    return (x + 1).to(torch.uint8)


@torch.library.custom_op("spikecast::spike_conv2d", mutates_args=(), schema=(
    "(Tensor input, Tensor weight, Tensor? bias=None, int[2] stride=1, int[2] padding=0, int[2] dilation=1, "
    "int groups=1) -> Tensor"))
def spike_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0),
                 dilation: Sequence[int] = (1, 1), groups: int = 1) -> torch.Tensor:
    """``aten.conv2d`` of integer inputs and weights, summed in int32 (see the module doc)."""
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    if input.dim() == 4 and _usable(input, weight):
        out_channels = weight.shape[0]
        ones = torch.ones(out_channels, dtype=torch.float32)

        def build(q: torch.Tensor) -> torch.Tensor:
            return torch.ops.onednn.qconv_prepack(q, ones, 1.0, 1, stride, padding, dilation, groups, None)

        packed = _cached("conv2d", weight, (tuple(stride), tuple(padding), tuple(dilation), groups), build)
        if packed is not None:
            qx = _unsigned(input.contiguous(memory_format=torch.channels_last))
            out = torch.ops.onednn.qconv_pointwise(
                qx, 1.0, 1, packed, ones, torch.zeros(out_channels, dtype=torch.int64), None, stride, padding,
                dilation, groups, 1.0, 0, torch.float32, "none", [], "")
            return out + bias.reshape(1, -1, 1, 1) if bias is not None else out
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


@spike_conv2d.register_fake
def _(input, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


@torch.library.custom_op("spikecast::spike_linear", mutates_args=())
def spike_linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``aten.linear`` of integer inputs and weights, summed in int32 (see the module doc)."""
    if input.dim() >= 2 and _usable(input, weight):
        packed = _cached("linear", weight, (), lambda q: torch.ops.onednn.qlinear_prepack(q, None))
        if packed is not None:
            out_features = weight.shape[0]
            flat = _unsigned(input.reshape(-1, input.shape[-1]).contiguous())
            out = torch.ops.onednn.qlinear_pointwise(
                flat, 1.0, 1, packed, torch.ones(out_features, dtype=torch.float32),
                torch.zeros(out_features, dtype=torch.int64), None, 1.0, 0, torch.float32, "none", [], "")
            out = out.reshape(*input.shape[:-1], out_features)
            return out + bias if bias is not None else out
    return F.linear(input, weight, bias)


@spike_linear.register_fake
def _(input, weight, bias=None):
    return F.linear(input, weight, bias)
