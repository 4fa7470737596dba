"""Integer kernels for spike-driven layers: int8 spikes x int8 weights, summed in int32.

The integer-arithmetic form of a network (:func:`spikecast.quant.integer_network`) feeds each
layer that reads spikes with their signs (-1 / 0 / +1) and integer weights, both held in float32
tensors: every sum is an integer below 2^24, so float32 computes it exactly - but at float32 speed.
The ops here compute the same sums with integer instructions (oneDNN's u8 x s8 convolution and
matrix product with int32 accumulators, VNNI / AMX where the CPU has them) and return them as
float32, so they are drop-in replacements that change no value:

* ``spikecast::spike_conv2d(codes, weight, bias, stride, padding, dilation, groups)`` - the
  arguments of ``aten.conv2d``;
* ``spikecast::spike_linear(codes, weight, bias)`` - the arguments of ``aten.linear``.

``codes`` are the spike signs as unsigned bytes ``sign + 1`` (:func:`spike_codes`; zero point 1:
oneDNN's fast path is u8 x s8), ``weight`` integers in -127..127. Where oneDNN's integer path is
not available (no oneDNN build, a CUDA tensor, weights out of the int8 range) the op runs the
float computation it replaces - the same numbers, slower.
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


def _usable(codes: torch.Tensor, weight: torch.Tensor) -> bool:
    return (codes.device.type == "cpu" and weight.device.type == "cpu" and codes.dtype == torch.uint8
            and not (torch.is_grad_enabled() and weight.requires_grad) and int8_available())


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


def spike_codes(signs: torch.Tensor) -> torch.Tensor:
    """Spike signs -1 / 0 / 1 as the unsigned bytes 0 / 1 / 2 (zero point 1) the integer ops read, in
    the layout of ``signs`` (NHWC stays NHWC). A plain elementwise op, so a compiled step fuses it
    into the neuron that fires the spikes."""
    return (signs + 1).to(torch.uint8)


def _scales(channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    key = ("scales", channels)
    if key not in _PACKED:
        _PACKED[key] = (torch.ones(channels, dtype=torch.float32), torch.zeros(channels, dtype=torch.int64))
    return _PACKED[key]


@torch.library.custom_op("spikecast::spike_conv2d", mutates_args=(), schema=(
    "(Tensor codes, Tensor weight, Tensor? bias=None, int[2] stride=1, int[2] padding=0, int[2] dilation=1, "
    "int groups=1) -> Tensor"))
def spike_conv2d(codes: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0),
                 dilation: Sequence[int] = (1, 1), groups: int = 1) -> torch.Tensor:
    """``aten.conv2d(codes - 1, weight, ...)`` for spike codes (:func:`spike_codes`) and integer
    weights, summed in int32 (see the module doc); float32 result."""
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    if codes.dim() == 4 and _usable(codes, weight):
        ones, zeros = _scales(weight.shape[0])

        def build(q: torch.Tensor) -> torch.Tensor:
            return torch.ops.onednn.qconv_prepack(q, ones, 1.0, 1, stride, padding, dilation, groups, None)

        packed = _cached("conv2d", weight, (tuple(stride), tuple(padding), tuple(dilation), groups), build)
        if packed is not None:
            out = torch.ops.onednn.qconv_pointwise(
                codes.contiguous(memory_format=torch.channels_last), 1.0, 1, packed, ones, zeros, None, stride,
                padding, dilation, groups, 1.0, 0, torch.float32, "none", [], "")
            out = out.contiguous(memory_format=torch.channels_last)  # oneDNN picks plain for some shapes
            return out + bias.reshape(1, -1, 1, 1) if bias is not None else out
    return _float_conv2d(codes, weight, bias, stride, padding, dilation, groups)


def _float_conv2d(codes, weight, bias, stride, padding, dilation, groups):
    # NHWC like oneDNN's result, whichever path ran (a compiled graph is planned for one layout)
    out = F.conv2d(_signs(codes), weight, bias, stride, padding, dilation, groups)
    return out.contiguous(memory_format=torch.channels_last) if out.dim() == 4 else out


@spike_conv2d.register_fake
def _(codes, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    return _float_conv2d(codes, weight, bias, list(stride), list(padding), list(dilation), groups)


@torch.library.custom_op("spikecast::spike_linear", mutates_args=())
def spike_linear(codes: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``aten.linear(codes - 1, weight, bias)`` for spike codes and integer weights, summed in int32."""
    if codes.dim() >= 2 and _usable(codes, weight):
        packed = _cached("linear", weight, (), lambda q: torch.ops.onednn.qlinear_prepack(q, None))
        if packed is not None:
            ones, zeros = _scales(weight.shape[0])
            flat = codes.reshape(-1, codes.shape[-1]).contiguous()
            out = torch.ops.onednn.qlinear_pointwise(flat, 1.0, 1, packed, ones, zeros, None, 1.0, 0, torch.float32,
                                                     "none", [], "")
            out = out.reshape(*codes.shape[:-1], weight.shape[0])
            return out + bias if bias is not None else out
    return F.linear(_signs(codes), weight, bias)


@spike_linear.register_fake
def _(codes, weight, bias=None):
    return F.linear(_signs(codes), weight, bias)


def _signs(codes: torch.Tensor) -> torch.Tensor:
    return codes.to(torch.float32) - 1
