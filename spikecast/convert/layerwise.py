"""Neuron-by-neuron simulation over a fixed set of inputs, for layer-wise calibration.

Correcting neuron ``k`` needs its output over ``T`` steps *given the already-corrected neurons
below it*. Re-simulating the whole upstream network for every neuron costs O(n^2) layer-steps;
this runtime costs O(n): the spike train of every neuron that is still needed downstream is kept
(as int8 spike counts, ``T x images x ...``; the spike amplitude is the neuron's threshold), and
neuron ``k`` is simulated by running only the ops between those recorded trains and itself. A
train is freed as soon as no later neuron reads it.

Time-batched: the ops between the recorded trains and neuron ``k`` (its *input part*: convolutions,
adds, pools, any stateful module in between) run on a block of images for all ``T`` steps in one
call (:class:`~spikecast.nn.timebatch.TimeBatchedStep`, chunks of :data:`STEP_CHUNK` steps), and
the neuron runs over those currents with the same :class:`IFNeuron` module the normal runtime uses:
step by step when its spike train is recorded, else through :meth:`IFNeuron.output_sum` (the rate
is all a measurement needs). Blocks hold at most :data:`BLOCK_ELEMENTS` values per tensor (fewer images per block,
or shorter chunks, for large layers).

No work repeated per neuron: the correction runs neuron ``k`` several times (measure, correct,
measure again, record) with the same inputs - only the neuron's own parameters change. Its input
currents are computed once and kept for the later runs (as many images as ``cache_bytes``
allows; the rest are recomputed), so a run after the first costs the neuron's recurrence alone.

No work repeated between neurons that share an input: when neuron ``k``'s input part passes through
the input current of another neuron ``j`` - a max-pool moved before new neurons
(:func:`~spikecast.graph.normalize.move_maxpool_before_sites`) reads the convolution that also
drives the unpooled neuron; in GoogLeNet-style networks that is 40% of the layer-wise work - ``k``
is simulated right after ``j`` and reads ``j``'s kept currents (the images they hold) instead of
recomputing the convolution: its *shortcut* part is only what lies between.

No work repeated along an analog path: in a transformer the residual stream is no neuron - each
block adds its projections' currents to it - so the input part of every neuron would reach back
through every earlier block to their spike trains (O(n^2) work, and every train kept to the end:
ViT-S/16 at 224 ran out of 24 GB). A node that the input parts of several neurons compute, that
contains a weighted layer and no stateful module, is a *cut*: computed once (float32, ``T x images
x ...``) when the first neuron needs it and read like a recorded train by the parts above it, which
stop there. Cuts and trains are freed after their last reader.

The results equal those of :meth:`SpikingNetwork.simulate` on the same inputs (every op here acts
per sample; a convolution over a larger batch may round differently in the last bit).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Optional

import torch
import torch.fx as fx

from spikecast.calibrate.statistics import channel_sum
from spikecast.graph.normalize import views_to_reshapes
from spikecast.graph.ops import WEIGHTED, packet
from spikecast.nn.encoding import PoissonEncoder
from spikecast.nn.neuron import IFNeuron, run_fused
from spikecast.nn.simulation import SimulationConfig
from spikecast.nn.stateful import StatefulModule
from spikecast.nn.timebatch import TimeBatchedStep

#: At most this many values per tensor in one block (images x steps x one image's largest layer
#: in the input part): 128 MiB of float32.
BLOCK_ELEMENTS = 1 << 25
#: Steps per call of an input part.
STEP_CHUNK = 8
#: Bytes of input currents kept per neuron for its later runs (float32, ``T`` steps per image).
CACHE_BYTES = 1 << 30


def _decode(signs: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
    return signs.to(torch.float32) * amplitude  # keeps the stored (NHWC) layout


def _encode(out: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
    # spikes per step (multi-level neurons send up to `levels`; negative for signed / bipolar ones)
    return torch.round(out / amplitude).to(torch.int8)


def _amplitude(neuron: IFNeuron) -> torch.Tensor:
    scale = 1.0 / (1.0 - neuron.mask_ratio) if (neuron.mask_ratio > 0 and neuron.mask_rescale) else 1.0
    return neuron.threshold.float() * scale


class _Sizes(fx.Interpreter):
    """One step on one image: the number of values per image of every node's output."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.numel: dict[str, int] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.dim() > 0:
            self.numel[n.name] = out[0].numel()
        return out


class LayerwiseSimulation:
    """Simulate the neurons of the spiking graph ``gm`` one at a time, in graph order, on inputs ``x``.

    Usage: for each index ``k`` (in order) call :meth:`run` as often as needed (e.g. measure,
    correct, measure again), then :meth:`commit` once to record neuron ``k``'s final spike train.
    ``batch_size`` bounds the images per block; ``cache_bytes`` the input currents kept per neuron.
    """

    def __init__(self, gm: fx.GraphModule, x: torch.Tensor, timesteps: int, simulation: SimulationConfig,
                 batch_size: int = 256, cache_bytes: int = CACHE_BYTES):
        self.gm = gm
        self.x = x
        self.timesteps = int(timesteps)
        self.batch_size = int(batch_size)
        self.cache_bytes = int(cache_bytes)
        self.simulation = simulation
        self.channels_last = bool(simulation.channels_last)
        self.encoding = simulation.encoding
        nodes = [n for n in self.gm.graph.nodes
                 if n.op == "call_module" and isinstance(self.gm.get_submodule(n.target), IFNeuron)]
        sizes = self._sizes()
        neuron_set = set(nodes)
        position = {n: i for i, n in enumerate(nodes)}
        graph_order = {n: i for i, n in enumerate(self.gm.graph.nodes)}
        built = {node: self._part(node, neuron_set, sizes) for node in nodes}
        cuts = self._find_cuts(nodes, built, neuron_set)
        if cuts:
            built = {node: self._part(node, neuron_set, sizes, boundary=cuts) for node in nodes}
        # values per image of the largest spike train and of the two largest cuts (the memory estimate)
        self._largest_train = max([sizes.get(n.name, 1) for n in nodes] + [1])
        self._largest_cuts = sorted(sizes.get(c.name, 1) for c in cuts)[-2:]
        # shortcuts: neuron k whose part passes through neuron j's input current (not j's spikes)
        # reads j's kept currents; it runs right after j, which its other inputs must allow
        current_of = {n.args[0]: n for n in nodes if isinstance(n.args[0], fx.Node) and n.args[0] not in neuron_set}
        shortcuts: dict[fx.Node, tuple[fx.Node, tuple]] = {}
        for node in nodes:
            sources = [current_of[m] for m in built[node][4] if m in current_of and current_of[m] is not node]
            if len(sources) != 1 or built[sources[0]][3] or position[sources[0]] > position[node]:
                continue  # none, ambiguous, j's current is one step's worth (cheap to recompute), or j after k
            j = sources[0]
            if j in shortcuts or any(src is j for src, _ in shortcuts.values()):
                continue  # one hand-over per kept cache
            short = self._part(node, neuron_set, sizes, boundary=cuts | {j.args[0]})
            others = [b for b in short[1] if b is not j.args[0] and b.op != "placeholder"]
            if any(b in cuts for b in others):
                continue  # a cut is computed when the neuron in graph order first needs it
            if all(b in built[j][1] or position[b] < position[j] for b in others):
                shortcuts[node] = (j, short)
        order = [n for n in nodes if n not in shortcuts]
        for node, (j, _) in sorted(shortcuts.items(), key=lambda kv: position[kv[0]]):
            order.insert(order.index(j) + 1, node)
        self.nodes = order
        # per neuron: its input part (time-batched), the nodes it reads, the largest value per image,
        # whether its current is the same at every step (the analog input through stateless ops:
        # computed once, as the normal runtime's static prefix is)
        self._parts: list[tuple[TimeBatchedStep, list[fx.Node], int, bool]] = [built[n][:4] for n in order]
        # per neuron: the stateful modules of its input part (reset before each block; the time-
        # batched wrapper runs them without owning them)
        self._part_state: list[list[StatefulModule]] = [built[n][5] for n in order]
        # per neuron with a shortcut: (index of the neuron whose currents it reads, its shortcut part
        # as above, the part's stateful modules)
        index = {n: i for i, n in enumerate(order)}
        self._shortcuts: dict[int, tuple[int, tuple, list[StatefulModule]]] = {
            index[n]: (index[j], short[:4], short[5]) for n, (j, short) in shortcuts.items()}
        # the currents neuron j kept, handed to the neuron that reads them: (j, cache, images filled)
        self._source: Optional[tuple[int, torch.Tensor, int]] = None
        # per cut: its part (time-batched), the nodes it reads, the largest value per image
        self._cut_parts: dict[str, tuple[TimeBatchedStep, list[fx.Node], int]] = {}
        for c in sorted(cuts, key=lambda n: graph_order[n]):
            self._cut_parts[c.name] = self._part(c, neuron_set, sizes, cuts - {c}, output=c)[:3]
        # the neuron index at which each cut is computed: the first that reads it, directly or
        # through a later cut (cuts in reverse graph order: their readers come after them)
        readers: dict[str, list[int]] = {}
        for k, (_, inputs, _, _) in enumerate(self._parts):
            for b in inputs:
                readers.setdefault(b.name, []).append(k)
        computed_at: dict[str, int] = {}
        for name in reversed(list(self._cut_parts)):
            computed_at[name] = min(readers.get(name, [len(order)]))
            for b in self._cut_parts[name][1]:
                readers.setdefault(b.name, []).append(computed_at[name])
        # last neuron index whose part (or a cut computed for it) reads each recorded train or cut
        self._last_use: dict[str, int] = {}
        neuron_names = {n.name for n in nodes}
        for name, ks in readers.items():
            if name in neuron_names or name in self._cut_parts:
                self._last_use[name] = max(ks)
        # per recorded node: a neuron's spike train (int8 spikes per step, amplitude) or a cut's
        # values (float32, None)
        self._records: dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        self._cache_for: Optional[int] = None  # the neuron whose currents are cached
        self._cache: Optional[torch.Tensor] = None  # (T, images, ...) float32
        self._cached = 0  # images of the cache filled

    def neuron(self, k: int) -> IFNeuron:
        return self.gm.get_submodule(self.nodes[k].target)

    def _stateful(self) -> list[StatefulModule]:
        return [m for m in self.gm.modules() if isinstance(m, StatefulModule)]

    def _sizes(self) -> dict[str, int]:
        """Values per image of every node, from one step on one image (state reset around it)."""
        stateful = self._stateful()
        x = self.x[:1]
        if x.dim() == 4 and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for m in stateful:
            m.reset()
        interpreter = _Sizes(self.gm)
        try:
            with torch.inference_mode():
                interpreter.run(x)
        finally:
            for m in stateful:
                m.reset()
        return interpreter.numel

    def _part(self, node: fx.Node, neurons: set, sizes: dict[str, int], boundary: frozenset = frozenset(),
              output: Optional[fx.Node] = None) -> tuple:
        """``node``'s input part (or the part computing ``output`` itself): ``(time-batched part, its
        inputs, largest value per image, static, the nodes it computes, its stateful modules)``;
        ``boundary``: nodes read as inputs."""
        part, inputs, members = self._subgraph(node, neurons, boundary, output)
        views_to_reshapes(part.graph)
        part.recompile()
        varying = [f"in_{b.name}" for b in inputs if b.op != "placeholder" or self.encoding == "poisson"]
        largest = max([sizes.get(n.name, 1) for n in members] + [1])
        stateful = [m for m in part.modules() if isinstance(m, StatefulModule)]
        static = not varying and not stateful
        computed = set(members) - set(inputs) - {node}
        return TimeBatchedStep(part, varying=varying), inputs, largest, static, computed, stateful

    def _find_cuts(self, nodes: list[fx.Node], built: dict, neurons: set) -> frozenset:
        """The nodes worth computing once (see the module's docstring): computed by the input parts
        of two or more neurons, stateless and driven by spike trains up to the trains, with a
        weighted layer among those ops, no neuron's own input current (a pooled twin reads those
        through its shortcut) and not the only reader of a node that is a cut already."""
        if self.encoding == "poisson":
            return frozenset()  # the input's spikes are drawn per block of images: not shareable
        shared = Counter(m for node in nodes for m in built[node][4])
        stateful: set[fx.Node] = set()
        driven: set[fx.Node] = set()
        weighted: set[fx.Node] = set()
        for n in self.gm.graph.nodes:
            ups = [a for a in n.all_input_nodes if a not in neurons and a.op != "placeholder"]
            if (n.op == "call_module" and isinstance(self.gm.get_submodule(str(n.target)), StatefulModule)) \
                    or any(a in stateful for a in ups):
                stateful.add(n)
            if any(a in neurons or a in driven for a in n.all_input_nodes):
                driven.add(n)
            if (n.op == "call_function" and packet(n) in WEIGHTED) or any(a in weighted for a in ups):
                weighted.add(n)
        inputs_of_neurons = {n.args[0] for n in nodes if isinstance(n.args[0], fx.Node)}
        candidates = {m for m, count in shared.items()
                      if count >= 2 and m.op in ("call_function", "call_module") and m in driven
                      and m in weighted and m not in stateful and m not in inputs_of_neurons}
        # a node read by a single candidate is computed inside that candidate's part
        return frozenset(m for m in candidates
                         if not (len(m.users) == 1 and next(iter(m.users)) in candidates))

    def _subgraph(self, node: fx.Node, neurons: set, boundary: frozenset = frozenset(),
                  output: Optional[fx.Node] = None) -> tuple[fx.GraphModule, list[fx.Node], list[fx.Node]]:
        """The ops from the recorded trains (and the network input, and the ``boundary`` nodes) to
        ``node``'s input current (or to ``output`` itself): ``(graph module, its inputs in graph
        order, every node it touches)``."""
        needed: set[fx.Node] = set()
        inputs: set[fx.Node] = set()
        stack = list(node.all_input_nodes)
        while stack:
            n = stack.pop()
            if n in needed or n in inputs:
                continue
            if n.op == "placeholder" or n in neurons or n in boundary:
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
        if output is not None:
            env[output] = graph.node_copy(output, lambda a: env[a])
            needed.add(output)
        graph.output(env[output if output is not None else node.args[0]])
        return (fx.GraphModule(self.gm, graph, class_name="NeuronInput"), inputs_sorted,
                list(needed) + inputs_sorted + ([] if output is not None else [node]))

    # ------------------------------------------------------------------ blocks of images and steps
    def _blocks(self, k: int, n: int) -> Iterator[tuple[slice, list[tuple[int, int]]]]:
        """``(images, step chunks)``: blocks of images, run in chunks of at most :data:`STEP_CHUNK`
        steps with at most :data:`BLOCK_ELEMENTS` values per tensor."""
        return self._blocks_for(self._parts[k][2], n)

    def _blocks_for(self, largest: int, n: int) -> Iterator[tuple[slice, list[tuple[int, int]]]]:
        T = self.timesteps
        steps = max(1, min(STEP_CHUNK, T, BLOCK_ELEMENTS // largest))
        images = max(1, min(self.batch_size, BLOCK_ELEMENTS // (steps * largest)))
        # blocks of equal size (not a remainder of one image: one kernel variant fewer)
        images = -(-n // -(-n // images)) if n else images
        chunks = [(t, min(t + steps, T)) for t in range(0, T, steps)]
        for start in range(0, n, images):
            yield slice(start, min(start + images, n)), chunks

    def _inputs(self, inputs: list[fx.Node], sl: slice, t0: int, t1: int, encoder: Optional[PoissonEncoder],
                source: Optional[torch.Tensor] = None) -> list:
        """The values of a part's ``inputs`` on images ``sl``, steps ``t0:t1``; a node that is no
        recorded train nor the input is the kept current ``source`` (a shortcut)."""
        values = []
        for b in inputs:
            if source is not None and b.name not in self._records and b.op != "placeholder":
                values.append(source[t0:t1, sl])
            elif b.op == "placeholder":
                if encoder is not None:
                    values.append(torch.stack([encoder.step() for _ in range(t0, t1)]))
                else:
                    x = self.x[sl]
                    values.append(x.contiguous(memory_format=torch.channels_last)
                                  if x.dim() == 4 and self.channels_last else x)
            else:
                recorded, amplitude = self._records[b.name]
                if amplitude is None:  # a cut: its values
                    values.append(recorded[t0:t1, sl])
                else:
                    values.append(run_fused(_decode, recorded[t0:t1, sl], amplitude))
        return values

    def _shortcut(self, k: int, sl: slice) -> Optional[tuple]:
        """Neuron ``k``'s shortcut ``(part, inputs, stateful modules, source cache)`` when the
        currents it reads were kept for images ``sl``, else None."""
        if k not in self._shortcuts or self._source is None:
            return None
        j, (part, inputs, _, _), stateful = self._shortcuts[k]
        source, cache, cached = self._source
        if source != j or sl.stop > cached:
            return None
        return part, inputs, stateful, cache

    def _currents(self, k: int, sl: slice, chunks: list[tuple[int, int]]) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Neuron ``k``'s input currents on images ``sl``, chunk by chunk of steps: from the cache
        when it holds them, else computed (and kept when the cache has room) - through the shortcut
        when the currents it reads were kept."""
        part, _, _, static = self._parts[k]
        if self._cache_for != k:
            self._cache_for, self._cache, self._cached = k, None, 0
        if sl.stop <= self._cached:
            for t0, t1 in chunks:
                if static:
                    once = self._cache[:, sl]
                    yield t0, t1, once.expand(t1 - t0, *once.shape[1:])
                else:
                    yield t0, t1, self._cache[t0:t1, sl]
            return
        keep = sl.start <= self._cached
        self._compute_cuts(self._parts[k][1])
        if static:  # one step's current, the same at every step
            values = self._inputs(self._parts[k][1], sl, 0, 1, None)
            current = part(1, values[0], values[1:], sl.stop - sl.start)
            keep = keep and self._keep(current, sl, 0, 1, length=1)
            for t0, t1 in chunks:
                yield t0, t1, current.expand(t1 - t0, *current.shape[1:])
        else:
            inputs, stateful, source = self._parts[k][1], self._part_state[k], None
            shortcut = self._shortcut(k, sl)
            if shortcut is not None:
                part, inputs, stateful, source = shortcut
            encoder = None
            if self.encoding == "poisson":
                encoder = PoissonEncoder(self.simulation.input_scale, self.simulation.encoding_seed)
                encoder.start(self.x[sl])
            for m in stateful:
                m.reset()
            for t0, t1 in chunks:
                values = self._inputs(inputs, sl, t0, t1, encoder, source)
                current = part(t1 - t0, values[0], values[1:], sl.stop - sl.start)
                keep = keep and self._keep(current, sl, t0, t1, length=self.timesteps)
                yield t0, t1, current
        if keep:
            self._cached = max(self._cached, min(sl.stop, self._cache.shape[1]))
        if self._source is not None and (k not in self._shortcuts or self._cached >= self._source[2]):
            self._source = None  # not this neuron's, or its own cache now holds what the source held

    def _keep(self, current: torch.Tensor, sl: slice, t0: int, t1: int, length: int) -> bool:
        """Copy the chunk's currents into the cache (``length`` steps, allocated on first use);
        False if it has no room."""
        if self._cache is None:
            per_image = length * current[0, 0].numel() * current.element_size()
            room = min(len(self.x), self.cache_bytes // max(per_image, 1))
            if room < 1:
                return False
            shape = (length, room) + tuple(current.shape[2:])
            self._cache = torch.empty(shape, dtype=current.dtype, device=current.device)
            if current.dim() == 5 and current.stride(-3) == 1:  # NHWC steps stay NHWC
                n, c, h, w = shape[1:]
                self._cache = torch.empty((length, n, h, w, c), dtype=current.dtype,
                                          device=current.device).permute(0, 1, 4, 2, 3)
        stop = min(sl.stop, self._cache.shape[1])
        if stop > sl.start:
            self._cache[t0:t1, sl.start:stop].copy_(current[:, :stop - sl.start])
        return stop > sl.start

    # ------------------------------------------------------------------ runs
    def run(self, k: int, record: bool = False, limit: Optional[int] = None) -> torch.Tensor:
        """Simulate neuron ``k`` on all inputs (the first ``limit``); return its mean output per
        channel (float64). ``record`` keeps the spike train for the neurons above (see :meth:`commit`)."""
        neuron = self.neuron(k)
        total, count = None, 0
        signs_all = None
        T = self.timesteps
        amplitude = _amplitude(neuron).to(self.x.device)
        with torch.inference_mode():
            n = len(self.x) if limit is None else min(int(limit), len(self.x))
            for sl, chunks in self._blocks(k, n):
                neuron.reset()
                for t0, t1, currents in self._currents(k, sl, chunks):
                    if record:
                        for t, current in enumerate(currents, start=t0):
                            out = neuron(current)
                            s = channel_sum(out)
                            total = s if total is None else total + s
                            if signs_all is None:
                                signs_all = self._record_buffer(T, out)
                            signs_all[t, sl].copy_(run_fused(_encode, out, amplitude))
                    else:  # the rate alone: the outputs summed over the chunk's steps
                        s = channel_sum(neuron.output_sum(currents))
                        total = s if total is None else total + s
                    count += currents.numel() // s.numel()
        if record:
            self._records[self.nodes[k].name] = (signs_all, amplitude.to(signs_all.device))
        return total / count

    def currents(self, k: int, limit: int) -> torch.Tensor:
        """Neuron ``k``'s input currents on the first images, ``(T, images, ...)``: ``limit`` images,
        or fewer (at least one block) when they would not fit ``cache_bytes``."""
        blocks = []
        with torch.inference_mode():
            for sl, chunks in self._blocks(k, min(int(limit), len(self.x))):
                if blocks and (self._cache is None or sl.stop > self._cache.shape[1]):
                    break  # the images so far fit the cache; these would not
                blocks.append((sl, [c for _, _, c in self._currents(k, sl, chunks)]))
        images = blocks[-1][0].stop
        if self._cached >= images:  # a view of the cache
            kept = self._cache[:, :images]
            return kept.expand(self.timesteps, *kept.shape[1:]) if self._parts[k][3] else kept
        steps = blocks[0][1]  # no room for one block: its chunks joined
        return torch.cat(steps) if len(steps) > 1 else steps[0]

    def _record_buffer(self, T: int, like: torch.Tensor, dtype: torch.dtype = torch.int8) -> torch.Tensor:
        shape = (T, len(self.x)) + tuple(like.shape[1:])
        if like.dim() == 4 and self.channels_last:
            # stored as (T, N, H, W, C) and viewed as (T, N, C, H, W): every step's slice is an NHWC
            # tensor, the layout the convolutions want, so reading it back needs no reorder
            n, c, h, w = shape[1:]
            return torch.empty((T, n, h, w, c), dtype=dtype, device=like.device).permute(0, 1, 4, 2, 3)
        return torch.empty(shape, dtype=dtype, device=like.device)

    def _compute_cuts(self, inputs: list[fx.Node]) -> None:
        """Compute (once) every cut among ``inputs``: all images, all steps, kept in float32."""
        for b in inputs:
            if b.name not in self._cut_parts or b.name in self._records:
                continue
            part, reads, largest = self._cut_parts[b.name]
            self._compute_cuts(reads)
            missing = [r.name for r in reads if r.op != "placeholder" and r.name not in self._records]
            if missing:
                raise RuntimeError(f"layer-wise simulation: {b.name} reads {missing}, not recorded yet")
            T, n = self.timesteps, len(self.x)
            record = None
            with torch.inference_mode():
                for sl, chunks in self._blocks_for(largest, n):
                    for t0, t1 in chunks:
                        values = self._inputs(reads, sl, t0, t1, None)
                        out = part(t1 - t0, values[0], values[1:], sl.stop - sl.start)
                        if record is None:
                            record = self._record_buffer(T, out[0], out.dtype)
                        record[t0:t1, sl].copy_(out)
            self._records[b.name] = (record, None)

    @property
    def bytes_per_image(self) -> int:
        """About the most bytes of recorded trains and cuts per image alive at once: two of the
        largest trains (a residual and the current branch) and the two largest cuts (a stream and
        the next one, computed from it)."""
        return 2 * self.timesteps * self._largest_train + 4 * self.timesteps * sum(self._largest_cuts)

    def keep_first(self, images: int) -> None:
        """Simulate the first ``images`` inputs only (before any run)."""
        self.x = self.x[:int(images)]

    def commit(self, k: int) -> torch.Tensor:
        """Record neuron ``k``'s spike train (with its final parameters) for the neurons above it,
        free the trains nobody needs any more, and return its mean output per channel."""
        rate = self.run(k, record=self.nodes[k].name in self._last_use)
        for name, last in list(self._last_use.items()):
            if last <= k and name in self._records:
                del self._records[name]
        # neuron k is done; its currents go to the next neuron when that one reads them (a shortcut)
        reader = self._shortcuts.get(k + 1)
        kept = self._cache_for == k and self._cache is not None and reader is not None and reader[0] == k
        self._source = (k, self._cache, self._cached) if kept else None
        self._cache_for, self._cache, self._cached = None, None, 0
        return rate

    @property
    def recorded_bytes(self) -> int:
        return sum(s.numel() * s.element_size() for s, _ in self._records.values())
