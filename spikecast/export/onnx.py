"""ONNX export: the source ANN (fp32 or int8) and the spiking network as one explicit-state step graph.

Why: a converted network is only useful on hardware and runtimes other than PyTorch if it can
leave PyTorch. Three artefacts cover the comparisons a deployment needs:

* :func:`export_ann` - the ANN (an ``nn.Module`` or the normalised fx graph of
  :func:`spikecast.pipeline.prepare`) as a plain ONNX model, input ``x``, output ``logits``;
* :func:`quantize_ann_int8` - that model statically quantised to int8 (QDQ format) with
  onnxruntime, calibrated on unlabeled images: the conventional low-precision baseline;
* :func:`export_snn_step` - the spiking network as ONE single-timestep graph whose state is
  explicit. A runtime calls it once per step and feeds the new states back::

      inputs : x [N, ...], start [1] (float: 1 on the first step, 0 after), state_0, state_1, ...
      outputs: out [N, ...], state_0_next, state_1_next, ...

  Every stateful module of the network (:class:`~spikecast.nn.stateful.StatefulModule`: IF
  neurons, spiking max-pools, the running means and expectation differences of compensated ops
  such as GELU, LayerNorm or softmax attention) is traced as its pure ``step(x, state)``, so its
  state buffers (membranes, emitted charges, accumulated inputs and pooled maxima, running sums,
  previous values and step counts) are the graph's state inputs and outputs. ``start``
  re-initialises every state inside the graph to the module's ``initial_state`` (membrane
  ``v0 = theta * v_init + v_offset``, zeros and zero step counts otherwise), so the driver may
  pass zeros of the right shape on the first step. The arithmetic is the one of the modules'
  ``step``, so the mean output after ``T`` steps equals :meth:`SpikingNetwork.simulate` (up to
  float differences between the runtimes' kernels). The graph recomputes the static prefix (e.g.
  the first conv) every step: one graph, no second session. The states (name, per-sample shape,
  dtype, owning module, whether batched) are described in the model's
  ``metadata_props["spikecast"]`` as JSON.

:class:`OnnxSpikingNetwork` drives such a graph with onnxruntime, with the ``simulate``
semantics of :class:`SpikingNetwork`; :func:`run_ann` gives the logits of an ANN / int8 model.

The exporter is PyTorch's TorchScript-based one (``dynamo=False``): it needs no extra package
and handles spikecast's aten-level fx graphs. Random spike masking and Poisson input encoding are
stochastic and refused: their random streams are not part of the graph.
"""

from __future__ import annotations

import importlib.metadata
import json
import operator
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from spikecast.calibrate.statistics import iterate_inputs
from spikecast.devices import device_of
from spikecast.errors import CalibrationError
from spikecast.nn.stateful import StatefulModule
from spikecast.runtime.network import StepCallback, mean_outputs, parse_budgets

PathLike = Union[str, os.PathLike]

#: ``metadata_props`` key holding the JSON description of an exported step graph.
METADATA_KEY = "spikecast"
#: ``format`` field of that description.
STEP_FORMAT = "spikecast-snn-step"
#: 2: states may be unbatched scalars (``batched: false``: the step counters of compensated ops)
STEP_FORMAT_VERSION = 2
DEFAULT_OPSET = 17


# spikecast's integer ops (spikecast.nn.kernels) in ONNX: the float computation they stand for
# (a convolution / matrix product of the spike signs codes - 1 with the integer weights), which
# sums the same integers exactly - so an int8-kernel network exports like its integer network.
@torch.onnx.symbolic_helper.parse_args("v", "v", "v", "is", "is", "is", "i")
def _spike_conv2d_onnx(g, codes, weight, bias, stride, padding, dilation, groups):
    signs = g.op("Sub", g.op("Cast", codes, to_i=1), g.op("Constant", value_t=torch.tensor(1.0)))
    inputs = [signs, weight] + ([] if torch.onnx.symbolic_helper._is_none(bias) else [bias])
    return g.op("Conv", *inputs, strides_i=stride, pads_i=list(padding) * 2, dilations_i=dilation, group_i=groups)


@torch.onnx.symbolic_helper.parse_args("v", "v", "v")
def _spike_linear_onnx(g, codes, weight, bias):
    signs = g.op("Sub", g.op("Cast", codes, to_i=1), g.op("Constant", value_t=torch.tensor(1.0)))
    out = g.op("MatMul", signs, g.op("Transpose", weight, perm_i=[1, 0]))
    return out if torch.onnx.symbolic_helper._is_none(bias) else g.op("Add", out, bias)


torch.onnx.register_custom_op_symbolic("spikecast::spike_conv2d", _spike_conv2d_onnx, 9)
torch.onnx.register_custom_op_symbolic("spikecast::spike_linear", _spike_linear_onnx, 9)


# ---------------------------------------------------------------------------------------- ANN
def export_ann(model: nn.Module, path: PathLike, example: torch.Tensor, *, opset: int = DEFAULT_OPSET) -> Path:
    """Export an ANN (``nn.Module`` or fx ``GraphModule``) to ONNX, checked with ``onnx.checker``.

    The graph has one input ``x`` and one output ``logits``, both with a dynamic batch axis; it is
    traced in inference mode (BatchNorm uses its running statistics) on ``example``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(model, fx.GraphModule):
        model = _GraphRunner(model)
    _onnx_export(model, (example,), path, input_names=["x"], output_names=["logits"],
                 dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset=opset)
    _check(path)
    return path


def run_ann(path: PathLike, x: torch.Tensor, batch_size: int = 256, *, threads: Optional[int] = None) -> torch.Tensor:
    """The output (logits) of an ONNX ANN (fp32 or int8) on ``x``, computed with onnxruntime in batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    session = _session(path, threads)
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: _numpy(x[i:i + batch_size])})[0] for i in range(0, len(x), batch_size)]
    if not outs:
        raise ValueError("run_ann needs at least one input")
    return torch.from_numpy(np.concatenate(outs))


class _CalibrationReader:
    """onnxruntime ``CalibrationDataReader`` over :func:`iterate_inputs` of the data, capped at ``images``."""

    def __init__(self, data, input_name: str, images: int):
        self.data, self.input_name, self.images = data, input_name, int(images)
        self.seen = 0
        self._batches: Optional[Iterator[torch.Tensor]] = None

    def _iterate(self) -> Iterator[torch.Tensor]:
        for x in iterate_inputs(self.data):
            if self.seen >= self.images:
                return
            x = x[: self.images - self.seen]
            if len(x) == 0:
                continue
            if not torch.isfinite(x).all():
                raise CalibrationError(f"int8 calibration: batch at image {self.seen} contains NaN or Inf values")
            self.seen += len(x)
            yield x

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        if self._batches is None:
            self._batches = self._iterate()
        x = next(self._batches, None)
        return None if x is None else {self.input_name: _numpy(x)}

    def rewind(self) -> None:
        self.seen, self._batches = 0, None


def quantize_ann_int8(fp32_path: PathLike, out_path: PathLike, calib, *, per_channel: bool = True,
                      images: int = 512, activations: str = "uint8", preprocess: bool = True) -> Path:
    """Statically quantise an fp32 ONNX ANN to int8 (QDQ format) with onnxruntime.

    Weights are symmetric int8 (per output channel with ``per_channel``); activations are
    ``"uint8"`` (asymmetric, the default: after a ReLU the whole code range is used) or ``"int8"``.
    Activation ranges are the min / max seen on at most ``images`` images of ``calib`` (a tensor,
    a DataLoader or an iterable of batches; labels ignored). ``preprocess`` runs onnxruntime's
    ``quant_pre_process`` first (shape inference and graph optimisation: BatchNorm folding), so
    the quantised graph has one QDQ pair per real operation.

    Raises :class:`CalibrationError` when ``calib`` yields no image.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    kinds = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if activations not in kinds:
        raise ValueError(f"activations must be one of {sorted(kinds)}, got {activations!r}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name

    class Reader(_CalibrationReader, CalibrationDataReader):
        pass

    reader = Reader(calib, input_name, images)
    if reader.get_next() is None:
        raise CalibrationError("int8 calibration data is empty: it yielded no image")
    reader.rewind()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    source = fp32_path
    tmp = out_path.with_name(out_path.name + ".pre.onnx")
    try:
        if preprocess:
            try:
                quant_pre_process(str(fp32_path), str(tmp))
                source = tmp
            except Exception as exc:  # noqa: BLE001 - an optimisation only: quantise the graph as exported
                warnings.warn(f"int8: onnxruntime's quant_pre_process failed ({type(exc).__name__}: {exc}); "
                              "quantising the model without it", RuntimeWarning, stacklevel=2)
        quantize_static(str(source), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=kinds[activations], weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        tmp.unlink(missing_ok=True)
    _check(out_path)
    return out_path


# ---------------------------------------------------------------------------------------- SNN
@dataclass
class StateSpec:
    """One state tensor of the step graph: its ONNX input name (output: ``name + "_next"``)."""

    name: str
    shape: list[int]  # per sample, without the batch axis (the whole shape when not batched)
    dtype: str  # numpy dtype name, e.g. "float32"
    module: str  # submodule path in the spiking graph, e.g. "sites.relu_3"
    site: str  # the owning module's readable name, e.g. "layer1.0.relu[0]"
    kind: str  # the module's state buffer: "v", "emitted" (IFNeuron), "acc", "pooled" (SpikingMaxPool),
    #            "sum", "t" (RunningMean), "previous", "t" (ExpectationDifference)
    batched: bool = True  # first axis is the batch; False: one value for the whole batch (a step count)


def _restart(module: StatefulModule, x: torch.Tensor, state: Sequence[torch.Tensor],
             start: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``state``, replaced by the module's initial state where ``start`` is set."""
    return tuple(torch.where(start, init, given) for init, given in zip(module.initial_state(x), state))


_aten = torch.ops.aten
# shape-taking aten overloads -> the Python-level calls the TorchScript tracer keeps sizes symbolic in
_SIZE_OPS: dict[Any, Callable] = {
    _aten.view.default: torch.reshape, _aten._unsafe_view.default: torch.reshape,
    _aten.reshape.default: torch.reshape, _aten.expand.default: torch.Tensor.expand,
}


class _Interpreter(fx.Interpreter):
    """Runs an fx graph so that the TorchScript tracer records batch sizes as graph values.

    Under tracing ``Tensor.size`` gives a traced value, but ``aten.sym_size.int`` and the aten
    overloads (``aten.view.default(x, [n, -1])``) turn it into a plain int that would be baked into
    the graph (the example's batch). Sizes are therefore read with ``Tensor.size`` and passed to
    ``torch.reshape`` / ``Tensor.expand`` (same values; a size may come from the static prefix as a
    step-graph input); any other op given a size is reported.
    """

    def call_function(self, target, args, kwargs):
        if target is _aten.sym_size.int:
            return args[0].size(args[1])
        if target in _SIZE_OPS:
            return _SIZE_OPS[target](args[0], args[1])
        # a traced size is a 0-dim tensor inside a list argument (lists of tensors, e.g. of cat, are fine)
        if torch.jit.is_tracing() and target is not operator.getitem and any(
                isinstance(a, (list, tuple)) and any(isinstance(i, torch.Tensor) and i.dim() == 0 for i in a)
                for a in args):
            warnings.warn(f"ONNX export: {target} takes a tensor size; its batch axis may be fixed to the "
                          "example's", stacklevel=2)
        return super().call_function(target, args, kwargs)


class _FunctionalStep(_Interpreter):
    """Runs a step graph with every stateful module as its pure :meth:`StatefulModule.step` on
    explicit state.

    ``states`` is the flat list of state tensors in graph order (``None``: start from the initial
    states, which is how the state shapes are discovered). After ``run``, ``new_states`` holds the
    updated states in the same order and ``owners`` (node target, module, state buffer) for each.
    """

    def __init__(self, gm: fx.GraphModule, states: Optional[Sequence[torch.Tensor]], start: torch.Tensor):
        super().__init__(gm)
        self.states_in, self.start = states, start
        self.new_states: list[torch.Tensor] = []
        self.owners: list[tuple[str, StatefulModule, str]] = []

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        if not isinstance(module, StatefulModule):
            return super().call_module(target, args, kwargs)
        (x,) = args
        names = module.state_names()
        if self.states_in is None:
            state = module.initial_state(x)
        else:
            first = len(self.new_states)
            given = tuple(self.states_in[first:first + len(names)])
            if len(given) != len(names):
                raise ValueError(f"expected more state tensors than the {len(self.states_in)} given")
            state = _restart(module, x, given, self.start)
        out, new_state = module.step(x, state)
        self.new_states.extend(new_state)
        self.owners.extend((str(target), module, kind) for kind in names)
        return out


class _GraphRunner(nn.Module):
    """An fx ``GraphModule`` run through :class:`_Interpreter` (dynamic batch when traced)."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__()
        self.gm = gm

    def forward(self, *args):
        return _Interpreter(self.gm).run(*args)


class SnnStepModule(nn.Module):
    """One step of a :class:`SpikingNetwork` with explicit state: ``(x, start, *states) -> (out, *states)``.

    What :func:`export_snn_step` traces; usable in PyTorch too (a reference for other runtimes).
    """

    def __init__(self, snn):
        super().__init__()
        self.graph_module = snn.graph_module  # registers the weights and neuron buffers
        self.__dict__["_prefix"], self.__dict__["_step"] = snn._prefix, snn._step

    def forward(self, x: torch.Tensor, start: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        static = _Interpreter(self._prefix).run(x)
        runner = _FunctionalStep(self._step, list(states), start.reshape(()).to(torch.bool))
        out = runner.run(x, *static)
        if len(runner.new_states) != len(states):
            raise ValueError(f"the step graph has {len(runner.new_states)} state tensors, got {len(states)}")
        return (out, *runner.new_states)

    def discover_states(self, example: torch.Tensor) -> list[StateSpec]:
        """Run one step from the initial state on ``example`` and describe every state tensor."""
        with torch.inference_mode():
            runner = _FunctionalStep(self._step, None, torch.ones((), dtype=torch.bool))
            runner.run(example, *self._prefix(example))
        specs = []
        for tensor, (target, module, kind) in zip(runner.new_states, runner.owners):
            batched = tensor.dim() > 0  # scalars (step counts) are shared by the whole batch
            if batched and tensor.shape[0] != example.shape[0]:
                raise ValueError(f"state {kind} of {getattr(module, 'name', '') or target!r} has shape "
                                 f"{tuple(tensor.shape)}: its first axis is not the batch ({example.shape[0]})")
            specs.append(StateSpec(name=f"{kind}_{len(specs)}", shape=list(tensor.shape[1:] if batched else tensor.shape),
                                   dtype=str(tensor.dtype).replace("torch.", ""), module=target,
                                   site=getattr(module, "name", "") or target, kind=kind, batched=batched))
        return specs


def check_exportable(snn) -> None:
    """Raise ``ValueError`` when ``snn`` has a stochastic part an ONNX step graph cannot hold."""
    if snn.config.encoding != "analog":
        raise ValueError(f"cannot export a network with {snn.config.encoding!r} input encoding to ONNX: its random "
                         "input stream is not part of the graph; convert with encoding='analog'")
    masked = [name for name, n in snn.neurons().items() if n.mask_ratio > 0]
    if masked:
        raise ValueError(f"cannot export neuron(s) with random spike masking (mask_ratio > 0) to ONNX: "
                         f"{', '.join(repr(m) for m in masked)}; convert with mask_ratio=0")


def export_snn_step(snn, path: PathLike, *, example: torch.Tensor, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``snn`` (a :class:`SpikingNetwork`) as one single-timestep ONNX graph with explicit state.

    Inputs ``x``, ``start`` (float32 ``[1]``: 1 re-initialises every state inside the graph, so
    the first step may pass zeros), then one input per state tensor; outputs ``out`` then the new
    states (``<state name>_next``) in the same order. ``x`` and every state have a dynamic batch
    axis. State shapes are found by running one step on ``example`` (batch of any size >= 1). The
    model's ``metadata_props["spikecast"]`` describes the format, the states and the default
    number of steps, which :class:`OnnxSpikingNetwork` reads.

    Every stateful module (neurons, spiking max-pools, the running means and differences of
    compensated ops) runs its pure :meth:`~spikecast.nn.stateful.StatefulModule.step`; its state
    buffers become graph inputs / outputs (a compensated op's step count is an int64 scalar
    shared by the batch: ``batched`` false in the metadata).

    Raises ``ValueError`` for Poisson input encoding or neurons with random spike masking.
    """
    check_exportable(snn)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = example.detach()
    device = device_of(snn.graph_module) or example.device
    example = example.to(device)
    wrapper = SnnStepModule(snn)  # the exporter traces in eval mode (and restores the mode)
    specs = wrapper.discover_states(example)
    batch = example.shape[0]
    zeros = [torch.zeros(((batch,) if s.batched else ()) + tuple(s.shape), dtype=getattr(torch, s.dtype),
                         device=device) for s in specs]
    start = torch.ones(1, dtype=torch.float32, device=device)
    names = [s.name for s in specs]
    batched = [s.name for s in specs if s.batched]
    dynamic = {n: {0: "batch"} for n in ["x", "out", *batched, *(f"{n}_next" for n in batched)]}
    _onnx_export(wrapper, (example, start, *zeros), path, input_names=["x", "start", *names],
                 output_names=["out", *(f"{n}_next" for n in names)], dynamic_axes=dynamic, opset=opset)
    description = {
        "format": STEP_FORMAT, "format_version": STEP_FORMAT_VERSION, "spikecast_version": _version(),
        "timesteps": int(snn.config.timesteps), "encoding": snn.config.encoding,
        "input": {"name": "x", "shape": list(example.shape[1:]), "dtype": str(example.dtype).replace("torch.", "")},
        "start": {"name": "start", "shape": [1], "dtype": "float32"},
        "output": "out", "states": [asdict(s) for s in specs],
        "source": snn.metadata.get("source"),
        # integer accumulation (spikecast.quant.integer_network): runtimes must not fuse the scales back
        "integer_arithmetic": "integer_arithmetic" in snn.metadata,
    }
    _set_metadata(path, {METADATA_KEY: json.dumps(description)})
    _check(path)
    return path


class OnnxSpikingNetwork:
    """An exported step graph run with onnxruntime, with the ``simulate`` API of :class:`SpikingNetwork`.

    ``threads`` sets onnxruntime's intra-op threads (default: its own choice);
    ``session_options`` (an ``onnxruntime.SessionOptions``) overrides everything else. A graph of
    an integer-arithmetic network (:func:`spikecast.quant.integer_network`) runs with graph
    optimisations off: fusing a scale into the convolution weights would make its sums inexact
    again, and its spikes would no longer match PyTorch's bit for bit.
    """

    def __init__(self, path: PathLike, *, threads: Optional[int] = None, session_options: Any = None,
                 providers: Optional[Sequence[str]] = None):
        self.path = Path(path)
        self.session = _session(self.path, threads, session_options, providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(f"{self.path} is not a spikecast step graph (no {METADATA_KEY!r} metadata)")
        self.description: dict = json.loads(meta[METADATA_KEY])
        if self.description.get("format") != STEP_FORMAT:
            raise ValueError(f"{self.path}: unknown format {self.description.get('format')!r}")
        if self.description.get("format_version", 0) > STEP_FORMAT_VERSION:
            raise ValueError(f"{self.path} was written by a newer spikecast")
        if self.description.get("integer_arithmetic") and session_options is None:
            self.session = _session(self.path, threads, None, providers, optimize=False)
        self.state_specs = [StateSpec(**s) for s in self.description["states"]]
        self.timesteps = int(self.description["timesteps"])
        self._output_names = ["out", *(f"{s.name}_next" for s in self.state_specs)]

    def states(self, batch: int) -> list[np.ndarray]:
        """Zero state tensors for a batch of ``batch`` (valid on a step with ``start`` set)."""
        return [np.zeros((batch, *s.shape) if s.batched else tuple(s.shape), dtype=s.dtype) for s in self.state_specs]

    def step(self, x: np.ndarray, states: Sequence[np.ndarray], start: bool) -> tuple[np.ndarray, list[np.ndarray]]:
        """One step: ``(output, new states)``; ``start`` re-initialises the states first."""
        feed = {"x": x, "start": np.array([1.0 if start else 0.0], dtype=np.float32)}
        feed.update({s.name: v for s, v in zip(self.state_specs, states)})
        out, *new = self.session.run(self._output_names, feed)
        return out, new

    def simulate(self, x: torch.Tensor, timesteps: Union[int, Sequence[int]],
                 callback: Optional[StepCallback] = None) -> Union[torch.Tensor, dict[int, torch.Tensor]]:
        """Run ``max(timesteps)`` steps once; the mean output after each budget (see ``SpikingNetwork.simulate``)."""
        budgets, single = parse_budgets(timesteps)
        x_np = _numpy(x, self.description["input"].get("dtype", "float32"))

        def outputs():
            states = self.states(x_np.shape[0])
            for t in range(1, budgets[-1] + 1):
                out_np, states = self.step(x_np, states, start=t == 1)
                yield torch.from_numpy(out_np)

        means = mean_outputs(outputs(), budgets, callback)
        return means[budgets[0]] if single else means

    def __call__(self, x: torch.Tensor, timesteps: Optional[int] = None) -> torch.Tensor:
        return self.simulate(x, int(timesteps or self.timesteps))

    def __repr__(self) -> str:
        return f"OnnxSpikingNetwork({str(self.path)!r}, states={len(self.state_specs)}, timesteps={self.timesteps})"


# ---------------------------------------------------------------------------------------- helpers
def _version() -> str:
    """spikecast's version (from the installed distribution: the top-level package, which defines
    ``__version__`` too, sits above this layer)."""
    try:
        return importlib.metadata.version("spikecast")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _numpy(x: Union[torch.Tensor, np.ndarray], dtype: str = "float32") -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def _onnx_export(model: nn.Module, args: tuple, path: Path, *, input_names: list[str], output_names: list[str],
                 dynamic_axes: dict, opset: int) -> None:
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # strided slices (ResNet option-A shortcuts) are left unfolded: correct, just not folded
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        with torch.no_grad():
            torch.onnx.export(model, args, str(path), dynamo=False, input_names=input_names,
                              output_names=output_names, dynamic_axes=dynamic_axes, opset_version=opset,
                              do_constant_folding=True)


def _check(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path))


def _set_metadata(path: Path, entries: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def _session(path: PathLike, threads: Optional[int] = None, options: Any = None,
             providers: Optional[Sequence[str]] = None, optimize: bool = True):
    import onnxruntime as ort

    if options is None:
        options = ort.SessionOptions()
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"]))
