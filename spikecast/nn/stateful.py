"""The one protocol of every module that keeps state across the time steps of a simulation.

A :class:`StatefulModule` (the IF neuron, the spiking max-pool, the running means and expectation
differences of compensated ops) is used the same way by every runtime:

* its state lives in registered, non-persistent buffers (``state_buffers``): ``.to(device)`` /
  ``.to(dtype)`` move it with the weights, ``state_dict`` and saved networks never contain it,
  and a deep copy owns its own;
* :meth:`reset` forgets it (before every simulation), :meth:`detach_state` cuts its autograd
  history (truncated backpropagation through time);
* :meth:`initial_state` and :meth:`step` are the module as a pure function,
  ``step(x, state) -> (y, new_state)`` with ``state = initial_state(x)`` before the first step.
  Nothing is mutated: this is what ONNX export traces (the state becomes explicit graph inputs
  and outputs) and what any other runtime can reproduce;
* :meth:`forward` is one step on the buffered state. A subclass may override it with an in-place
  fast path, but it must give exactly the values of :meth:`step` (tests/test_stateful.py checks
  every registered type); :meth:`run_steps` is several steps at once (``(steps, batch, ...)`` in
  and out, the time-batched runtime's call), with the same values as as many calls of forward;
* :meth:`reserve_steps` tells the module how many steps the runtime will run before the next
  :meth:`reset`, without autograd: a module may then keep its state in a narrower type that is
  exact for that many steps (a signed neuron's spike count in a byte); by default nothing changes;
* :meth:`config` / :meth:`from_config` round-trip the module through JSON plus its persistent
  tensors (how :meth:`SpikingNetwork.save` / ``load`` store it, without pickle).

Subclassing registers the class in :data:`STATEFUL_TYPES` by its name (the type name saved
networks refer to); an abstract base passes ``register=False``.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch
from torch import nn

#: Every stateful module type by class name, filled by subclassing :class:`StatefulModule`.
STATEFUL_TYPES: dict[str, type["StatefulModule"]] = {}

State = tuple[torch.Tensor, ...]


class StatefulModule(nn.Module):
    """Base class of the modules of a spiking graph that keep state across steps (see the module doc)."""

    #: Names of the buffers that may hold state, in the order of the state tuple.
    state_buffers: ClassVar[tuple[str, ...]] = ()
    #: Whether the module's output is made of spikes (events), so a weighted layer it feeds
    #: performs accumulates only (neurons, spiking max-pools); dense helpers say False.
    emits_spikes: ClassVar[bool] = False

    def __init_subclass__(cls, register: bool = True, **kwargs):
        super().__init_subclass__(**kwargs)
        if not register:
            return
        known = STATEFUL_TYPES.get(cls.__name__)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"two stateful module types are named {cls.__name__!r} ({known.__module__}."
                            f"{known.__qualname__} and {cls.__module__}.{cls.__qualname__}): saved networks "
                            "refer to them by name; rename one")
        STATEFUL_TYPES[cls.__name__] = cls

    def __init__(self):
        super().__init__()
        for name in self.state_buffers:
            self.register_buffer(name, None, persistent=False)

    # ------------------------------------------------------------------ buffered state
    def state_names(self) -> tuple[str, ...]:
        """The buffers this instance's state uses, in state order (a subset of ``state_buffers``:
        e.g. only a signed neuron keeps its emitted charge)."""
        return self.state_buffers

    def get_state(self) -> Optional[State]:
        """The buffered state, or None before the first step since the last :meth:`reset`."""
        values = tuple(getattr(self, name) for name in self.state_names())
        return None if any(v is None for v in values) else values

    def set_state(self, state: State) -> None:
        names = self.state_names()
        if len(state) != len(names):
            raise ValueError(f"{type(self).__name__}: expected {len(names)} state tensors {names}, got {len(state)}")
        for name, value in zip(names, state):
            setattr(self, name, value)

    def reset(self) -> None:
        """Forget the state (call before each simulation)."""
        for name in self.state_buffers:
            setattr(self, name, None)

    def reserve_steps(self, steps: int) -> None:
        """The runtime will run at most ``steps`` steps from the next state it creates, without
        autograd (called after :meth:`reset`; :meth:`reset` forgets it). A module may store its state
        in a narrower type exact for that many steps; the values must not change. Default: nothing."""

    def detach_state(self) -> None:
        """Cut the autograd history of the state (truncated backpropagation through time)."""
        for name in self.state_buffers:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.detach())

    # ------------------------------------------------------------------ pure functional form
    def initial_state(self, x: torch.Tensor) -> State:
        """The state before the first step, for inputs shaped like ``x`` (pure)."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step as a pure function ``(x, state) -> (y, new state)``; mutates nothing."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One step on the buffered state (the pure step; subclasses may run it in place)."""
        state = self.get_state()
        y, new_state = self.step(x, self.initial_state(x) if state is None else state)
        self.set_state(new_state)
        return y

    def run_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Several steps at once: ``x`` is ``(steps, batch, ...)``, the result ``(steps, batch, ...)``.

        Exactly the values of ``steps`` calls of :meth:`forward` on ``x[0], x[1], ...``: the state
        comes from the buffers and goes back to them, so consecutive calls continue one simulation
        (the time-batched runtime runs a network chunk of steps by chunk of steps). Subclasses may
        override it with a faster scan that gives the same values.
        """
        return torch.stack([self(x[t]) for t in range(x.shape[0])])

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        """JSON-serialisable constructor arguments (tensors go through ``from_config``'s ``tensors``)."""
        return {}

    @classmethod
    def from_config(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "StatefulModule":
        """Rebuild a module from :meth:`config` and its persistent tensors (by local name)."""
        return cls(**config)


def step_counter(like: torch.Tensor) -> torch.Tensor:
    """A step count of zero (int64 scalar on ``like``'s device): the state of modules that need
    the step index (it moves with ``.to(device)`` and is an explicit input of an exported step)."""
    return torch.zeros((), dtype=torch.int64, device=like.device)
