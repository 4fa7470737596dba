"""Stage 4: calibrated graph -> spiking graph.

Every activation site becomes an :class:`IFNeuron` with the site's calibrated threshold (a bipolar
neuron for a bipolar site); max-pools left inside the spiking part (on spikes, or on a
time-varying current) become :class:`SpikingMaxPool` with a warning naming them; every other
non-linear op inside the spiking part runs with expectation compensation
(:mod:`spikecast.convert.compensation`), or, with ``compensate=False``, raises
:class:`UnsupportedOperationError` listing each offender's module path.
"""

from __future__ import annotations

import fnmatch
import operator
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import torch.fx as fx
from torch import nn

from spikecast.convert.compensation import compensate as compensate_ops
from spikecast.nn.maxpool import SpikingMaxPool
from spikecast.nn.neuron import IFNeuron
from spikecast.errors import UnsupportedOperationError, UnsupportedSite
from spikecast.graph import ops
from spikecast.graph.normalize import find_unsupported, fresh_copy, time_varying_nodes
from spikecast.graph.sites import attr_name, site_nodes
from spikecast.graph.trace import module_path, op_name

POOLS = "pools"


@dataclass(frozen=True)
class NeuronConfig:
    """Neuron settings applied at conversion.

    ``mask_sites``: site names or glob patterns that get random spike masking (``None`` = all
    sites when ``mask_ratio > 0``). ``levels``: spikes a neuron may send per step (multi-threshold
    neurons; the site's range is split into ``levels`` thresholds).
    """

    v_init: float = 0.5
    mask_ratio: float = 0.0
    mask_sites: Optional[Sequence[str]] = None
    mask_seed: int = 0
    mask_rescale: bool = True
    signed: bool = False
    levels: int = 1

    def __post_init__(self):
        if int(self.levels) != self.levels or int(self.levels) < 1:
            raise ValueError(f"levels must be a positive integer, got {self.levels!r}")

    def masks(self, site_name: str) -> bool:
        if self.mask_ratio <= 0:
            return False
        if self.mask_sites is None:
            return True
        return any(fnmatch.fnmatchcase(site_name, pat) for pat in self.mask_sites)


def to_spiking(gm: fx.GraphModule, neuron: NeuronConfig = NeuronConfig(), *,
               input_varies: bool = False, compensate: bool = True, maxpool_mode: str = "max") -> fx.GraphModule:
    """Swap calibrated sites for IF neurons; returns a new graph module (``gm`` is untouched).

    ``compensate``: run non-linear ops inside the spiking part with expectation compensation;
    ``False`` raises :class:`UnsupportedOperationError` naming them instead. ``maxpool_mode``: the
    :class:`SpikingMaxPool` mode of every max-pool whose input varies per step."""
    unsupported = find_unsupported(gm, input_varies)
    if unsupported and not compensate:
        raise UnsupportedOperationError(unsupported)
    out = fresh_copy(gm)
    if unsupported:
        names = {u.node for u in unsupported}
        offenders = [n for n in out.graph.nodes if n.name in names]
        compensate_ops(out, offenders, time_varying_nodes(out, input_varies), module_path)
    for k, (node, site) in enumerate(site_nodes(out)):
        theta = getattr(site, "threshold", None)
        if theta is None:
            raise ValueError(f"site {site.name} has no threshold: calibrate the graph first")
        masked = neuron.masks(site.name)
        if neuron.levels > 1:  # the site's range split into `levels` spike sizes
            theta = theta / neuron.levels
        spiking = IFNeuron(theta, site.name, v_init=neuron.v_init, upper=site.upper,
                           mask_ratio=neuron.mask_ratio if masked else 0.0,
                           mask_seed=neuron.mask_seed + k, mask_rescale=neuron.mask_rescale,
                           signed=neuron.signed, bipolar=getattr(site, "bipolar", False), levels=neuron.levels)
        key = node.target.split(".", 1)[1]
        setattr(out.sites, key, spiking)
    _replace_varying_maxpools(out, input_varies, maxpool_mode)
    out.recompile()
    return out


def _replace_varying_maxpools(gm: fx.GraphModule, input_varies: bool, mode: str = "max") -> None:
    varying = time_varying_nodes(gm, input_varies)
    replaced: set[fx.Node] = set()
    taken: set[str] = set()
    approximated = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or ops.packet(node) not in ops.MAXPOOLS or node not in varying:
            continue
        if node.args[0] not in varying and node.args[0] not in replaced:
            continue  # a pool of a pool replaced here (a node made after `varying`) varies too
        kind = op_name(node).split(".")[-1]
        name = f"{module_path(node) or '<top>'}:{node.name}"
        if not hasattr(gm, POOLS):
            gm.add_submodule(POOLS, nn.Module())
        key = attr_name(node.name, taken)
        gm.get_submodule(POOLS).add_module(key, SpikingMaxPool(kind, list(node.args[1:]), name, mode))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(f"{POOLS}.{key}", (node.args[0],))
        new.meta = dict(node.meta)
        replaced.add(new)
        if kind in ("max_pool2d_with_indices", "adaptive_max_pool2d"):
            for user in list(node.users):
                if user.target is operator.getitem and user.args[1] == 0:
                    user.replace_all_uses_with(new)
                    gm.graph.erase_node(user)
                elif user.users:
                    raise UnsupportedOperationError([UnsupportedSite(
                        module_path(node), op_name(node), node.name, "max-pool indices are used")])
        else:
            node.replace_all_uses_with(new)
        approximated.append(name)
    if approximated:
        gm.graph.eliminate_dead_code()
        # The rate of a SpikingMaxPool is exact (see nn/maxpool.py); the warning stays because
        # its per-step output is not the ANN's and it is stateful, which users may want to know.
        warnings.warn(
            "max-pool on time-varying input (spikes, or the current of a layer inside the spiking "
            "part): using the spiking max-pool (per step, the increase of the window max of the "
            f"accumulated input; exact in the mean over steps) at {', '.join(approximated)}", stacklevel=3)
