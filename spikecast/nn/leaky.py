"""Leaky neurons read from NIR graphs written by other tools: NIR's ``LIF`` and ``CubaLIF``.

Conversion never makes these (its neurons are :class:`~spikecast.nn.neuron.IFNeuron`); they exist
so that :func:`spikecast.from_nir` can run a leaky network exactly as its NIR node states, and
``validate``, ``report`` and the energy model can measure it.

NIR states the neurons as differential equations; a simulator has to pick a time step ``dt`` and
a discretisation, and readers differ. Here: forward Euler with the ``dt`` the user gives
(``from_nir(..., dt=...)``), the synaptic current updated before the membrane (the membrane
integrates the current of this step), spikes of 1 when ``v > v_threshold`` (strict, as the spec
writes), then the reset::

    CubaLIF only:  i <- i + dt / tau_syn * (-i + w_in * x)          (LIF: i = x)
                   v <- v + dt / tau_mem * (v_leak - v + r * i)
                   s  = 1 if v > v_threshold else 0
                   v <- v_reset where s = 1   (reset="zero", the spec's)   or   v <- v - v_threshold

with ``v = v_leak`` (the resting potential) and ``i = 0`` at the start. snnTorch writes its
``Leaky`` and ``Synaptic`` neurons with ``dt = 1e-4`` and ``tau = dt / (1 - beta)``,
``r = tau / dt`` (``w_in = tau_syn / dt``), so with ``dt=1e-4`` these updates are snnTorch's
``mem = beta * mem + input`` (``syn = alpha * syn + input; mem = beta * mem + syn``) up to float
rounding; its ``reset_mechanism="zero"`` is the spec's reset.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from spikecast.nn.neuron import IFNeuron
from spikecast.nn.stateful import State

LEAKY_RESETS = ("zero", "subtract")


class LeakyNeuron(IFNeuron):
    """A NIR ``LIF`` (``tau_syn=None``) or ``CubaLIF`` neuron, stepped with forward Euler (module doc).

    Shares :class:`IFNeuron`'s bookkeeping (name, threshold, spike counting, firing rate), so the
    runtime, ``validate`` and the energy model treat it like any neuron; it sends spikes of 1.
    State: the membrane ``v`` and, for ``CubaLIF``, the synaptic current ``i``.
    """

    state_buffers = ("v", "i")

    def __init__(self, *, tau_mem, r, v_leak, v_threshold, v_reset, dt: float, tau_syn=None, w_in=None,
                 reset: str = "zero", name: str = ""):
        if reset not in LEAKY_RESETS:
            raise ValueError(f"neuron {name!r}: reset must be one of {LEAKY_RESETS}, got {reset!r}")
        dt = float(dt)
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"neuron {name!r}: dt must be a positive number of seconds, got {dt!r}")
        super().__init__(v_threshold, name, v_init=0.0)
        self.reset_mode = reset
        self.dt = dt
        tensors = {"tau_mem": tau_mem, "r": r, "v_leak": v_leak, "v_reset": v_reset}
        if (tau_syn is None) != (w_in is None):
            raise ValueError(f"neuron {name!r}: a CubaLIF neuron needs both tau_syn and w_in")
        if tau_syn is not None:
            tensors.update(tau_syn=tau_syn, w_in=w_in)
        for key, value in tensors.items():
            t = torch.as_tensor(value, dtype=torch.float32).detach().clone()
            if not torch.isfinite(t).all():
                raise ValueError(f"neuron {name!r}: {key} must be finite")
            if key.startswith("tau") and (t <= 0).any():
                raise ValueError(f"neuron {name!r}: {key} must be > 0")
            self.register_buffer(key, t)
        if tau_syn is None:
            self.register_buffer("tau_syn", None)
            self.register_buffer("w_in", None)

    @property
    def synaptic(self) -> bool:
        """True for a ``CubaLIF`` neuron (it keeps a synaptic current)."""
        return self.tau_syn is not None

    def state_names(self) -> tuple[str, ...]:
        return ("v", "i") if self.synaptic else ("v",)

    def initial_state(self, current: torch.Tensor) -> State:
        v = torch.zeros_like(current) + self.v_leak.to(current.dtype)
        return (v, torch.zeros_like(current)) if self.synaptic else (v,)

    def step(self, current: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        v = state[0]
        if self.synaptic:
            i = state[1] + self.dt / self.tau_syn * (self.w_in * current - state[1])
        else:
            i = current
        v = v + self.dt / self.tau_mem * (self.v_leak - v + self.r * i)
        fired = v > self.threshold
        out = fired.to(current.dtype)
        v = torch.where(fired, self.v_reset if self.reset_mode == "zero" else v - self.threshold, v)
        return out, ((v, i) if self.synaptic else (v,))

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        state = self.get_state()
        out, new_state = self.step(current, self.initial_state(current) if state is None else state)
        self.set_state(new_state)
        return self._finish(out)

    def nir_parameters(self) -> dict[str, Optional[torch.Tensor]]:
        """The NIR node's parameters (what ``to_nir`` writes back)."""
        return {"tau_mem": self.tau_mem, "tau_syn": self.tau_syn, "r": self.r, "v_leak": self.v_leak,
                "v_threshold": self.threshold, "v_reset": self.v_reset, "w_in": self.w_in}

    def config(self) -> dict:
        return {"name": self.name, "dt": self.dt, "reset": self.reset_mode}

    def twin(self, threshold: torch.Tensor) -> "LeakyNeuron":
        raise NotImplementedError(f"neuron {self.name!r}: leaky neurons read from NIR are not recalibrated")

    @classmethod
    def from_config(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "LeakyNeuron":
        return cls(tau_mem=tensors["tau_mem"], r=tensors["r"], v_leak=tensors["v_leak"],
                   v_threshold=tensors["threshold"], v_reset=tensors["v_reset"], tau_syn=tensors.get("tau_syn"),
                   w_in=tensors.get("w_in"), **config)

    def extra_repr(self) -> str:
        kind = "CubaLIF" if self.synaptic else "LIF"
        return f"name={self.name!r}, {kind}, dt={self.dt:g}, reset={self.reset_mode!r}"
