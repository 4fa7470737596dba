"""QCFS: quantisation clip-floor-shift activations, the ANN twin of a T-step IF neuron.

Bu et al. (ICLR 2022) replace each ReLU by

    qcfs(x) = lambda / L * clamp(floor(x * L / lambda + 1/2), 0, L)

with ``L`` levels and a learnable clip ``lambda``. An IF neuron with soft reset, threshold
``theta = lambda`` and half-threshold start, driven for ``T = L`` steps by a constant current
``x``, fires exactly ``clamp(floor(x * T / theta + 1/2), 0, T)`` spikes (see
:mod:`spikecast.nn.neuron`), so its mean output equals ``qcfs(x)`` bit for bit. Fine-tuning
the ANN with QCFS activations therefore trains the network the SNN will compute at ``T = L``.

The pass works on the normalised graph: every :class:`ActivationSite` becomes a
:class:`QCFSSite` (a site subclass, so calibration, conversion and correction treat it as any
other site). ``floor`` has a straight-through gradient; ``lambda`` gets the gradient of the
clip (as in the paper's implementation). :func:`qcfs_thresholds` gives the calibrated graph
(``threshold = lambda``) that :func:`spikecast.convert.spiking.to_spiking` turns into neurons.
"""

from __future__ import annotations

import copy
from typing import Optional, Union

import torch
import torch.fx as fx
from torch import nn

from spikecast.graph.normalize import fresh_copy, views_to_reshapes
from spikecast.graph.ops import weighted_layers
from spikecast.graph.sites import ActivationSite, site_nodes


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """``floor(x)`` forward, identity backward (straight-through estimator)."""
    return x + (torch.floor(x) - x).detach()


class QCFSSite(ActivationSite):
    """``lambda / L * clamp(floor(x * L / lambda + shift), 0, L)`` with a learnable ``lambda``.

    A bipolar site (the spike input of a layer reading an analog value) quantises both signs,
    ``lambda / L * floor(clamp(x / lambda, -1, 1) * L + shift)``: what a bipolar neuron sends in
    ``T = L`` steps."""

    def __init__(self, name: str, op: str, upper: Optional[float], levels: int,
                 clip: Union[float, torch.Tensor], shift: float = 0.5, bipolar: bool = False):
        super().__init__(name, op, upper, bipolar=bipolar)
        if int(levels) < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        clip = torch.as_tensor(clip, dtype=torch.float32).detach().clone()
        if (clip <= 0).any() or not torch.isfinite(clip).all():
            raise ValueError(f"site {name!r}: the clip lambda must be finite and > 0")
        self.levels = int(levels)
        self.shift = float(shift)
        self.clip = nn.Parameter(clip)
        self.drop = 0.0  # QDrop: share of values passed unquantised (reconstruction only)
        self.drop_generator: Optional[torch.Generator] = None

    def effective_clip(self) -> torch.Tensor:
        """``lambda``, kept positive and, for a clipped source activation (ReLU6), at most its clip."""
        clip = self.clip.clamp(min=1e-6)
        return clip.clamp(max=self.upper) if self.upper is not None else clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.effective_clip()
        levels = self.levels
        y = torch.clamp(x / lam, -1.0 if self.bipolar else 0.0, 1.0)
        out = floor_ste(y * levels + self.shift) / levels * lam
        if self.drop > 0:
            # QDrop (Wei et al., ICLR 2022): a random share of the values skips the rounding, so the
            # weights are fitted to a neighbourhood of the quantised network (flatter, generalises
            # from few calibration images)
            keep = torch.rand(out.shape, generator=self.drop_generator).to(out.device) < self.drop
            out = torch.where(keep, x if self.bipolar else torch.relu(x), out)
        return out

    def extra_repr(self) -> str:
        clip = f"{float(self.clip):.4g}" if self.clip.numel() == 1 else f"per-channel{tuple(self.clip.shape)}"
        return f"name={self.name!r}, levels={self.levels}, clip={clip}, upper={self.upper}"


def to_qcfs(gm: fx.GraphModule, levels: int, shift: float = 0.5) -> fx.GraphModule:
    """Calibrated graph -> graph whose sites are :class:`QCFSSite` with ``lambda`` = the site's threshold.

    Pure: returns a new graph module; ``gm`` keeps its sites. Every site must have a threshold
    (run :func:`spikecast.calibrate.thresholds.calibrate` first; its threshold for ``T = levels`` is
    a good initial clip).
    """
    out = fresh_copy(gm)
    for node, site in site_nodes(out):
        theta = getattr(site, "threshold", None)
        if theta is None:
            raise ValueError(f"site {site.name} has no threshold: calibrate the graph before to_qcfs")
        key = node.target.split(".", 1)[1]
        setattr(out.sites, key, QCFSSite(site.name, site.op, site.upper, levels, theta, shift,
                                         bipolar=getattr(site, "bipolar", False)))
    out.recompile()
    return out


def qcfs_thresholds(gm: fx.GraphModule) -> fx.GraphModule:
    """QCFS graph -> calibrated graph for conversion: ``threshold = lambda`` on every site.

    The QCFS sites stay (the graph remains the fine-tuned quantised ANN, usable as the teacher of
    post-conversion correction); only their ``threshold`` attribute is set.
    """
    out = fresh_copy(gm)
    for _, site in site_nodes(out):
        if not isinstance(site, QCFSSite):
            raise ValueError(f"site {site.name} is not a QCFS site: run to_qcfs first")
        theta = site.effective_clip().detach().clone()
        site.threshold = float(theta) if theta.numel() == 1 else theta
    out.recompile()
    return out


def qcfs_levels(gm: fx.GraphModule) -> Optional[int]:
    """The number of levels ``L`` of a QCFS graph (None when it has no QCFS site)."""
    levels = {site.levels for _, site in site_nodes(gm) if isinstance(site, QCFSSite)}
    if len(levels) > 1:
        raise ValueError(f"QCFS sites with different levels: {sorted(levels)}")
    return levels.pop() if levels else None


def trainable_copy(gm: fx.GraphModule) -> tuple[fx.GraphModule, list[nn.Parameter]]:
    """A copy of ``gm`` whose weighted layers' weights and biases are fresh trainable parameters
    (the input graph's tensors are never touched), plus every parameter to optimise."""
    out = copy.deepcopy(gm)
    # training inputs come in any memory layout (augmented crops, channels-last): views need
    # compatible strides, reshapes do not
    views_to_reshapes(out.graph)
    out.recompile()
    for _, weight, bias in weighted_layers(out):
        for target in (weight, bias):
            if target is None:
                continue
            *parents, leaf = target.split(".")
            owner = out.get_submodule(".".join(parents)) if parents else out
            tensor = getattr(owner, leaf).detach().clone()
            delattr(owner, leaf)
            owner.register_parameter(leaf, nn.Parameter(tensor, requires_grad=True))
    for name, p in out.named_parameters():
        if name.startswith("sites."):
            p._spikecast_no_decay = True  # QCFS clips: no weight decay
    params = [p for p in out.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the network has no weighted layer with constant weights to fine-tune")
    return out, params


def freeze(module: nn.Module) -> None:
    """Stop gradients to every parameter of ``module`` (a trained copy becomes a constant graph)."""
    for p in module.parameters():
        p.requires_grad_(False)
