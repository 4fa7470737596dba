"""Stage 5: the simulation runtime - one implementation used by validate, the CLI and benchmarks.

A :class:`SpikingNetwork` wraps the spiking graph and splits it once into

* a **static prefix**: every op that depends only on the (analog) input - e.g. the first conv and
  its folded BatchNorm - computed once per input instead of once per step, and
* a **step graph**: everything downstream of a neuron, run once per step.

A simulation keeps only the neuron membranes and one running sum of the output, so memory does not
grow with the number of steps, and every timestep budget of a list (1, 2, 4, ..., 256) is read off
the same run.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import torch
import torch.fx as fx
from torch import nn

from spikecast.devices import device_of
from spikecast.graph import serialize
from spikecast.graph.normalize import time_varying_nodes, views_to_reshapes
from spikecast.graph.trace import _set_attr
# every built-in stateful type, so that STATEFUL_TYPES (filled by subclassing) can load them all
from spikecast.nn import compensation as _compensation  # noqa: F401
from spikecast.nn import kernels as _kernels  # noqa: F401 - saved graphs may call the spikecast:: integer ops
from spikecast.nn import leaky as _leaky  # noqa: F401
from spikecast.nn import maxpool as _maxpool  # noqa: F401
from spikecast.nn.encoding import PoissonEncoder
from spikecast.nn.neuron import IFNeuron, _disable_compile, _is_compiler_failure, compile_enabled as _compile_enabled
from spikecast.nn.simulation import SimulationConfig
from spikecast.nn.stateful import STATEFUL_TYPES, StatefulModule
from spikecast.nn.timebatch import TimeBatchedStep, input_independent, static_integers

CONFIG_FILE, WEIGHTS_FILE = "spikecast.json", "weights.safetensors"
# Time-batched chunks hold at most this many values in the largest layer input (16 MiB in
# float32). Measured on 2 cores (ResNet-20, T=32): batching steps pays when the batch is small (8
# images: 1.9x faster per step), not at 128 images, where larger chunks fall out of the caches and
# run slower (2^24 values: 1.75x slower than step by step); 2^22 is neutral there.
TIME_BATCH_ELEMENTS = 1 << 22
# Fewer steps per chunk than this: step by step (ResNet-20, 128 images: chunks of 2 steps were
# 10% slower than single steps; the gain is at small batches, where chunks are long)
MIN_CHUNK_STEPS = 4


StepCallback = Callable[[int, torch.Tensor], None]


class SpikingNetwork(nn.Module):
    """A converted spiking network. ``simulate`` runs it; ``forward`` = mean output at the default T."""

    def __init__(self, graph_module: fx.GraphModule, config: Optional[SimulationConfig] = None,
                 metadata: Optional[dict] = None):
        super().__init__()
        self.graph_module = graph_module
        self.config = config if config is not None else SimulationConfig()
        self.metadata = dict(metadata or {})
        self._build_split()

    def _build_split(self) -> None:
        # Plain attributes (not submodules): they share graph_module's tensors and modules.
        prefix, step, boundary = _split_static_prefix(self.graph_module, self.config.encoding != "analog")
        self.__dict__["_prefix"], self.__dict__["_step"] = prefix, step
        batched = None
        if self.config.encoding == "analog":  # a spike-encoded input changes every step: step by step
            try:
                batched = TimeBatchedStep(step, *static_integers(boundary),
                                          constants=input_independent(self.graph_module, boundary))
            except ValueError:  # a stateful op with several inputs: step by step
                batched = None
        self.__dict__["_batched"] = batched
        self.__dict__["_compiled_step"] = None  # built on first use (config.compiled)
        self.__dict__["_largest_input"] = {}  # image shape -> values in the largest stateful input per image

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.half() replace buffers; re-split so prefix/step see the moved tensors.
        super()._apply(fn, *args, **kwargs)
        self._build_split()
        return self

    # ------------------------------------------------------------------ introspection
    def neurons(self) -> dict[str, IFNeuron]:
        """All neurons by readable site name, in graph order."""
        out = {}
        for node in self.graph_module.graph.nodes:
            if node.op == "call_module":
                mod = self.graph_module.get_submodule(node.target)
                if isinstance(mod, IFNeuron):
                    out[mod.name] = mod
        return out

    def stateful_modules(self) -> list[StatefulModule]:
        """Every module that keeps state across steps (neurons, spiking max-pools, compensation)."""
        return [m for m in self.graph_module.modules() if isinstance(m, StatefulModule)]

    def reset(self) -> None:
        for m in self.stateful_modules():
            m.reset()

    @property
    def static_prefix_ops(self) -> int:
        """Number of ops computed once per input (not per step)."""
        return sum(1 for n in self._prefix.graph.nodes if n.op == "call_function")

    # ------------------------------------------------------------------ simulation
    def simulate(self, x: torch.Tensor, timesteps: Union[int, Sequence[int]],
                 callback: Optional[StepCallback] = None) -> Union[torch.Tensor, dict[int, torch.Tensor]]:
        """Run ``max(timesteps)`` steps on ``x`` once and return the mean output after each budget.

        ``timesteps`` an int: returns the mean output tensor after that many steps. A sequence:
        returns ``{T: mean output after T steps}``. ``callback(t, output_t)`` is called after each
        step ``t`` (1-based) - for recording diagnostics without keeping per-step activations.
        """
        budgets, single = parse_budgets(timesteps)
        device = device_of(self.graph_module)
        if device is not None and x.device != device:
            x = x.to(device)
        with torch.inference_mode():
            means = mean_outputs(self.steps(x, budgets[-1]), budgets, callback)
        return means[budgets[0]] if single else means

    def steps(self, x: torch.Tensor, timesteps: int, *, window: Optional[int] = None) -> Iterator[torch.Tensor]:
        """Yield the output of each step ``1..timesteps`` (what :meth:`simulate` averages).

        Without autograd (``simulate``), an analog input and no hook on a stateful module, the
        steps are computed a chunk at a time (:mod:`spikecast.nn.timebatch`; same values, set
        ``config.time_batched=False`` for one step per call); the outputs are yielded one step at a
        time either way.

        Autograd follows the caller: under ``torch.inference_mode`` (simulate) nothing is recorded;
        for fine-tuning, neurons switch to their differentiable surrogate-gradient step when their
        input requires grad. Call :meth:`detach_state` between steps to truncate backpropagation
        through time (bounded memory for long runs).

        ``window``: the caller cuts backpropagation (or reads the state) only after steps that are
        multiples of ``window``, so chunks never cross such a step and are computed under autograd
        too (a chunk is computed when its first step is asked for, after the caller has handled the
        step before it). Same values as one step at a time; faster where convolutions gain from a
        larger batch (the SNN distillation of :mod:`spikecast.quant.reconstruct`).
        """
        if int(timesteps) < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps!r}")
        if window is not None and (isinstance(window, bool) or int(window) != window or window < 1):
            raise ValueError(f"window must be a positive integer, got {window!r}")
        self._restart(int(timesteps))
        if x.dim() == 4 and self.config.channels_last:
            # oneDNN convolutions run without layout reorders on NHWC; everything downstream
            # (neuron state included) inherits the layout.
            x = x.contiguous(memory_format=torch.channels_last)
        static = self._prefix(x)
        if (self.config.time_batched and not self.config.compiled and self._batched is not None
                and (window is not None or not torch.is_grad_enabled()) and not self._observed()
                and self._batched.supports(static)):
            yield from self._chunked_steps(x, static, int(timesteps), int(window) if window is not None else None)
            return
        encoder = None
        if self.config.encoding == "poisson":
            encoder = PoissonEncoder(self.config.input_scale, self.config.encoding_seed)
            encoder.start(x)
        for _ in range(int(timesteps)):
            yield self._run_step(encoder.step() if encoder is not None else x, *static)

    def _restart(self, timesteps: int) -> None:
        """Forget every state before a run of ``timesteps`` steps."""
        self.reset()
        if not torch.is_grad_enabled():
            # the number of steps is known: state types exact for that many (a byte per spike count)
            for m in self.stateful_modules():
                m.reserve_steps(timesteps)

    def _run_step(self, *args) -> torch.Tensor:
        """One step through the step graph: compiled as a whole (``config.compiled``: every
        elementwise op between two layers - scale, bias, residual add, neuron update, spike codes -
        fused into one kernel) when no gradient is needed and no hook watches a stateful module,
        else op by op. A compiler failure falls back to op by op, once, with a warning."""
        if self.config.compiled and _compile_enabled() and not torch.is_grad_enabled() and not self._observed():
            if self.__dict__.get("_compiled_step") is None:
                # static shapes first; torch recompiles with a dynamic batch when a second size shows up
                self.__dict__["_compiled_step"] = torch.compile(self._step)
            try:
                return self._compiled_step(*args)
            except Exception as exc:  # noqa: BLE001 - classified below
                if not _is_compiler_failure(exc):
                    raise
                _disable_compile(exc)
        return self._step(*args)

    def _observed(self) -> bool:
        """Whether a hook watches a stateful module step by step (spike counters, activity
        reports, a user's probe): time batching would show it whole chunks, so it is not used."""
        return any(m._forward_hooks or m._forward_pre_hooks for m in self.stateful_modules())

    def _chunked_steps(self, x: torch.Tensor, static: tuple, timesteps: int,
                       window: Optional[int] = None) -> Iterator[torch.Tensor]:
        """:meth:`steps` time-batched (see :mod:`spikecast.nn.timebatch`): chunks of a
        power-of-two number of steps (few distinct sizes: few compiled kernels) holding at most
        ``TIME_BATCH_ELEMENTS`` values per stateful layer input, none crossing a multiple of
        ``window``. The largest such input per image is
        measured by one step run alone on the first run with a new image shape; that step is then
        forgotten, so the first run and every later one compute in the same chunks (bit-identical
        outputs for the same input, whatever ran before)."""
        done = 0
        per_image = self._largest_input.get(tuple(x.shape[1:]))
        if per_image is None:
            shapes: list[torch.Size] = []
            hooks = [m.register_forward_pre_hook(lambda _m, args: shapes.append(args[0].shape))
                     for m in self.stateful_modules()]
            try:
                with torch.no_grad():  # a probe: no autograd record to keep
                    self._run_step(x, *static)
            finally:
                for hook in hooks:
                    hook.remove()
            self._restart(timesteps)
            # 0: a stateful module does not see the batch on the first axis - step by step
            per_image = 0 if any(s[0] != len(x) for s in shapes) else \
                max((s.numel() for s in shapes), default=x[0].numel()) // max(len(x), 1)
            self._largest_input[tuple(x.shape[1:])] = per_image
        limit = TIME_BATCH_ELEMENTS // (per_image * len(x)) if per_image else 0
        largest = 1 << (limit.bit_length() - 1) if limit else 0
        if largest < MIN_CHUNK_STEPS:  # large steps (chunks of 2 ran slower than single steps), or no batch axis
            for _ in range(done, timesteps):
                yield self._run_step(x, *static)
            return
        while done < timesteps:
            left = timesteps - done if window is None else min(timesteps - done, window - done % window)
            steps = 1 << (min(largest, left).bit_length() - 1)
            outputs = self._batched(steps, x, static, len(x))
            yield from outputs.unbind(0)
            done += steps

    def detach_state(self) -> None:
        """Cut the autograd history of every neuron / pool state (truncated BPTT)."""
        for m in self.stateful_modules():
            m.detach_state()

    def forward(self, x: torch.Tensor, timesteps: Optional[int] = None) -> torch.Tensor:
        return self.simulate(x, int(timesteps or self.config.timesteps))

    # ------------------------------------------------------------------ persistence
    def save(self, path: Union[str, Path]) -> Path:
        """Save to a folder: ``spikecast.json`` (graph + config) and ``weights.safetensors``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        gm = self.graph_module
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in gm.state_dict().items()}
        doc = {
            "format": "spikecast-snn", "format_version": serialize.FORMAT_VERSION,
            "simulation": asdict(self.config), "metadata": self.metadata,
            "attributes": sorted(k for k in tensors if not _is_module_tensor(k, gm)),
            "modules": serialize.module_specs(gm, STATEFUL_TYPES),
            "graph": serialize.graph_to_json(gm),
        }
        # write to temporary names first so an interrupted save never leaves a half-written model
        tmp_json, tmp_w = path / (CONFIG_FILE + ".tmp"), path / (WEIGHTS_FILE + ".tmp")
        tmp_json.write_text(json.dumps(doc, indent=1))
        save_file(tensors, str(tmp_w), metadata={"format": "pt"})
        tmp_w.replace(path / WEIGHTS_FILE)
        tmp_json.replace(path / CONFIG_FILE)
        return path

    @classmethod
    def load(cls, path: Union[str, Path], device: Union[str, torch.device, None] = None) -> "SpikingNetwork":
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file, w_file = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not cfg_file.is_file() or not w_file.is_file():
            raise FileNotFoundError(f"{path} is not a saved spikecast network (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        try:
            doc = json.loads(cfg_file.read_text())
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"{cfg_file} is corrupt (not valid JSON): {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != "spikecast-snn":
            raise ValueError(f"{cfg_file} is not a spikecast network file")
        if doc.get("format_version", 0) > serialize.FORMAT_VERSION:
            raise ValueError(f"{cfg_file} was written by a newer spikecast (format {doc['format_version']})")
        try:
            tensors = load_file(str(w_file), device=str(device) if device else "cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError type
            raise ValueError(f"{w_file} is corrupt (cannot read it as safetensors): {exc}") from exc
        root = nn.Module()
        try:
            for name in doc["attributes"]:
                _set_attr(root, name, tensors[name])
            serialize.build_modules(root, doc["modules"], STATEFUL_TYPES, tensors)
        except KeyError as exc:
            raise ValueError(f"{w_file} does not match {cfg_file}: missing entry {exc}") from exc
        gm = fx.GraphModule(root, serialize.graph_from_json(doc["graph"]), class_name="SpikingGraph")
        return cls(gm, SimulationConfig(**doc["simulation"]), doc.get("metadata"))


def parse_budgets(timesteps: Union[int, Sequence[int]]) -> tuple[list[int], bool]:
    """``(sorted distinct budgets, whether a single int was given)``; rejects non-positive ones."""
    single = isinstance(timesteps, int)
    budgets = sorted({int(t) for t in ([timesteps] if single else timesteps)})
    if not budgets or budgets[0] < 1:
        raise ValueError(f"timesteps must be positive integers, got {timesteps!r}")
    return budgets, single


def mean_outputs(outputs: Iterable[torch.Tensor], budgets: Sequence[int],
                 callback: Optional[StepCallback] = None) -> dict[int, torch.Tensor]:
    """``{T: mean of the first T step outputs}`` for each budget, keeping one running sum only
    (memory does not grow with T); ``callback(t, output_t)`` after each step. Shared by every
    runtime that simulates step by step (torch, onnxruntime)."""
    wanted, means, total = set(budgets), {}, None
    for t, out in enumerate(outputs, start=1):
        total = out.clone() if total is None else total.add_(out)
        if t in wanted:
            means[t] = total / t
        if callback is not None:
            callback(t, out)
    return means



def _is_module_tensor(key: str, gm: fx.GraphModule) -> bool:
    owner = key.rsplit(".", 1)[0]
    try:
        return isinstance(gm.get_submodule(owner), StatefulModule)
    except AttributeError:
        return False


def _split_static_prefix(gm: fx.GraphModule, input_varies: bool) -> tuple[fx.GraphModule, fx.GraphModule, list]:
    """Split ``gm`` into prefix(x) -> static values, and step(x_t, *static values) -> output;
    also returns the boundary nodes (the static values, in order)."""
    varying = time_varying_nodes(gm, input_varies)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    out_value = output.args[0]
    boundary: list[fx.Node] = []
    for node in gm.graph.nodes:
        if node in varying or node.op in ("get_attr", "output", "placeholder"):
            continue
        if any(u in varying for u in node.users) or node is out_value:
            boundary.append(node)

    prefix_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        # the placeholder is kept even when the input spikes (Poisson): prefix(x) always takes x
        if node.op == "output" or (node in varying and node.op != "placeholder"):
            continue
        env[node] = prefix_graph.node_copy(node, lambda n: env[n])
    prefix_graph.output(tuple(env[b] for b in boundary))
    views_to_reshapes(prefix_graph)
    prefix = fx.GraphModule(gm, prefix_graph, class_name="StaticPrefix")
    prefix.graph.eliminate_dead_code()
    prefix.recompile()

    step_graph = fx.Graph()
    env = {}
    x_t = step_graph.placeholder("x_t")
    for b in boundary:
        env[b] = step_graph.placeholder(f"static_{b.name}")
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = x_t
        elif node.op == "get_attr":
            env[node] = step_graph.node_copy(node, lambda n: env[n])
        elif node in varying and node.op != "output":  # the step graph gets its own output below
            env[node] = step_graph.node_copy(node, lambda n: env[n])
    step_graph.output(env[out_value] if out_value in env else x_t)
    views_to_reshapes(step_graph)
    step = fx.GraphModule(gm, step_graph, class_name="SimulationStep")
    step.graph.eliminate_dead_code()
    step.recompile()
    return prefix, step, boundary
