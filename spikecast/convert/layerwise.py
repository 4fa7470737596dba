"""Neuron-by-neuron simulation over a fixed set of inputs, for layer-wise calibration.

Correcting neuron ``k`` needs its output over ``T`` steps *given the already-corrected neurons
below it*. Re-simulating the whole upstream network for every neuron costs O(n^2) layer-steps;
this runtime costs O(n): the spike train of every neuron that is still needed downstream is kept
(as int8 signs, ``T x images x ...``; the spike amplitude is the neuron's threshold), and neuron
``k`` is simulated by running only the ops between those recorded trains and itself, step by
step, with the same :class:`IFNeuron` modules the normal runtime uses. A train is freed as soon as
no later neuron reads it.

The results equal those of :meth:`SpikingNetwork.simulate` on the same inputs (every op here acts
per sample, so batching does not change them).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.fx as fx

from spikecast.calibrate.statistics import channel_sum
from spikecast.graph.normalize import views_to_reshapes
from spikecast.nn.encoding import PoissonEncoder
from spikecast.nn.neuron import IFNeuron, run_fused
from spikecast.nn.simulation import SimulationConfig
from spikecast.nn.stateful import StatefulModule

StepHook = Callable[[slice, int, torch.Tensor, torch.Tensor], None]  # (images, t, current, output)


def _decode(signs: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
    return signs.to(torch.float32) * amplitude  # keeps the stored (NHWC) layout


def _encode(out: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
    # spikes per step (multi-level neurons send up to `levels`; negative for signed / bipolar ones)
    return torch.round(out / amplitude).to(torch.int8)


def _amplitude(neuron: IFNeuron) -> torch.Tensor:
    scale = 1.0 / (1.0 - neuron.mask_ratio) if (neuron.mask_ratio > 0 and neuron.mask_rescale) else 1.0
    return neuron.threshold.float() * scale


class LayerwiseSimulation:
    """Simulate the neurons of the spiking graph ``gm`` one at a time, in graph order, on inputs ``x``.

    Usage: for each index ``k`` (in order) call :meth:`run` as often as needed (e.g. measure,
    correct, measure again), then :meth:`commit` once to record neuron ``k``'s final spike train.
    """

    def __init__(self, gm: fx.GraphModule, x: torch.Tensor, timesteps: int, simulation: SimulationConfig,
                 batch_size: int = 256):
        self.gm = gm
        self.x = x
        self.timesteps = int(timesteps)
        self.batch_size = int(batch_size)
        self.simulation = simulation
        self.channels_last = bool(simulation.channels_last)
        self.encoding = simulation.encoding
        self.nodes = [n for n in self.gm.graph.nodes
                      if n.op == "call_module" and isinstance(self.gm.get_submodule(n.target), IFNeuron)]
        neuron_set = set(self.nodes)
        self._parts: list[tuple[fx.GraphModule, list[fx.Node]]] = []
        for node in self.nodes:
            part, inputs = self._subgraph(node, neuron_set)
            views_to_reshapes(part.graph)
            part.recompile()
            self._parts.append((part, inputs))
        # last neuron index whose subgraph reads each recorded train
        self._last_use: dict[str, int] = {}
        for k, (_, inputs) in enumerate(self._parts):
            for b in inputs:
                if b.op != "placeholder":
                    self._last_use[b.name] = k
        self._records: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def neuron(self, k: int) -> IFNeuron:
        return self.gm.get_submodule(self.nodes[k].target)

    def _subgraph(self, node: fx.Node, neurons: set) -> tuple[fx.GraphModule, list[fx.Node]]:
        needed: set[fx.Node] = set()
        inputs: set[fx.Node] = set()
        stack = list(node.all_input_nodes)
        while stack:
            n = stack.pop()
            if n in needed or n in inputs:
                continue
            if n.op == "placeholder" or n in neurons:
                inputs.add(n)
                continue
            needed.add(n)
            stack.extend(n.all_input_nodes)
        order = {n: i for i, n in enumerate(self.gm.graph.nodes)}
        inputs_sorted = sorted(inputs, key=order.__getitem__)
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for b in inputs_sorted:
            env[b] = graph.placeholder(f"in_{b.name}")
        for n in sorted(needed, key=order.__getitem__):
            env[n] = graph.node_copy(n, lambda a: env[a])
        spikes = graph.node_copy(node, lambda a: env[a])
        graph.output((env[node.args[0]], spikes))
        return fx.GraphModule(self.gm, graph, class_name="NeuronPart"), inputs_sorted

    def _input(self, b: fx.Node, t: int, sl: slice, x_t: torch.Tensor) -> torch.Tensor:
        if b.op == "placeholder":
            return x_t
        signs, amplitude = self._records[b.name]
        return run_fused(_decode, signs[t, sl], amplitude)

    def run(self, k: int, on_step: Optional[StepHook] = None, record: bool = False,
            limit: Optional[int] = None) -> torch.Tensor:
        """Simulate neuron ``k`` on all inputs (the first ``limit``); return its mean output per
        channel (float64).

        ``on_step(images, t, current, output)`` sees every step (0-based ``t``); ``record`` keeps
        the spike train for the neurons above (see :meth:`commit`).
        """
        part, inputs = self._parts[k]
        neuron = self.neuron(k)
        stateful = [m for m in part.modules() if isinstance(m, StatefulModule)]
        total, count = None, 0
        signs_all = None
        T = self.timesteps
        amplitude = _amplitude(neuron).to(self.x.device)
        with torch.inference_mode():
            n = len(self.x) if limit is None else min(int(limit), len(self.x))
            for start in range(0, n, self.batch_size):
                sl = slice(start, min(start + self.batch_size, n))
                x = self.x[sl]
                if x.dim() == 4 and self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                encoder = None
                if self.encoding == "poisson":
                    encoder = PoissonEncoder(self.simulation.input_scale, self.simulation.encoding_seed)
                    encoder.start(x)
                for m in stateful:
                    m.reset()
                for t in range(T):
                    x_t = encoder.step() if encoder is not None else x
                    current, out = part(*[self._input(b, t, sl, x_t) for b in inputs])
                    s = channel_sum(out)
                    total = s if total is None else total + s
                    count += out.numel() // s.numel()
                    if on_step is not None:
                        on_step(sl, t, current, out)
                    if record:
                        if signs_all is None:
                            signs_all = self._record_buffer(T, out)
                        signs_all[t, sl].copy_(run_fused(_encode, out, amplitude))
        if record:
            self._records[self.nodes[k].name] = (signs_all, amplitude.to(signs_all.device))
        return total / count

    def _record_buffer(self, T: int, like: torch.Tensor) -> torch.Tensor:
        shape = (T, len(self.x)) + tuple(like.shape[1:])
        if like.dim() == 4 and self.channels_last:
            # stored as (T, N, H, W, C) and viewed as (T, N, C, H, W): every step's slice is an NHWC
            # tensor, the layout the convolutions want, so reading it back needs no reorder
            n, c, h, w = shape[1:]
            return torch.empty((T, n, h, w, c), dtype=torch.int8, device=like.device).permute(0, 1, 4, 2, 3)
        return torch.empty(shape, dtype=torch.int8, device=like.device)

    def commit(self, k: int) -> torch.Tensor:
        """Record neuron ``k``'s spike train (with its final parameters) for the neurons above it,
        free the trains nobody needs any more, and return its mean output per channel."""
        rate = self.run(k, record=self.nodes[k].name in self._last_use)
        for name, last in list(self._last_use.items()):
            if last <= k and name in self._records:
                del self._records[name]
        return rate

    @property
    def recorded_bytes(self) -> int:
        return sum(s.numel() * s.element_size() for s, _ in self._records.values())
