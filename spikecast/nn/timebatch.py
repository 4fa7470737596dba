"""Time-batched execution: a chunk of time steps through each layer in one call.

The step graph of a :class:`~spikecast.runtime.network.SpikingNetwork` runs one time step for a
batch of images. Here the same graph runs ``steps x batch`` samples at once: every layer without
state (convolutions, linear layers, adds, pools, reshapes - all per-sample ops) sees the chunk's
steps as a larger batch, and every stateful module (neurons, spiking max-pools, compensation)
runs its recurrence over the chunk with :meth:`~spikecast.nn.stateful.StatefulModule.run_steps`
(for large IF layers one fused kernel over all the steps). The network must be feed-forward in
time, which every converted network is: a layer's output at step ``t`` depends on the steps
``<= t`` of the layers below it only, so layer-by-layer order gives the step-by-step values.

Layout inside the graph: a time-varying value is ``(steps * batch, ...)`` (step-major); a value of
the static prefix (and the analog input) enters as a broadcast view ``(steps, batch, ...)`` without
a copy and is flattened only where a stateless op reads it; a static value that does not depend on
the input (a constant folded in the prefix) enters as it is. A static *integer* that is the batch
size (``sym_size(x, 0)`` computed in the prefix, e.g. for a final ``reshape(batch, -1)``) becomes
``steps * batch``. Every stateful module must see the batch on the first axis (checked on the first
step of every new image shape: a network that keeps it elsewhere runs step by step).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.fx as fx
from torch import nn

from spikecast.nn.stateful import StatefulModule


class _Chunk:
    """The number of steps of the chunk being run (shared by every wrapper of one graph)."""

    steps = 1


class _TimeSteps(nn.Module):
    """Runs a stateful module over the chunk: ``(steps * batch, ...)`` or a time-major static view
    ``(steps, batch, ...)`` in, ``(steps * batch, ...)`` out."""

    def __init__(self, module: StatefulModule, chunk: _Chunk, time_major_input: bool):
        super().__init__()
        self.__dict__["module"] = module  # not a submodule: the network owns it
        self.chunk = chunk
        self.time_major_input = time_major_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.chunk.steps
        series = x if self.time_major_input else x.unflatten(0, (steps, -1))
        return self.module.run_steps(series).flatten(0, 1)


def _flatten_steps(value: torch.Tensor) -> torch.Tensor:
    # a time-varying input, passed as a dense (steps, batch, ...) tensor: a view
    return value.flatten(0, 1)


def _flatten_time(value: Any) -> Any:
    # a static tensor read by a stateless op: one copy per step (the op sees steps * batch samples),
    # in the layout of one step (empty_like keeps NHWC; a reshape of the broadcast view would not)
    if not isinstance(value, torch.Tensor):
        return value
    return torch.empty_like(value).copy_(value).flatten(0, 1)


class TimeBatchedStep:
    """The step graph ``step(x_t, *static) -> output`` run for a chunk of steps at once.

    ``batch_ints``: the names of the step graph's static placeholders that hold the batch size.
    ``varying``: the placeholders whose value changes with the step (the layer-wise runtime's
    recorded spike trains), passed to :meth:`__call__` as dense ``(steps, batch, ...)`` tensors;
    every other tensor is the same at every step and passed once, ``(batch, ...)``.
    :meth:`__call__` returns the outputs of the chunk's steps, ``(steps, batch, ...)`` (a tuple of
    them for a graph with several outputs).
    """

    def __init__(self, step: fx.GraphModule, batch_ints: Sequence[str] = (), other_ints: Sequence[str] = (),
                 constants: Sequence[str] = (), varying: Sequence[str] = ()):
        self.chunk = _Chunk()
        self.batch_ints, self.other_ints = set(batch_ints), set(other_ints)
        # static values that do not depend on the input (e.g. a layer scale reshaped in the
        # prefix): no batch axis, passed as they are
        self.constants = set(constants)
        self.varying = set(varying)
        graph = fx.Graph()
        root = nn.Module()
        root.add_module("net", step)
        wrappers = nn.ModuleList()
        root.add_module("time_steps", wrappers)
        env: dict[fx.Node, fx.Node] = {}
        flat: dict[fx.Node, fx.Node] = {}
        placeholders = [n for n in step.graph.nodes if n.op == "placeholder"]
        self.placeholder_names = [n.name for n in placeholders]

        def flat_arg(a):
            # stateless ops read the flattened (steps * batch, ...) form of a placeholder
            if a in flat:
                return flat[a]
            return env[a]

        for node in step.graph.nodes:
            if node.op == "placeholder":
                env[node] = graph.placeholder(node.name)
                if node.name in self.varying:
                    flat[node] = graph.call_function(_flatten_steps, (env[node],))
                elif node.name not in self.constants:
                    flat[node] = graph.call_function(_flatten_time, (env[node],))
            elif node.op == "get_attr":
                env[node] = graph.get_attr(f"net.{node.target}")
            elif node.op == "call_module" and isinstance(step.get_submodule(str(node.target)), StatefulModule):
                if len(node.args) != 1 or node.kwargs:
                    raise ValueError(f"stateful node {node.name} takes {len(node.args)} inputs; time batching "
                                     "handles one")
                source = node.args[0]
                time_major = isinstance(source, fx.Node) and source.op == "placeholder"
                if time_major and source.name in self.constants:
                    raise ValueError(f"stateful node {node.name} reads a constant")
                wrappers.append(_TimeSteps(step.get_submodule(str(node.target)), self.chunk, time_major))
                env[node] = graph.call_module(f"time_steps.{len(wrappers) - 1}",
                                              (env[source] if time_major else flat_arg(source),))
            elif node.op == "call_module":
                env[node] = graph.call_module(f"net.{node.target}",
                                              fx.node.map_arg(node.args, flat_arg),
                                              fx.node.map_arg(node.kwargs, flat_arg))
            elif node.op == "output":
                graph.output(fx.node.map_arg(node.args[0], flat_arg))
            else:
                env[node] = graph.node_copy(node, flat_arg)
        self.module = fx.GraphModule(root, graph, class_name="TimeBatchedStep")
        self.module.graph.eliminate_dead_code()  # the flattened forms nobody reads
        self.module.recompile()

    def supports(self, static: Sequence[Any]) -> bool:
        """Whether every static value is a tensor or an integer whose meaning is known."""
        names = self.placeholder_names[1:]
        return all(isinstance(v, torch.Tensor) or n in self.batch_ints or n in self.other_ints or n in self.constants
                   for n, v in zip(names, static))

    def __call__(self, steps: int, x: torch.Tensor, static: Sequence[Any], batch: int) -> torch.Tensor:
        self.chunk.steps = int(steps)
        values = []
        for name, value in zip(self.placeholder_names, (x, *static)):
            if name in self.constants or name in self.varying:
                values.append(value)
            elif isinstance(value, torch.Tensor):
                values.append(value.unsqueeze(0).expand(steps, *value.shape))
            elif name in self.batch_ints:
                values.append(steps * int(value))
            else:
                values.append(value)
        out = self.module(*values)
        if isinstance(out, (tuple, list)):
            return tuple(o.unflatten(0, (steps, batch)) for o in out)
        return out.unflatten(0, (steps, batch))


def input_independent(gm: fx.GraphModule, boundary: Sequence[fx.Node]) -> list[str]:
    """The names (``static_<node>``) of the static values that do not depend on the network input."""
    dependent: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or any(a in dependent for a in node.all_input_nodes):
            dependent.add(node)
    return [f"static_{b.name}" for b in boundary if b not in dependent]


def static_integers(boundary: Sequence[fx.Node]) -> tuple[list[str], list[str]]:
    """``(batch, other)``: the names (``static_<node>``) of the static placeholders that are
    ``sym_size(tensor, 0)`` - the batch size, which becomes ``steps * batch`` - and
    ``sym_size(tensor, d > 0)``, which time batching leaves alone. A static integer computed any
    other way may depend on the batch size in a way nothing here rewrites: :meth:`TimeBatchedStep.supports`
    then says no and the runtime runs step by step."""
    batch, other = [], []
    for b in boundary:
        if b.op == "call_function" and b.target is torch.ops.aten.sym_size.int and len(b.args) > 1:
            (batch if b.args[1] == 0 else other).append(f"static_{b.name}")
    return batch, other
