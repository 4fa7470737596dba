"""The one spiking neuron of spikecast: integrate-and-fire with soft reset.

Per step ``t`` with input current ``I_t``::

    v <- v + I_t
    s_t = theta if v >= theta else 0        (at most one spike per step)
    v <- v - s_t                            (soft reset: reset by subtraction)

with ``v_0 = v_init * theta`` (half-threshold start by default). Under a constant current ``I``
the number of spikes after ``T`` steps is exactly ``clamp(floor(T*I/theta + v_init), 0, T)``, so
the mean output ``theta * N/T`` is ``I`` quantised to ``theta/T`` with rounding and clipped to
``[0, theta]`` - the rate code that makes ReLU networks convertible.

Optional signed spikes (``signed=True``): a neuron that has already sent positive spikes emits a
negative spike ``-theta`` (and ``v <- v + theta``) when its membrane falls below 0, i.e. below the
rounding band ``[0, theta)`` of the half-threshold start. A negative spike only cancels earlier
positive charge, so the output stays a clipped ReLU, but spikes fired early on a transient
(depthwise convolutions, deep stacks) are taken back instead of staying as a permanent error. Under
constant input it never fires negatively, so the formula above holds unchanged. It costs a second
state tensor and ternary instead of binary spikes (log2(3) bits per step).

Bipolar neurons (``bipolar=True``) represent activations with a negative range (GELU, SiLU,
hard-swish, the outputs of normalisation layers): the neuron fires ``+theta`` when ``v >= theta``
and ``-theta`` when ``v < 0``, so with the half-threshold start the mean output is the input
rounded to ``theta/T`` on both signs and clipped to ``[-theta, theta]``. Ternary spikes,
log2(3) bits per step.

Multi-threshold neurons (``levels=K``): up to ``K`` spikes per step, ``n = clamp(floor(v/theta),
lo, K)`` with ``lo = 0`` (binary), ``-K`` (bipolar) or minus the spikes sent so far (signed). ``T``
steps then resolve ``K*T`` levels; the price is ``log2(K+1)`` bits per step (``log2(2K+1)``
when negative spikes exist), which :attr:`IFNeuron.bits_per_step` reports so latency comparisons
stay honest.

Calibration corrections (set by :mod:`spikecast.convert.correction`, absent by default):
``bias`` is a current added at every step (bias correction: it shifts the mean output by about
``bias``), ``v_offset`` is added to the initial membrane potential (potential correction: a charge
given once at the start). Both broadcast against the input, usually one value per channel.

Optional random spike masking (synaptic failure, Masked Spiking Transformer's RSM): each emitted
spike is withheld from the next layer with probability ``mask_ratio``; the neuron still resets.
With ``mask_rescale`` a transmitted spike carries ``theta / (1 - mask_ratio)`` so the expected
output is unchanged. The mask stream is seeded and restarts at every simulation.
"""

from __future__ import annotations

import math
import os
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch

from spikecast.nn.stateful import State, StatefulModule

# Large layers run the step as one fused kernel (torch.compile): the neuron is a handful of
# elementwise passes over the whole layer, which in eager mode cost more than the convolutions.
# Small tensors (tests, toy models) stay eager, where compiling would cost more than it saves.
# SPIKECAST_COMPILE=0 turns it off; a failed compile (no C++ compiler) falls back to eager.
COMPILE_MIN_ELEMENTS = 1 << 20
# Largest net spike count a signed neuron keeps in a byte (uint8); see IFNeuron.reserve_steps.
COMPACT_COUNT = 255
RECOMPILE_LIMIT = 32
_compile_state: dict = {"enabled": os.environ.get("SPIKECAST_COMPILE", "1") != "0"}


# One step of the neuron as a pure function: what the fused kernel compiles (forward's eager path
# is the same step in place).
def _binary_step(v, current, bias, theta):
    v = v + current + bias
    out = torch.where(v >= theta, theta, torch.zeros_like(v))
    return out, v - out


def _binary_zero_step(v, current, bias, theta):
    """Binary neuron with reset to zero (NIR's ``IF`` as the spec writes it): the charge above the
    threshold is lost when the neuron fires."""
    v = v + current + bias
    fired = v >= theta
    return torch.where(fired, theta, torch.zeros_like(v)), torch.where(fired, torch.zeros_like(v), v)


# A signed neuron's bookkeeping ``emitted`` is the net number of spikes it sent so far: an exact
# count rather than a sum of +-theta, which rounds. Its type: float32 (exact below 2^24), or uint8
# where the runtime reserved at most 255 steps (:meth:`IFNeuron.reserve_steps`; a count never exceeds
# the steps run): a step reads and writes one byte of it instead of four per neuron, in steps that
# are memory-bound (the elementwise kernels of a compiled step). The arithmetic runs in the
# membrane's float type whatever the count's (never a negative value converted to a byte), and the
# count is stored back. Not int16:
# CPU kernels do not vectorise 16-bit integer conversions (measured: 3-4x slower than uint8).
def _signed_step(v, emitted, current, bias, theta):
    v = v + current + bias
    # take back a spike already sent when the membrane fell below the rounding band [0, theta)
    count = emitted.to(v.dtype)
    fire = v >= theta
    retract = (v < 0) & (count > 0)
    out = torch.where(fire, theta, torch.where(retract, -theta, torch.zeros_like(v)))
    return out, v - out, (count + fire.to(v.dtype) - retract.to(v.dtype)).to(emitted.dtype)


def _bipolar_step(v, current, bias, theta):
    v = v + current + bias
    out = torch.where(v >= theta, theta, torch.where(v < 0, -theta, torch.zeros_like(v)))
    return out, v - out


def _multilevel_step(v, emitted, current, bias, theta, levels: int, bipolar: bool):
    """Up to ``levels`` spikes per step; ``emitted`` (signed neurons: the net count sent so far)
    bounds the negative ones."""
    v = v + current + bias
    n = torch.floor(v / theta)
    if bipolar:
        n = n.clamp(-levels, levels)
    elif emitted is not None:
        n = torch.minimum(torch.maximum(n, -emitted.to(n.dtype).clamp(0, levels)), torch.full_like(n, levels))
    else:
        n = n.clamp(0, levels)
    out = n * theta
    # n >= -emitted: the new count is never negative, whatever the count's type (see _signed_step)
    return out, v - out, ((emitted.to(n.dtype) + n).to(emitted.dtype) if emitted is not None else None)


def _scan(step: Callable, states: int, steps: int) -> Callable:
    """``step`` over a leading time axis of ``steps`` steps: ``scan(currents, *state, *params) ->
    (outputs, *state)`` with ``currents`` and ``outputs`` shaped ``(steps, ...)``. Compiled, the
    steps unroll into one kernel that keeps the membrane in registers: the currents are read once
    and the spikes written once, instead of a handful of passes over the layer per step."""

    def scan(currents, *args):
        state, params = list(args[:states]), args[states:]
        outputs = []
        for t in range(steps):
            out, *state = step(*state, currents[t], *params)
            outputs.append(out)
        return (torch.stack(outputs), *state)

    # one function per number of steps, with its own code object: compiled kernels are cached per
    # code object and each has a recompile budget (a shared one would be spent on the step counts)
    name = f"{step.__name__}_scan{steps}"
    scan.__code__ = scan.__code__.replace(co_name=name)
    scan.__name__ = scan.__qualname__ = name
    return scan


def _sum_scan(step: Callable, states: int, steps: int) -> Callable:
    """``step`` over ``steps`` steps keeping only the sum of the outputs: ``sum_scan(currents,
    total, *state, *params) -> (total, *state)``. Compiled, each element's membrane and running sum
    stay in registers and only the currents are read: what a replay that needs the rate alone costs
    (ResNet-20's first layer, 256 images, 8 steps: 1.25 ms per step against 3.1 one step at a time)."""

    def sum_scan(currents, total, *args):
        state, params = list(args[:states]), args[states:]
        for t in range(steps):
            out, *state = step(*state, currents[t], *params)
            total = total + out
        return (total, *state)

    name = f"{step.__name__}_sum{steps}"
    sum_scan.__code__ = sum_scan.__code__.replace(co_name=name)
    sum_scan.__name__ = sum_scan.__qualname__ = name
    return sum_scan


_STEPS = {"binary": (_binary_step, 1), "zero": (_binary_zero_step, 1), "signed": (_signed_step, 2),
          "bipolar": (_bipolar_step, 1), "multilevel": (_multilevel_step, 2)}
_SCANS: dict[tuple[str, int, bool], Callable] = {}
# Steps per compiled sum scan (longer runs call it several times): the steps unroll into the
# kernel, so its compile time grows with them (ResNet-20 sizes, cold cache: 25 s for 32 steps, 4 s
# for 8) while the time per step barely changes.
SUM_SCAN_STEPS = 8
# Smallest step (elements) run through a compiled sum scan: far below COMPILE_MIN_ELEMENTS, because
# one scan covers SUM_SCAN_STEPS steps (one compile per step function and step count, any shape)
# where the eager path pays a handful of op calls per step.
SUM_SCAN_MIN_ELEMENTS = 1 << 15


def _scan_of(kind: str, steps: int, sums: bool = False) -> Callable:
    key = (kind, int(steps), sums)
    if key not in _SCANS:
        _SCANS[key] = (_sum_scan if sums else _scan)(*_STEPS[kind], int(steps))
    return _SCANS[key]


class _Spike(torch.autograd.Function):
    """Heaviside step with a triangular surrogate gradient of half-width ``width`` (the threshold).

    Forward: ``x >= 0`` (``x > 0`` when ``strict``). Backward: ``max(0, 1 - |x|/width) / width``,
    so the surrogate integrates to one spike whatever the threshold's scale.
    """

    @staticmethod
    def forward(ctx, x, width, strict: bool):
        ctx.save_for_backward(x, width)
        return _heaviside(x, strict)

    @staticmethod
    def backward(ctx, grad):
        x, width = ctx.saved_tensors
        surrogate = x.abs().div_(-width).add_(1.0).clamp_(min=0.0).div_(width)  # in place: one allocation
        return grad * surrogate, None, None


def _heaviside(x: torch.Tensor, strict: bool = False, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1.0 where ``x >= 0`` (``x > 0`` when ``strict``), else 0.0, in the float type of ``like``
    (default ``x``). Compared straight into a float tensor: on CPU a boolean result converted
    afterwards costs about 15x more (0.5M values: 0.6 ms against 0.04 ms here)."""
    out = torch.empty_like(x if like is None else like)
    return torch.gt(x, 0, out=out) if strict else torch.ge(x, 0, out=out)


def _surrogate_step(v, emitted, current, bias, theta, bipolar: bool = False):
    """The neuron step with surrogate gradients, for backpropagation through time.

    Same values as ``_binary_step`` / ``_signed_step`` (``emitted is None`` = binary). The reset
    and the emitted-charge bookkeeping are detached: gradients flow through the spike decisions
    into the currents, not around the soft reset (Zenke & Vogels 2021: better-behaved gradients).
    """
    v = v + current + bias
    out = theta * _Spike.apply(v - theta, theta, False)
    if bipolar:
        out = out - theta * _Spike.apply(-v, theta, True)
    elif emitted is not None:
        retract = _Spike.apply(-v, theta, True) * _heaviside(emitted, True, like=v)
        out = out - theta * retract
        emitted = (emitted.to(v.dtype) + torch.sign(out.detach())).to(emitted.dtype)
    return out, v - out.detach(), emitted


def _multilevel_surrogate_step(v, emitted, current, bias, theta, levels: int, bipolar: bool):
    """``_multilevel_step``'s values with surrogate gradients: the step's ``n`` spikes are a
    staircase of ``levels`` Heaviside steps (at ``v = theta, 2 theta, ...``; the negative side at
    ``v < 0, -theta, ...`` where spikes can be sent or taken back), each with the triangular surrogate
    of :class:`_Spike`; the value is exactly the multi-level neuron's. Reset and bookkeeping detached,
    as in :func:`_surrogate_step`."""
    v = v + current + bias
    nothing = v.new_zeros(())  # v already holds the step's input
    exact, _, counted = _multilevel_step(v.detach(), emitted, nothing, nothing, theta, levels, bipolar)
    soft = sum(_Spike.apply(v - k * theta, theta, False) for k in range(1, levels + 1))
    if bipolar or emitted is not None:
        negative = sum(_Spike.apply(-(v + k * theta), theta, True) for k in range(levels))
        if emitted is not None:  # a signed neuron only takes back what it sent
            negative = negative * _heaviside(emitted, True, like=v)
        soft = soft - negative
    soft = theta * soft
    out = exact + (soft - soft.detach())  # (soft - soft) is exactly 0: the value is the neuron's, bit for bit
    return out, v - out.detach(), counted


def _fused(fn: Callable) -> Optional[Callable]:
    """The compiled version of a step function, or None when compiling is off or failed."""
    if not _compile_state["enabled"]:
        return None
    key = fn.__name__
    if key not in _compile_state:
        import torch._dynamo.config as dynamo_config  # torch's own module, loaded only when compiling

        # a kernel meets a few variants (scalar or per-channel threshold and bias, NCHW or NHWC,
        # a broadcast input); past the default limit of 8 Dynamo silently runs it eagerly
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        _compile_state[key] = torch.compile(fn, dynamic=True)
    return _compile_state[key]


def run_fused(fn: Callable, *args, force: bool = False):
    """``fn(*args)`` through its compiled kernel when the first tensor is large enough (or
    ``force``), else eager.

    ``fn`` must be pure. When the kernel raises, ``fn`` runs eagerly: an error of the step itself
    (a shape mismatch, a wrong dtype...) then propagates exactly as without compilation, and
    compilation stays on. Only a genuine compiler failure (a Dynamo / Inductor backend error, no
    working C++ compiler) with a step that runs fine eagerly turns compilation off, once, with a
    warning; any other failure of the kernel is raised as is.
    """
    if torch.compiler.is_compiling():
        # inside a compiled network step (SimulationConfig.compiled): the outer compiler traces the
        # step itself and fuses it with the ops around it; a nested compiled kernel would split the
        # graph there (a graph break) and pass the neuron's output through memory
        return fn(*args)
    if force or args[0].numel() >= COMPILE_MIN_ELEMENTS:
        kernel = _fused(fn)
        if kernel is not None:
            try:
                return kernel(*args)
            except Exception as exc:  # noqa: BLE001 - classified below, never swallowed blindly
                failure = exc
            result = fn(*args)  # outside the handler: the step's own error propagates unchanged
            if not _is_compiler_failure(failure):
                raise failure
            _disable_compile(failure)
            return result
    return fn(*args)


def _compiler_failure_types() -> tuple[type, ...]:
    import torch._dynamo.exc as dynamo_exc  # torch's own modules, loaded only when compiling
    import torch._inductor.exc as inductor_exc

    names = ((dynamo_exc, ("BackendCompilerFailed", "InternalTorchDynamoError", "InvalidBackend")),
             (inductor_exc, ("InductorError", "CppCompileError", "InvalidCxxCompiler", "LoweringException",
                             "TritonMissing", "CUDACompileError", "BackendCompilerFailed")))
    return tuple(getattr(module, name) for module, group in names for name in group if hasattr(module, name))


def _is_compiler_failure(exc: BaseException) -> bool:
    """True for an error of the compiler stack (anywhere in the exception's cause chain)."""
    kinds = _compiler_failure_types()
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kinds):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _disable_compile(exc: BaseException) -> None:
    _compile_state["enabled"] = False
    warnings.warn(f"spikecast: fused neuron kernels unavailable ({type(exc).__name__}: {exc}); using eager "
                  "PyTorch (slower). Set SPIKECAST_COMPILE=0 to skip the attempt.", RuntimeWarning, stacklevel=3)


def compile_enabled() -> bool:
    """Whether compiled kernels are in use (not turned off by SPIKECAST_COMPILE=0, a compiler
    failure or :func:`eager_steps`)."""
    return bool(_compile_state["enabled"])


@contextmanager
def eager_steps() -> Iterator[None]:
    """Run every neuron step eagerly inside the block (e.g. under a ``TorchDispatchMode``, which
    compiled kernels do not go through); the previous setting is restored after."""
    before = _compile_state["enabled"]
    _compile_state["enabled"] = False
    try:
        yield
    finally:
        _compile_state["enabled"] = before


#: How a binary neuron's membrane is reset when it fires: by subtracting the threshold (what
#: conversion needs: the surplus charge is kept) or to zero (NIR's ``IF`` node as specified).
RESETS = ("subtract", "zero")


class IFNeuron(StatefulModule):
    """Integrate-and-fire neuron with soft reset; one call = one time step.

    ``reset="zero"`` (binary neurons only) resets the membrane to 0 instead: the neuron of a NIR
    ``IF`` node as the NIR spec defines it, for graphs imported from other tools.

    State (:class:`StatefulModule`): the membrane ``v`` and, for signed neurons, the net number of
    spikes ``emitted`` so far.
    """

    state_buffers = ("v", "emitted")
    emits_spikes = True

    def __init__(self, threshold, name: str = "", *, v_init: float = 0.5, upper: Optional[float] = None,
                 mask_ratio: float = 0.0, mask_seed: int = 0, mask_rescale: bool = True, signed: bool = False,
                 bipolar: bool = False, levels: int = 1, reset: str = "subtract"):
        super().__init__()
        if reset not in RESETS:
            raise ValueError(f"neuron {name!r}: reset must be one of {RESETS}, got {reset!r}")
        if reset == "zero" and (signed or bipolar or int(levels) != 1):
            raise ValueError(f"neuron {name!r}: reset='zero' is for binary neurons (one positive spike per step)")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if int(levels) != levels or int(levels) < 1:
            raise ValueError(f"neuron {name!r}: levels must be a positive integer, got {levels!r}")
        theta = torch.as_tensor(threshold, dtype=torch.float32).detach().clone()
        if (theta <= 0).any() or not torch.isfinite(theta).all():
            raise ValueError(f"neuron {name!r}: thresholds must be finite and > 0")
        self.register_buffer("threshold", theta)
        self.name = name
        self.v_init = float(v_init)
        self.upper = upper  # clip of the source activation (ReLU6: 6), for reference
        self.mask_ratio = float(mask_ratio)
        self.mask_seed = int(mask_seed)
        self.mask_rescale = bool(mask_rescale)
        self.bipolar = bool(bipolar)
        self.signed = bool(signed) and not self.bipolar  # a bipolar neuron has negative spikes anyway
        self.levels = int(levels)
        self.reset_mode = reset  # "subtract" (soft reset, conversion's) or "zero" (NIR IF's spec reset)
        self.record = False  # count spikes (for firing rates); off in the hot path by default
        self.register_buffer("bias", None)
        self.register_buffer("v_offset", None)
        self.reset()

    def set_correction(self, bias: Optional[torch.Tensor] = None, v_offset: Optional[torch.Tensor] = None) -> None:
        """Set (or clear, with ``None``) the per-step current ``bias`` and initial-charge ``v_offset``."""
        for key, value in (("bias", bias), ("v_offset", v_offset)):
            if value is not None:
                value = torch.as_tensor(value, dtype=torch.float32).detach().clone().to(self.threshold.device)
                if not torch.isfinite(value).all():
                    raise ValueError(f"neuron {self.name!r}: {key} must be finite")
            setattr(self, key, value)

    def reset(self) -> None:
        """Forget the membrane state and restart the mask stream (call before each simulation)."""
        super().reset()
        self.spike_count = 0.0
        self.neuron_steps = 0.0  # number of (neuron, step) pairs seen, for the firing rate
        self._generator: Optional[torch.Generator] = None
        self._compact_count = False  # emitted count as uint8 (see reserve_steps)

    def reserve_steps(self, steps: int) -> None:
        """A signed neuron keeps its net spike count in a byte when it cannot exceed 255 in
        ``steps`` steps (at most ``levels`` per step): exact, and a quarter of the bytes each step
        reads and writes. Only the runtime calls this (after :meth:`reset`, without autograd); a
        neuron driven any other way counts in float32."""
        self._compact_count = self.signed and 0 < self.levels * int(steps) <= COMPACT_COUNT

    def _first_state(self, current: torch.Tensor) -> State:
        """The buffered state's first value: :meth:`initial_state`, the count as uint8 when reserved."""
        state = self.initial_state(current)
        if self._compact_count:
            return (state[0], state[1].to(torch.uint8))
        return state

    def state_names(self) -> tuple[str, ...]:
        return ("v", "emitted") if self.signed else ("v",)

    @property
    def bits_per_step(self) -> float:
        """Information one neuron sends per step: log2 of the number of distinct spike values."""
        values = self.levels + 1 if not (self.signed or self.bipolar) else 2 * self.levels + 1
        return math.log2(values)

    def _mask(self, like: torch.Tensor) -> torch.Tensor:
        if self._generator is None or self._generator.device != like.device:
            self._generator = torch.Generator(device=like.device)
            self._generator.manual_seed(self.mask_seed)
        keep = torch.rand(like.shape, generator=self._generator, device=like.device) >= self.mask_ratio
        scale = 1.0 / (1.0 - self.mask_ratio) if self.mask_rescale else 1.0
        return keep * scale

    def _zero(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=like.dtype, device=like.device)

    def initial_potential(self) -> torch.Tensor:
        """``v_0 = v_init * theta (+ v_offset)``, broadcastable against the input."""
        v0 = self.threshold * self.v_init
        return v0 + self.v_offset if self.v_offset is not None else v0

    # ------------------------------------------------------------------ functional form
    def initial_state(self, current: torch.Tensor) -> State:
        """The state before the first step for inputs shaped like ``current``: ``(v,)`` or ``(v, emitted)``."""
        zeros = torch.zeros_like(current)
        v = zeros + self.initial_potential().to(current.dtype).expand_as(current)
        return (v, zeros) if self.signed else (v,)

    def step(self, current: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step as a pure function ``(current, state) -> (output, new state)``.

        What ONNX export traces (the membrane becomes an explicit graph input/output); random spike
        masking and spike counting are not part of it (export refuses masked neurons).
        """
        kind = self._kind()
        states, params = self._step_args(kind, state, current)
        out, *new = _STEPS[kind][0](*states, current, *params)
        return out, tuple(new[:len(self.state_names())])

    def _kind(self) -> str:
        """Which step function this neuron runs (a key of ``_STEPS``)."""
        if self.levels > 1:
            return "multilevel"
        if self.bipolar:
            return "bipolar"
        if self.reset_mode == "zero":
            return "zero"
        return "signed" if self.signed else "binary"

    def _step_args(self, kind: str, state: State, like: torch.Tensor) -> tuple[tuple, tuple]:
        """``(state arguments, parameters after the current)`` of the step function ``kind``."""
        bias = self.bias if self.bias is not None else self._zero(like)
        if kind == "multilevel":  # a multi-level neuron keeps an emitted count only when signed
            return (state[0], state[1] if self.signed else None), (bias, self.threshold, self.levels, self.bipolar)
        return tuple(state), (bias, self.threshold)

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        """One step on the buffered state: the values of :meth:`step`, computed in place (eager),
        as one fused kernel (large layers) or with surrogate gradients (input requires grad)."""
        theta = self.threshold
        if self.v is None:
            self.set_state(self._first_state(current))
        training = current.requires_grad and torch.is_grad_enabled()
        if training and self.reset_mode == "zero":
            raise NotImplementedError(f"neuron {self.name!r}: surrogate-gradient training of reset='zero' neurons "
                                      "is not supported")
        bias = self.bias if self.bias is not None else self._zero(current)
        if training and self.levels > 1:
            out, self.v, emitted = _multilevel_surrogate_step(self.v, self.emitted if self.signed else None, current,
                                                              bias, theta, self.levels, self.bipolar)
            if self.signed:
                self.emitted = emitted
            return self._finish(out)
        if training:
            # training (surrogate-gradient BPTT): out-of-place, differentiable step
            out, self.v, emitted = _surrogate_step(self.v, self.emitted if self.signed else None, current, bias, theta,
                                                   self.bipolar)
            if self.signed:
                self.emitted = emitted
            return self._finish(out)
        if self.levels > 1:
            out, self.v, emitted = run_fused(_multilevel_step, self.v, self.emitted if self.signed else None, current,
                                             bias, theta, self.levels, self.bipolar)
            if self.signed:
                self.emitted = emitted
            return self._finish(out)
        if self.bipolar:
            out, self.v = run_fused(_bipolar_step, self.v, current, bias, theta)
            return self._finish(out)
        if self.reset_mode == "zero":
            out, self.v = run_fused(_binary_zero_step, self.v, current, bias, theta)
            return self._finish(out)
        # inside a compiled network step every layer takes the pure step (the compiler fuses it; the
        # in-place path below would make it compute a byte count in integer ops, which it does not vectorise)
        if _compile_state["enabled"] and (current.numel() >= COMPILE_MIN_ELEMENTS or torch.compiler.is_compiling()):
            if self.signed:
                out, self.v, self.emitted = run_fused(_signed_step, self.v, self.emitted, current, bias, theta)
            else:
                out, self.v = run_fused(_binary_step, self.v, current, bias, theta)
            return self._finish(out)
        # Eager: the same step in place (allocating fresh layer-sized tensors every step is much
        # slower on CPU); tests/test_neuron.py and tests/test_stateful.py check it equals `step`.
        v = self.v
        v.add_(current)
        if self.bias is not None:
            v.add_(self.bias)
        if self.signed:
            fire = v >= theta
            retract = (v < 0) & (self.emitted > 0)
            out = torch.where(fire, theta, torch.where(retract, -theta, 0.0))
            # the count's own type (float32 or uint8): add the spikes sent, then take back the
            # retracted ones (only where the count is positive: never below zero)
            self.emitted.add_(fire.to(self.emitted.dtype)).sub_(retract.to(self.emitted.dtype))
        else:
            out = torch.where(v >= theta, theta, 0.0)
        v.sub_(out)
        return self._finish(out)

    def run_steps(self, currents: torch.Tensor) -> torch.Tensor:
        """Steps over the leading time axis (see :meth:`StatefulModule.run_steps`): one fused kernel
        for all of them when the layer is large and compiling is on, else one :meth:`forward` per step."""
        # compiled when one step is large enough (the rule of forward): a chunk of small steps
        # would pay a compile per chunk size for little gain
        fused = (type(self).step is IFNeuron.step and self.mask_ratio == 0.0 and _compile_state["enabled"]
                 and currents[0].numel() >= COMPILE_MIN_ELEMENTS
                 and not (currents.requires_grad and torch.is_grad_enabled()))
        if not fused:
            return super().run_steps(currents)
        if self.v is None:
            self.set_state(self._first_state(currents[0]))
        if currents.stride(0) == 0:
            # a constant current (a static input, broadcast over the steps): materialised in the
            # layout of one step (NHWC stays NHWC), so every scan sees dense inputs
            currents = torch.empty_like(currents).copy_(currents)
        kind = self._kind()
        states, params = self._step_args(kind, self.get_state(), currents)
        out, *new = run_fused(_scan_of(kind, currents.shape[0]), currents, *states, *params, force=True)
        self.set_state(tuple(new[:len(self.state_names())]))
        return self._finish(out)

    def output_sum(self, currents: torch.Tensor) -> torch.Tensor:
        """Steps over the leading time axis, like :meth:`run_steps`, returning only the sum of
        the outputs over them (``currents.shape[1:]``): a fused scan that keeps no spike train
        (large layers, compiling on, no masking), else one :meth:`forward` per step."""
        fused = (type(self).step is IFNeuron.step and self.mask_ratio == 0.0 and not self.record
                 and _compile_state["enabled"] and currents[0].numel() >= SUM_SCAN_MIN_ELEMENTS
                 and not (currents.requires_grad and torch.is_grad_enabled()))
        if not fused:
            total = None
            for current in currents:
                out = self(current)
                total = out.clone() if total is None else total.add_(out)
            return total
        if self.v is None:
            self.set_state(self._first_state(currents[0]))
        kind = self._kind()
        total = torch.zeros_like(currents[0])
        for t in range(0, currents.shape[0], SUM_SCAN_STEPS):
            piece = currents[t:t + SUM_SCAN_STEPS]
            states, params = self._step_args(kind, self.get_state(), piece)
            with torch.inference_mode():
                # threshold and bias of one shape and one tensor kind, whichever are set: one
                # kernel variant for all (each variant is a compile; past a limit Dynamo runs eagerly)
                params = (*(p.contiguous() for p in torch.broadcast_tensors(*(p.clone() for p in params[:2]))),
                          *params[2:])
            total, *new = run_fused(_scan_of(kind, piece.shape[0], sums=True), piece, total, *states, *params,
                                    force=True)
            self.set_state(tuple(new[:len(self.state_names())]))
        return total

    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        if self.record:
            # a multi-level neuron's step of n spikes counts n (synaptic events)
            self.spike_count += float((out.abs() / self.threshold).round().sum()) if self.levels > 1 \
                else float((out != 0).sum())
            self.neuron_steps += out.numel()
        if self.mask_ratio > 0.0:
            out = out * self._mask(out)
        return out

    @property
    def firing_rate(self) -> float:
        """Spikes per neuron per step since the last reset (needs ``record = True``)."""
        return self.spike_count / self.neuron_steps if self.neuron_steps else 0.0

    def config(self) -> dict:
        return {"name": self.name, "v_init": self.v_init, "upper": self.upper, "mask_ratio": self.mask_ratio,
                "mask_seed": self.mask_seed, "mask_rescale": self.mask_rescale, "signed": self.signed,
                "bipolar": self.bipolar, "levels": self.levels, "reset": self.reset_mode}

    def twin(self, threshold: torch.Tensor) -> "IFNeuron":
        """A fresh neuron with this one's settings (no corrections) and another threshold."""
        config = self.config()
        return IFNeuron(threshold, **config)

    @classmethod
    def from_config(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "IFNeuron":
        neuron = cls(tensors["threshold"], **config)
        neuron.set_correction(tensors.get("bias"), tensors.get("v_offset"))
        return neuron

    def extra_repr(self) -> str:
        th = f"{float(self.threshold):.4g}" if self.threshold.numel() == 1 else f"per-channel{tuple(self.threshold.shape)}"
        extra = "".join(f", {k}=per-channel" for k in ("bias", "v_offset") if getattr(self, k) is not None)
        kind = "".join(f", {k}=True" for k in ("signed", "bipolar") if getattr(self, k))
        kind += f", levels={self.levels}" if self.levels > 1 else ""
        kind += f", reset={self.reset_mode!r}" if self.reset_mode != "subtract" else ""
        return f"name={self.name!r}, threshold={th}, v_init={self.v_init}, mask_ratio={self.mask_ratio}{kind}{extra}"
