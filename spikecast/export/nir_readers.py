"""Run a NIR file in other simulators and compare them with spikecast, spike for spike.

"Exported" is not "runs the same": each reader maps NIR nodes to its own neurons. These functions
load a file with a reader's own importer, apply (or not) the reader-side settings of
:data:`spikecast.export.nir.READER_SETTINGS`, drive it for ``T`` steps with the same analog input
at every step, and return the mean output and the spikes every ``IF`` layer sent, per image - the
same record :func:`spikecast_run` makes of spikecast's own runtime.

* sinabs (``sinabs.from_nir``): ``IF`` -> ``IAFSqueeze`` with the default ``MultiSpike`` (several
  spikes per step) and ``min_v_mem = -v_threshold`` (a membrane floor). ``exact=True`` sets
  ``SingleSpike`` and no floor, the semantics spikecast writes into the node.
* snnTorch (``snntorch.import_nir.import_from_nir``): ``IF`` -> ``snn.Leaky(beta=0.9,
  init_hidden=False)``: a leak the spec does not have, and a module that returns ``(spk, mem)``
  tuples, which the next layer of a feed-forward graph cannot take (1.0.0: the imported graph does
  not run); and ``Flatten`` nodes get NIR's dimensions (which exclude the batch) as torch
  dimensions, so ``start_dim=0`` flattens the batch too. ``exact=True`` replaces each ``Leaky`` by
  ``snn.Leaky(beta=1.0, init_hidden=True, reset_mechanism="subtract", reset_delay=True)`` with
  the largest float32 below the node's threshold (snnTorch fires on ``v > threshold``, the
  semantics say ``v >= threshold``) and shifts the ``Flatten`` dimensions by one (``reset_delay=False`` would
  subtract the threshold of a spike still pending from the previous step before deciding whether
  to fire, i.e. fire at ``v > 2 * threshold`` in that case). Its reset then subtracts that
  slightly smaller threshold: a drift of T float32 steps at most, far below the weight grid.

The readers are optional extras (``pip install "spikecast[nir]"``).
"""

from __future__ import annotations

import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from spikecast.export.nir import _require_nir, to_nir
from spikecast.nn.neuron import IFNeuron
from spikecast.runtime.network import SpikingNetwork


@dataclass
class ReaderRun:
    """What one simulator did with a NIR network on a batch of images."""

    reader: str
    output: torch.Tensor  # mean output over the T steps, [N, ...]
    spikes: dict[str, torch.Tensor] = field(default_factory=dict)  # IF node -> spikes sent per image [N]
    settings: str = ""


def layer_key(name: str) -> str:
    """A NIR node name as every reader turns it into a module name."""
    return re.sub(r"\W+", "_", name).strip("_")


def _graph(source):
    nir = _require_nir()
    return nir.read(source) if not isinstance(source, nir.NIRGraph) else source


def spikecast_run(snn: SpikingNetwork, x: torch.Tensor, timesteps: int, batch_size: int = 100) -> ReaderRun:
    """spikecast's own runtime: mean output and spikes per image of every neuron (keyed by its
    module name in the graph, which :func:`~spikecast.export.nir.from_nir` takes from the NIR node)."""
    names = {}
    for node in snn.graph_module.graph.nodes:
        if node.op == "call_module" and isinstance(snn.graph_module.get_submodule(node.target), IFNeuron):
            names[snn.graph_module.get_submodule(node.target)] = layer_key(str(node.target).removeprefix("sites."))
    outputs, spikes = [], {k: [] for k in names.values()}
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        counts = {k: torch.zeros(len(xb), dtype=torch.float64) for k in names.values()}
        hooks = [m.register_forward_hook(_counter(counts, key, len(xb))) for m, key in names.items()]
        try:
            outputs.append(snn.simulate(xb, timesteps))
        finally:
            for h in hooks:
                h.remove()
        for k in counts:
            spikes[k].append(counts[k])
    return ReaderRun("spikecast", torch.cat(outputs), {k: torch.cat(v) for k, v in spikes.items()}, "")


def _counter(counts: dict, key: str, batch: int) -> Callable:
    def hook(module, inputs, output):
        counts[key] += (output != 0).reshape(batch, -1).sum(1).double()
    return hook


def run_sinabs(source, x: torch.Tensor, timesteps: int, *, exact: bool = True, batch_size: int = 50) -> ReaderRun:
    """The NIR network in sinabs, ``timesteps`` steps of ``x``.

    ``exact=False``: ``sinabs.from_nir`` as it is. ``exact=True``: sinabs' own node mapping
    (``sinabs.nir._import_sinabs_module``) wired by ``nirtorch.nir_to_torch`` - ``sinabs.from_nir``
    goes through nirtorch's legacy ``load``, whose executor runs the nodes of a branching graph
    (residual skips) out of order - and every ``IAFSqueeze`` set to ``SingleSpike`` without a
    membrane floor."""
    import sinabs
    import sinabs.layers as sl
    from sinabs.activation import SingleSpike

    graph = _graph(source)
    outputs, spikes = [], {}
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        n = len(xb)
        model = _sinabs_fx(graph, n) if exact else sinabs.from_nir(graph, batch_size=n)
        counts: dict[str, torch.Tensor] = {}
        for name, module in model.named_modules():
            if isinstance(module, sl.IAFSqueeze):
                if exact:
                    module.spike_fn = SingleSpike
                    module.min_v_mem = None
                key = layer_key(name)
                counts[key] = torch.zeros(n, dtype=torch.float64)
                module.register_forward_hook(_time_counter(counts, key, n, timesteps))
        steps = xb.unsqueeze(1).expand(n, timesteps, *xb.shape[1:]).reshape(n * timesteps, *xb.shape[1:])
        with torch.no_grad():
            out = model(steps)
        out = out[0] if isinstance(out, tuple) else out
        expected = _output_size(graph)
        if expected is not None and out[0].numel() != expected:
            raise RuntimeError(f"the model returned a tensor of shape {tuple(out.shape)} per (image, step), not the graph's "
                               f"Output ({expected} values): its executor runs the nodes of a branching graph out of order")
        outputs.append(out.reshape(n, timesteps, *out.shape[1:]).sum(1) / timesteps)
        for k, v in counts.items():
            spikes.setdefault(k, []).append(v)
    settings = ("nirtorch.nir_to_torch with sinabs' node map, SingleSpike, min_v_mem=None" if exact
                else "sinabs.from_nir defaults (MultiSpike, min_v_mem=-v_threshold)")
    return ReaderRun("sinabs", torch.cat(outputs), {k: torch.cat(v) for k, v in spikes.items()}, settings)


def _output_size(graph) -> Optional[int]:
    nir = _require_nir()
    for node in graph.nodes.values():
        if isinstance(node, nir.Output):
            shape = node.output_type.get("output")
            return int(torch.tensor(shape).prod()) if shape is not None else None
    return None


def _sinabs_fx(graph, batch_size: int) -> torch.nn.Module:
    import nirtorch
    from sinabs import nir as sinabs_nir

    nir = _require_nir()
    build = (lambda node: sinabs_nir._import_sinabs_module(node, batch_size=batch_size, num_timesteps=None))
    kinds = (nir.Affine, nir.Conv1d, nir.Conv2d, nir.LI, nir.IF, nir.LIF, nir.SumPool2d, nir.Flatten)
    return nirtorch.nir_to_torch(graph, {kind: build for kind in kinds})


def _time_counter(counts: dict, key: str, batch: int, timesteps: int) -> Callable:
    def hook(module, inputs, output):  # sinabs' Squeeze layers see (batch * time, ...)
        counts[key] += output.reshape(batch, -1).sum(1).double()
    return hook


def run_snntorch(source, x: torch.Tensor, timesteps: int, *, exact: bool = True, batch_size: int = 100) -> ReaderRun:
    """The NIR network in snnTorch (``snntorch.import_nir.import_from_nir``), stepped ``timesteps`` times."""
    import snntorch as snn
    from snntorch.import_nir import import_from_nir

    graph = _graph(source)
    outputs, spikes = [], {}
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        net = import_from_nir(graph)
        leaky = [(name, m) for name, m in net.named_modules() if isinstance(m, snn.Leaky)]
        counts = {layer_key(name): torch.zeros(len(xb), dtype=torch.float64) for name, _ in leaky}
        if exact:  # its importer passes NIR's Flatten dims (which exclude the batch) to torch as they are
            for name, module in list(net.named_modules()):
                if isinstance(module, torch.nn.Flatten) and module.start_dim >= 0:
                    net.set_submodule(name, torch.nn.Flatten(module.start_dim + 1,
                                                               module.end_dim + 1 if module.end_dim >= 0 else -1))
        for name, module in leaky:
            if exact:
                # snnTorch fires on v > threshold; the semantics say v >= threshold: the largest float32
                # below it gives the same decisions (on the weight grid no membrane lies in between)
                threshold = float(np.nextafter(np.float32(float(module.threshold)), np.float32(0)))
                module = snn.Leaky(beta=1.0, threshold=threshold, init_hidden=True, reset_mechanism="subtract",
                                   reset_delay=True)
                net.set_submodule(name, module)
            module.register_forward_hook(_leaky_counter(counts, layer_key(name), len(xb)))
        for _, module in net.named_modules():
            if isinstance(module, snn.Leaky) and module.init_hidden:
                module.reset_mem()  # hidden state lives in the module: start every batch from 0
        total, state = None, None
        with torch.no_grad():
            for _ in range(timesteps):
                out, state = net(xb, state)
                out = out[0] if isinstance(out, tuple) else out
                total = out.clone() if total is None else total + out
        outputs.append(total / timesteps)
        for k, v in counts.items():
            spikes.setdefault(k, []).append(v)
    settings = ("Leaky(beta=1.0, threshold=nextafter(threshold, 0), init_hidden=True, reset_mechanism='subtract', "
                "reset_delay=True), Flatten dims + 1"
                if exact
                else "importer defaults (Leaky(beta=0.9, init_hidden=False))")
    return ReaderRun("snntorch", torch.cat(outputs), {k: torch.cat(v) for k, v in spikes.items()}, settings)


def _leaky_counter(counts: dict, key: str, batch: int) -> Callable:
    def hook(module, inputs, output):
        spk = output[0] if isinstance(output, tuple) else output
        counts[key] += (spk != 0).reshape(batch, -1).sum(1).double()
    return hook


@dataclass
class Comparison:
    """A reader against spikecast on the same images."""

    reader: str
    settings: str
    images: int
    same_prediction: int
    identical_counts: dict[str, int]  # per layer: images whose spike count is identical
    count_difference: dict[str, float]  # per layer: total |difference| of spikes over all images
    max_output_difference: float

    @property
    def identical(self) -> bool:
        return self.same_prediction == self.images and all(v == self.images for v in self.identical_counts.values())


def compare(reference: ReaderRun, other: ReaderRun) -> Comparison:
    """How far ``other`` is from ``reference``: predictions, per-layer spike counts per image, outputs."""
    images = len(reference.output)
    same = int((reference.output.argmax(-1) == other.output.argmax(-1)).sum())
    identical, difference = {}, {}
    for key, ref in reference.spikes.items():
        got = other.spikes.get(key)
        if got is None:
            identical[key], difference[key] = 0, float("nan")
            continue
        identical[key] = int((ref == got).sum())
        difference[key] = float((ref - got).abs().sum())
    return Comparison(other.reader, other.settings, images, same, identical, difference,
                      float((reference.output - other.output).abs().max()))


def readers() -> dict[str, Callable]:
    """The readers installed here, by name."""
    out: dict[str, Callable] = {}
    for name, fn in (("sinabs", run_sinabs), ("snntorch", run_snntorch)):
        try:
            __import__(name)
        except ImportError:
            continue
        out[name] = fn
    return out


#: The pooling node each reader's importer reads (sinabs: SumPool2d only; snnTorch: AvgPool2d only).
READER_POOLING = {"sinabs": "sum", "snntorch": "avg"}


def check(snn: SpikingNetwork, x: torch.Tensor, timesteps: int, folder, *, exact: bool = True,
          which: Optional[list[str]] = None) -> list[Comparison]:
    """Export ``snn`` to NIR in ``folder`` (one file per pooling node kind), run it in each installed
    reader and compare it with spikecast's runtime on ``x`` for ``timesteps`` steps."""
    folder = Path(folder)
    reference = spikecast_run(snn, x, timesteps)
    out = []
    for name, fn in readers().items():
        if which is not None and name not in which:
            continue
        path = to_nir(snn, folder / f"network-{READER_POOLING[name]}.nir", pooling=READER_POOLING[name],
                      example=x[:1])
        out.append(compare(reference, fn(path, x, timesteps, exact=exact)))
    return out
