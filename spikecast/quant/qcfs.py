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


class DropMasks:
    """QDrop's random choices (Wei et al., ICLR 2022) for every site of one reconstruction: a share of
    the values skips the rounding, so the weights are fitted to a neighbourhood of the quantised
    network (flatter; generalises from few calibration images).

    Called on an activation ``x``, gives ``(rounded, passed)``: float tensors shaped and laid out like ``x``, 1 where a
    value is rounded (``rounded``) or passes unrounded (``passed = 1 - rounded``), ``share`` of them
    passing. They are windows, at a random offset drawn from ``generator``, into one pool of random
    choices drawn once (four times the largest activation seen): fresh ``torch.rand`` per site and
    step cost as much as the convolutions of a CPU step (2.4 ms per 0.5M values here), a window
    nothing. Each value's choice still changes from step to step (the offsets do), and values of
    one activation are independent of each other; windows of two sites may overlap, which couples
    nothing a convolution between them could see.
    """

    def __init__(self, share: float, generator: torch.Generator):
        if not 0.0 < float(share) < 1.0:
            raise ValueError(f"QDrop share must be in (0, 1), got {share!r}")
        self.share = float(share)
        self.generator = generator
        self._pool: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.numel()
        if self._pool is None or self._pool[0].numel() < 4 * n or self._pool[0].device != x.device:
            rounded = (torch.rand(4 * n, generator=self.generator) >= self.share).float()
            self._pool = (rounded.to(x.device), (1.0 - rounded).to(x.device))
        offset = int(torch.randint(0, self._pool[0].numel() - n + 1, (1,), generator=self.generator))
        dense = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
        if dense:
            return tuple(p.as_strided(x.shape, x.stride(), offset) for p in self._pool)
        return tuple(p[offset:offset + n].view(x.shape) for p in self._pool)


class _QCFS(torch.autograd.Function):
    """``lam / L * floor(clamp(x / lam, lo, 1) * L + shift)`` with a straight-through floor
    (identity gradient) composed with the clamp, in one autograd node.

    Written out by hand because the composed version records about ten elementwise ops, each with
    its own backward pass over the activation, and on CPU those passes cost as much as the
    convolutions (ResNet-32 reconstruction step: 0.28 s, half of it elementwise). Masks are float
    tensors: boolean ones (``where``, ``masked_fill``, ``x * bool``) are 5-20x slower on CPU here.
    Gradients (the floor's taken as identity): ``d/dx = 1`` where ``lo < x / lam < 1`` (the clamp's
    own mask), else 0; ``d/dlam = q / L - x / lam`` inside that range and ``q / L`` outside (``q`` the
    floor), summed to ``lam``'s shape.

    ``drop`` (QDrop, optional): ``(rounded, passed)`` masks from :class:`DropMasks`; where ``passed``
    is 1 the output is the unquantised value (``relu(x)``, or ``x`` when ``lo < 0``), with the ReLU's
    gradient to ``x`` and none to ``lam``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: torch.Tensor, levels: int, shift: float, lo: float,
                drop: Optional[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        y = x / lam
        clamped = y.clamp(lo, 1.0)
        # 1 where the clamp lets the gradient through: strictly inside, as torch.clamp's backward
        inside, below_top = torch.empty_like(y), torch.empty_like(y)
        torch.gt(y, lo, out=inside)
        inside.mul_(torch.lt(y, 1.0, out=below_top))
        q_over_l = clamped.mul_(levels).add_(shift).floor_().div_(levels)
        out = q_over_l * lam
        # d out / d lam, per element: q / L minus (x / lam where the clamp passed x through)
        dlam = q_over_l.sub_(y.mul_(inside))
        if drop is not None:
            rounded, passed = drop
            if lo < 0:
                out.mul_(rounded).addcmul_(x, passed)
                inside.mul_(rounded).add_(passed)
            else:
                relu_grad = torch.empty_like(inside)
                torch.gt(x, 0.0, out=relu_grad)
                out.mul_(rounded).addcmul_(x.clamp_min(0.0), passed)
                inside.mul_(rounded).addcmul_(relu_grad, passed)
            dlam.mul_(rounded)
        ctx.save_for_backward(inside, dlam)
        ctx.lam_shape = lam.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inside, dlam = ctx.saved_tensors
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_lam = (grad * dlam).sum_to_size(ctx.lam_shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_lam, None, None, None, None


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
        self.drop_masks: Optional[DropMasks] = None  # QDrop (reconstruction only)

    def effective_clip(self) -> torch.Tensor:
        """``lambda``, kept positive and, for a clipped source activation (ReLU6), at most its clip."""
        clip = self.clip.clamp(min=1e-6)
        return clip.clamp(max=self.upper) if self.upper is not None else clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.effective_clip()
        levels = self.levels
        drop = self.drop_masks(x) if self.drop_masks is not None else None
        lo = -1.0 if self.bipolar else 0.0
        if torch.is_grad_enabled() and (x.requires_grad or lam.requires_grad):
            return _QCFS.apply(x, lam, levels, self.shift, lo, drop)
        # no gradient (inference, tracing, export): the same values from plain ops
        out = torch.floor(torch.clamp(x / lam, lo, 1.0) * levels + self.shift) / levels * lam
        if drop is not None:
            out = out * drop[0] + (x if self.bipolar else torch.relu(x)) * drop[1]
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
