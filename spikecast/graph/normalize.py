"""Stage 2: traced graph -> normalised graph.

Pure passes over ``fx.GraphModule`` (each returns a new module and leaves its input untouched):

* :func:`remove_identities` - dropout (eval), clone, alias and friends disappear.
* :func:`fold_batchnorm` - BatchNorm folded into the conv/linear before it; a BatchNorm with no
  foldable predecessor stays as an exact affine op.
* :func:`insert_activation_sites` - every ReLU-like op becomes an :class:`ActivationSite`.
* :func:`move_maxpool_before_sites` - ``maxpool(relu(x)) == relu(maxpool(x))``; moving the pool
  before the site makes it exact in the SNN.
* :func:`decompose_maxpools` - (optional) a max-pool of sites written as a tree of
  ``max(a, b) = b + relu(a - b)`` with new sites: exact in the ANN, extra neuron layers in the SNN.
* :func:`insert_spike_sites` - a weighted layer that would read an analog value made by a
  non-linear op (GELU, LayerNorm, attention, ...) reads a bipolar site instead, so that every
  weighted layer past the input is driven by spikes.
* :func:`find_unsupported` - lists every op that cannot run in the spiking part.

:func:`normalize` runs them in order.
"""

from __future__ import annotations

import copy
import operator
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.fx as fx

from spikecast.errors import UnsupportedSite
from spikecast.graph import ops
from spikecast.graph.sites import SITES, ActivationSite, attr_name, container, site_nodes
from spikecast.graph.trace import _set_attr, module_path, module_type, op_name

aten = torch.ops.aten
SITES_PREFIX = SITES + "."


def fresh_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A new GraphModule with a copied graph that shares the (never mutated) tensors of ``gm``.

    Called submodules (activation sites, neurons, spiking max-pools, compensation modules) are
    deep-copied: fx would copy ``call_module`` targets by reference, and then a pass editing a
    site, or two networks simulated side by side, would share their configuration and state.
    Weights and other ``get_attr`` tensors stay shared (passes register new tensors instead).
    """
    graph = fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    new = fx.GraphModule(gm, graph, class_name=gm.__class__.__name__)
    memo: dict = {}
    if hasattr(gm, "sites"):
        # the whole container, so that sites no node calls (any more) are copied too
        new.sites = copy.deepcopy(gm.sites, memo)
    targets = {str(n.target) for n in new.graph.nodes if n.op == "call_module"}
    for target in sorted(targets, key=lambda t: t.count(".")):  # a parent before its children
        *parents, leaf = target.split(".")
        owner = new.get_submodule(".".join(parents)) if parents else new
        setattr(owner, leaf, copy.deepcopy(gm.get_submodule(target), memo))
    return new


def _finish(gm: fx.GraphModule) -> fx.GraphModule:
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm


# --------------------------------------------------------------------------------------------
def remove_identities(gm: fx.GraphModule) -> fx.GraphModule:
    """Drop ops that are the identity at inference: dropout, clone, alias, detach, contiguous (and
    make views reshapes, which no longer depend on a dropped clone's layout)."""
    gm = fresh_copy(gm)
    identity = ops.DROPOUTS | {aten.clone, aten.alias, aten.detach, aten.contiguous, aten.lift_fresh_copy}
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and ops.packet(node) in identity:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif node.op == "call_function" and node.target in (aten.view.default, aten._unsafe_view.default):
            # `x.transpose(..).reshape(..)` is traced as clone + _unsafe_view: without the clone the
            # view may not fit the strides; reshape gives the same values for any layout
            node.target = aten.reshape.default
    return _finish(gm)


# --------------------------------------------------------------------------------------------
_BN = {aten._native_batch_norm_legit_no_training}


def _bn_parts(node: fx.Node):
    """(input, weight, bias, mean, var, eps) of an eval-mode BatchNorm node."""
    if ops.packet(node) is aten._native_batch_norm_legit_no_training:
        inp, w, b, mean, var, _momentum, eps = node.args[:7]
        return inp, w, b, mean, var, eps
    return None


def _attr(gm: fx.GraphModule, node: Optional[fx.Node]) -> Optional[torch.Tensor]:
    if node is None:
        return None
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        raise ValueError("not a constant")
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def _foldable_layer(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op != "call_function" or len(node.users) != 1:
        return False
    p = ops.packet(node)
    if p in (aten.conv1d, aten.conv2d, aten.conv3d, aten.linear):
        weight = node.args[1]
    elif p is aten.convolution and not node.args[6]:  # transposed convs fold on another axis
        weight = node.args[1]
    else:
        return False
    bias = node.args[2] if len(node.args) > 2 else None
    return isinstance(weight, fx.Node) and weight.op == "get_attr" and (
        bias is None or (isinstance(bias, fx.Node) and bias.op == "get_attr")
    )


def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold each eval-mode BatchNorm into the conv/linear that feeds only it.

    W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps). A BatchNorm whose
    input is not such a layer (e.g. DenseNet's pre-activation order) is left in place: in eval
    mode it is an exact per-channel affine map, which the SNN runs at every step.
    """
    gm = fresh_copy(gm)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or ops.packet(node) not in _BN:
            continue
        inp, w_node, b_node, mean_node, var_node, eps = _bn_parts(node)
        if not _foldable_layer(gm, inp):
            continue
        if any(u.target is not operator.getitem or u.args[1] != 0 for u in node.users):
            continue
        try:
            gamma, beta = _attr(gm, w_node), _attr(gm, b_node)
            mean, var = _attr(gm, mean_node), _attr(gm, var_node)
            weight, bias = _attr(gm, inp.args[1]), _attr(gm, inp.args[2] if len(inp.args) > 2 else None)
        except ValueError:
            continue  # statistics computed at run time: not foldable
        scale = torch.rsqrt(var.double() + eps)
        if gamma is not None:
            scale = scale * gamma.double()
        shift = -mean.double() * scale
        if beta is not None:
            shift = shift + beta.double()
        new_w = (weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))).to(weight.dtype)
        new_b = shift if bias is None else bias.double() * scale + shift
        new_b = new_b.to(weight.dtype)
        w_name = f"{inp.args[1].target}"
        b_name = f"{w_name.rsplit('.', 1)[0]}.bias" if "." in w_name else f"{w_name}_bias"
        if bias is not None:
            b_name = inp.args[2].target
        _set_attr(gm, w_name, new_w)
        _set_attr(gm, b_name, new_b)
        with gm.graph.inserting_before(inp):
            b_get = gm.graph.get_attr(b_name)
        args = list(inp.args)
        while len(args) < 3:
            args.append(None)
        args[2] = b_get
        inp.args = tuple(args)
        inp.meta.setdefault("spikecast", {})["folded_bn"] = module_path(node)
        for user in list(node.users):
            user.replace_all_uses_with(inp)
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
    return _finish(gm)


# --------------------------------------------------------------------------------------------
_ACTIVATION_TYPE_WORDS = ("relu", "hardtanh", "clamp", "act")


def _relu_clip(node: fx.Node) -> tuple[bool, Optional[float]]:
    """(is ReLU-like, upper clip) for a call_function node."""
    p = ops.packet(node)
    args = list(node.args) + [None] * 4
    kw = node.kwargs
    if p in (aten.relu, aten.relu_):
        return True, None
    if p in (aten.relu6,):
        return True, 6.0
    if p in (aten.hardtanh, aten.hardtanh_):
        lo = kw.get("min_val", args[1] if args[1] is not None else -1.0)
        hi = kw.get("max_val", args[2] if args[2] is not None else 1.0)
        return (float(lo) == 0.0, float(hi))
    if p in (aten.clamp, aten.clamp_):
        lo, hi = kw.get("min", args[1]), kw.get("max", args[2])
        if isinstance(lo, (int, float)) and float(lo) == 0.0 and (hi is None or isinstance(hi, (int, float))):
            return True, None if hi is None else float(hi)
    if p is aten.clamp_min and isinstance(args[1], (int, float)) and float(args[1]) == 0.0:
        return True, None
    if p is aten.threshold and args[1] == 0 and args[2] == 0:
        return True, None
    return False, None


def _site_name(node: fx.Node, counts: dict) -> str:
    path = module_path(node)
    mtype = module_type(node).rsplit(".", 1)[-1].lower()
    if path and any(w in mtype for w in _ACTIVATION_TYPE_WORDS):
        base = path  # an activation module (nn.ReLU, timm act): its path says it all
    else:
        base = f"{path}.{op_name(node).split('.')[-1]}" if path else op_name(node).split(".")[-1]
    k = counts[base]
    counts[base] += 1
    return base if k == 0 and not base.endswith(("relu", "hardtanh", "clamp", "relu6")) else f"{base}[{k}]"


def insert_activation_sites(gm: fx.GraphModule) -> fx.GraphModule:
    """Replace each ReLU-like op by a call to a named :class:`ActivationSite`."""
    gm = fresh_copy(gm)
    box = container(gm)
    taken = set(dict(box.named_children()))
    counts: dict[str, int] = defaultdict(int)
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        is_relu, upper = _relu_clip(node)
        if not is_relu:
            continue
        name = _site_name(node, counts)
        site = ActivationSite(name, op=op_name(node) + ("" if upper is None else f"(0, {upper:g})"), upper=upper)
        key = attr_name(name, taken)
        box.add_module(key, site)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(f"sites.{key}", (node.args[0],))
        new.meta = copy.copy(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    return _finish(gm)


# --------------------------------------------------------------------------------------------
def _maxpool_input(node: fx.Node) -> Optional[fx.Node]:
    if node.op == "call_function" and ops.packet(node) in ops.MAXPOOLS:
        return node.args[0]
    return None


_SPATIAL_DIMS = {aten.max_pool1d: 1, aten.max_pool2d: 2, aten.max_pool3d: 3, aten.max_pool2d_with_indices: 2,
                 aten.adaptive_max_pool2d: 2}


def _indices_used(pool: fx.Node) -> bool:
    """Whether anything reads the indices of a ``max_pool2d_with_indices`` (its output 1)."""
    return any(not (u.target is operator.getitem and u.args[1] == 0) and len(u.users) for u in pool.users)


def _replace_pool_values(pool: fx.Node, tuple_output: bool, value: fx.Node) -> None:
    """Make every reader of ``pool``'s pooled values (``pool`` itself, or its output 0) read ``value``."""
    if not tuple_output:
        pool.replace_all_uses_with(value)
        return
    for user in list(pool.users):
        if user.target is operator.getitem and user.args[1] == 0:
            user.replace_all_uses_with(value)


def _infer_val(node: fx.Node) -> None:
    """Set ``node.meta["val"]`` (shape and dtype, on the meta device) from its inputs' values, for a
    node a pass created (later passes read shapes and tell tensors from sizes by it)."""
    vals = [a.meta.get("val") for a in node.all_input_nodes]
    fake_mode = next((v.fake_mode for v in vals if hasattr(v, "fake_mode")), None)
    if fake_mode is not None:  # the fake tensors of torch.export, with their symbolic batch size
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda a: a.meta.get("val"))
        with fake_mode:
            node.meta["val"] = node.target(*args, **kwargs)
        return

    def meta(arg):
        val = arg.meta.get("val")
        if isinstance(val, torch.Tensor):
            return torch.empty(val.shape, dtype=val.dtype, device="meta")
        if isinstance(val, (tuple, list)):
            return type(val)(torch.empty(v.shape, dtype=v.dtype, device="meta") for v in val)
        return val

    args, kwargs = fx.node.map_arg((node.args, node.kwargs), meta)
    node.meta["val"] = node.target(*args, **kwargs)


def _site_sources(node: fx.Node, spatial: int) -> Optional[Union[fx.Node, tuple]]:
    """The tree under a max-pool's input made of sites and channel concatenations only: a site call
    node, or ``("cat", dim, [subtrees])``; None when anything else is in the way."""
    if node.op == "call_module" and str(node.target).startswith(SITES_PREFIX):
        return node
    if node.op == "call_function" and ops.packet(node) is aten.cat:
        parts = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        val = node.meta.get("val")
        if val is None or not isinstance(parts, (list, tuple)):
            return None
        if dim % val.dim() >= val.dim() - spatial:
            return None  # concatenated along a pooled axis: windows straddle the parts
        subtrees = [_site_sources(part, spatial) if isinstance(part, fx.Node) else None for part in parts]
        if any(t is None for t in subtrees):
            return None
        return ("cat", dim, subtrees)
    return None


def move_maxpool_before_sites(gm: fx.GraphModule, *, through_concat: bool = True) -> fx.GraphModule:
    """Rewrite ``maxpool(site(x))`` as ``site'(maxpool(x))`` - exact, since max commutes with any
    non-decreasing function. When the site has other users it stays for them and the pooled path
    gets its own site (calibrated on its own): extra neurons, as many as the pool's outputs.

    ``through_concat``: also ``maxpool(cat([site_a(a), site_b(b)], channels))`` ->
    ``cat([site_a'(maxpool(a)), site_b'(maxpool(b))])`` (a pool acts on each channel alone, so it
    commutes with a channel concatenation): the max-pool branch of an inception block and the pools
    between its stages then pool currents before their own neurons instead of pooling spikes."""
    gm = fresh_copy(gm)
    box = container(gm)
    taken = set(dict(box.named_children()))
    for pool in list(gm.graph.nodes):
        src = _maxpool_input(pool)
        if src is None:
            continue
        tree = _site_sources(src, _SPATIAL_DIMS.get(ops.packet(pool), 2))
        if tree is None or (isinstance(tree, tuple) and not through_concat):
            continue
        tuple_output = ops.packet(pool) in (aten.max_pool2d_with_indices, aten.adaptive_max_pool2d)

        def pooled_site(site_node: fx.Node, exclusive: bool) -> fx.Node:
            """maxpool(x) -> site, for the site call ``site_node = site(x)`` (inserted before ``pool``);
            ``exclusive``: nothing but this pool reads the site, so the pooled path may keep it."""
            site = gm.get_submodule(site_node.target)
            with gm.graph.inserting_before(pool):
                new_pool = gm.graph.call_function(pool.target, (site_node.args[0], *pool.args[1:]), dict(pool.kwargs))
                values = gm.graph.call_function(operator.getitem, (new_pool, 0)) if tuple_output else new_pool
            new_pool.meta = copy.copy(pool.meta)
            _infer_val(new_pool)
            if tuple_output:
                _infer_val(values)
            where = "" if tree is site_node else " through the concatenation"
            new_pool.meta.setdefault("spikecast", {})["maxpool"] = (
                f"exact: moved{where} before the neuron" if exclusive else
                f"exact: moved{where} before new neurons")
            if exclusive:
                target = site_node.target
            else:
                name = f"{site.name}@pooled"
                key = attr_name(name, taken)
                taken.add(key)
                box.add_module(key, ActivationSite(name, op=site.op, upper=site.upper, bipolar=site.bipolar))
                target = f"sites.{key}"
            with gm.graph.inserting_before(pool):
                new_site = gm.graph.call_module(target, (values,))
            new_site.meta = copy.copy(site_node.meta)
            new_site.meta["val"] = values.meta["val"]
            return new_site

        def rebuild(t, node: fx.Node, exclusive: bool) -> fx.Node:
            if isinstance(t, fx.Node):
                return pooled_site(t, exclusive)
            _, dim, subtrees = t
            parts = [rebuild(sub, part, exclusive and len(part.users) == 1) for sub, part in zip(subtrees, node.args[0])]
            with gm.graph.inserting_before(pool):
                cat = gm.graph.call_function(aten.cat.default, (parts, dim))
            _infer_val(cat)
            return cat

        if tuple_output and _indices_used(pool):
            raise ValueError(f"max-pool indices are used at {module_path(pool)}; cannot reorder")
        _replace_pool_values(pool, tuple_output, rebuild(tree, src, len(src.users) == 1))
    gm = _finish(gm)
    # drop site modules that lost their last call
    used = {n.target for n, _ in site_nodes(gm)}
    for key, _ in list(gm.sites.named_children()):
        if f"sites.{key}" not in used:
            delattr(gm.sites, key)
    return gm


def _pool_geometry(pool: fx.Node) -> Optional[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
    """``(kernel, stride, padding)`` of a plain 2-D max-pool (dilation 1, no ceil mode), else None."""
    if ops.packet(pool) not in (aten.max_pool2d, aten.max_pool2d_with_indices):
        return None
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
    given = dict(zip(names, pool.args[1:]), **pool.kwargs)

    def pair(v, default):
        v = default if v is None or (isinstance(v, (list, tuple)) and not v) else v
        v = [int(v)] * 2 if isinstance(v, int) else [int(e) for e in v]
        return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])

    kernel = pair(given["kernel_size"], None)
    stride = pair(given.get("stride"), kernel)
    padding = pair(given.get("padding"), 0)
    if pair(given.get("dilation"), 1) != (1, 1) or given.get("ceil_mode", False):
        return None
    return kernel, stride, padding


def decompose_maxpools(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite each 2-D max-pool of sites (or of channel concatenations of sites) as a tree of
    ``max(a, b) = b + relu(a - b)``: the window's ``kh * kw`` shifted views, paired level by level,
    each ``relu(a - b)`` a new :class:`ActivationSite` (``<pool>@max<level>``). Exact in the ANN (its
    inputs are ReLU outputs, >= 0, so zero padding is -inf padding for the max); in the SNN every
    level is a layer of neurons: ``ceil(log2(kh * kw))`` layers of delay (4 for 3x3) and
    ``kh * kw - 1`` neurons per output, each adding its rate error - the known exact alternative to
    a spiking max-pool (Rueckauer et al. 2017, Sec. 2.2.3; Gao et al. 2023). Pools the SNN runs
    exactly anyway (moved before a neuron, static input) should be moved first
    (:func:`move_maxpool_before_sites`); this pass only touches pools whose input is made of sites."""
    gm = fresh_copy(gm)
    box = container(gm)
    taken = set(dict(box.named_children()))
    for pool in list(gm.graph.nodes):
        src = _maxpool_input(pool)
        geometry = _pool_geometry(pool) if src is not None else None
        if geometry is None or _site_sources(src, 2) is None:
            continue
        tuple_output = ops.packet(pool) is aten.max_pool2d_with_indices
        if tuple_output and _indices_used(pool):
            continue
        (kh, kw), (sh, sw), (ph, pw) = geometry
        val = pool.meta.get("val")
        out = val[0] if tuple_output else val
        ho, wo = int(out.shape[-2]), int(out.shape[-1])
        levels = max(1, (kh * kw - 1).bit_length())
        base = module_path(pool) or pool.name
        graph = gm.graph
        with graph.inserting_before(pool):
            x = src
            if ph or pw:
                x = graph.call_function(aten.constant_pad_nd.default, (src, [pw, pw, ph, ph], 0.0))
                _infer_val(x)
            views = []
            for i in range(kh):
                for j in range(kw):
                    v = graph.call_function(aten.slice.Tensor, (x, -2, i, i + sh * (ho - 1) + 1, sh))
                    _infer_val(v)
                    v = graph.call_function(aten.slice.Tensor, (v, -1, j, j + sw * (wo - 1) + 1, sw))
                    _infer_val(v)
                    views.append(v)
            level = 0
            while len(views) > 1:
                level += 1
                merged = []
                for k in range(0, len(views) - 1, 2):
                    a, b = views[k], views[k + 1]
                    diff = graph.call_function(aten.sub.Tensor, (a, b))
                    _infer_val(diff)
                    name = f"{base}@max{level}[{k // 2}]"
                    key = attr_name(name, taken)
                    taken.add(key)
                    box.add_module(key, ActivationSite(name, op=f"max-pool decomposition, layer {level} of {levels}"))
                    relu = graph.call_module(f"{SITES_PREFIX}{key}", (diff,))
                    relu.meta["val"] = diff.meta["val"]
                    m = graph.call_function(aten.add.Tensor, (b, relu))
                    _infer_val(m)
                    merged.append(m)
                if len(views) % 2:
                    merged.append(views[-1])
                views = merged
        _replace_pool_values(pool, tuple_output, views[0])
    return _finish(gm)


@dataclass(frozen=True)
class MaxpoolRewrite:
    """How :func:`normalize` rewrites the max-pools of sites (``Recipe.maxpool`` resolves to one)."""

    #: move pools through channel concatenations of sites (:func:`move_maxpool_before_sites`)
    through_concat: bool = True
    #: decompose the pools of sites left after the move (:func:`decompose_maxpools`)
    decompose: bool = False


#: The rewrite of each ``Recipe.maxpool`` method (``"spikes"`` and ``"gate"`` differ only in the
#: spiking max-pool the converter puts where pools stay on spikes).
MAXPOOL_REWRITES = {"moved": MaxpoolRewrite(through_concat=True), "spikes": MaxpoolRewrite(through_concat=False),
                    "gate": MaxpoolRewrite(through_concat=False),
                    "decompose": MaxpoolRewrite(through_concat=False, decompose=True)}


# --------------------------------------------------------------------------------------------
def analog_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value comes from a non-linear op other than an activation site without a site
    in between: the values a weighted layer would read as analog numbers (not spikes) in the SNN.
    The network input is not one of them (the first layer reads it, as in every converter)."""
    # values that depend on the input (constants computed in the graph, e.g. sin/cos position
    # tables, are neither spikes nor analog activations)
    dependent = time_varying_nodes(gm, input_varies=True)
    analog: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or ops.is_shape_op(node) or node not in dependent:
            continue
        if ops.packet(node) not in ops.MAXPOOLS and unsupported_reason(node, dependent) is not None:
            analog.add(node)
        elif any(a in analog for a in node.all_input_nodes):
            analog.add(node)
    return analog


def insert_spike_sites(gm: fx.GraphModule) -> fx.GraphModule:
    """Put a bipolar :class:`ActivationSite` on every analog input of a weighted layer.

    In a ReLU network every weighted layer past the first already reads spikes. In a GELU / LayerNorm
    / attention network the non-linear ops run as compensated ops (see
    :mod:`spikecast.convert.compensation`) whose outputs are analog; the bipolar neuron placed here
    turns such a value back into spikes, so the layer's synaptic operations stay accumulate-only. A
    value read by several weighted layers gets one shared site. ReLU networks get none.
    """
    gm = fresh_copy(gm)
    analog = analog_nodes(gm)
    box = container(gm)
    taken = set(dict(box.named_children()))
    made: dict[fx.Node, fx.Node] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or ops.packet(node) not in ops.WEIGHTED or not node.args:
            continue
        user, src = node, node.args[0]
        if not isinstance(src, fx.Node) or src not in analog:
            continue
        # The neuron goes before reshapes that feed only this layer: on the tensor the model computed
        # (tokens x channels, a feature map), not on a view that folds the batch into the channels
        # (CondConv's grouped conv) - spikes commute with reshapes, per-channel thresholds do not.
        while (src.op == "call_function" and ops.packet(src) in _RESHAPES and len(src.users) == 1
               and isinstance(src.args[0], fx.Node) and src.args[0] in analog):
            user, src = src, src.args[0]
        if src not in made:
            name = f"{module_path(node) or node.name}:input"
            key = attr_name(name, taken)
            box.add_module(key, ActivationSite(name, op="spike input", bipolar=True))
            with gm.graph.inserting_after(src):
                site = gm.graph.call_module(f"{SITES_PREFIX}{key}", (src,))
            site.meta = copy.copy(src.meta)
            site.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
            made[src] = site
        user.replace_input_with(src, made[src])
    return _finish(gm)


_RESHAPES = {aten.view, aten.reshape, aten._unsafe_view, aten.flatten, aten.unflatten, aten.permute, aten.transpose,
             aten.t, aten.squeeze, aten.unsqueeze}


def time_varying_nodes(gm: fx.GraphModule, input_varies: bool = False) -> set[fx.Node]:
    """Nodes whose value changes from step to step in the SNN: everything downstream of a site
    (and of the input when the input itself is spike-encoded)."""
    varying: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if input_varies:
                varying.add(node)
        elif node.op == "call_module" and str(node.target).startswith("sites."):
            varying.add(node)
        elif any(a in varying for a in node.all_input_nodes):
            varying.add(node)
    return varying


def find_unsupported(gm: fx.GraphModule, input_varies: bool = False) -> list[UnsupportedSite]:
    """Every op in the time-varying part of the graph that has no spiking equivalent."""
    varying = time_varying_nodes(gm, input_varies)
    bad: list[UnsupportedSite] = []
    for node in gm.graph.nodes:
        if node not in varying or node.op != "call_function":
            continue
        reason = unsupported_reason(node, varying)
        if reason:
            bad.append(UnsupportedSite(module_path(node), op_name(node), node.name, reason))
    return bad


def unsupported_reason(node: fx.Node, varying: set[fx.Node]) -> Optional[str]:
    """Why ``node`` (time-varying) cannot run per step; None when it can."""
    if ops.is_shape_op(node) or node.target is operator.getitem:
        return None
    p = ops.packet(node)
    if p in ops.WEIGHTED:
        weight = node.args[1]
        if isinstance(weight, fx.Node) and weight in varying:
            return "weight varies in time (product of two spike trains)"
        return None
    if p in ops.LINEAR:
        return None
    if p in ops.PRODUCTS:
        moving = [a for a in ops.tensor_args(node) if a in varying]
        if p is aten.div and len(node.args) > 1 and isinstance(node.args[1], fx.Node) and node.args[1] in varying:
            return "division by a time-varying tensor is not linear"
        if len(moving) <= 1:
            return None
        return "product of two time-varying tensors is not linear"
    if p in ops.MAXPOOLS:
        return None  # converted to SpikingMaxPool (exact in the mean; warned)
    return "non-linear op with no spiking equivalent"


# --------------------------------------------------------------------------------------------
def normalize(gm: fx.GraphModule, *, maxpool: MaxpoolRewrite = MaxpoolRewrite()) -> fx.GraphModule:
    """Run all normalisation passes: identities, BN folding, activation sites, max-pool order
    (``maxpool``: see :class:`MaxpoolRewrite`), spike inputs of weighted layers."""
    gm = remove_identities(gm)
    gm = fold_batchnorm(gm)
    gm = insert_activation_sites(gm)
    gm = move_maxpool_before_sites(gm, through_concat=maxpool.through_concat)
    if maxpool.decompose:
        gm = decompose_maxpools(gm)
    gm = insert_spike_sites(gm)
    return gm


def views_to_reshapes(graph: fx.Graph) -> None:
    """Replace ``view`` nodes by ``reshape`` in place (for graphs run on NHWC tensors)."""
    # A view needs compatible strides; with NHWC feature maps it may not have them. reshape gives
    # the same values for any layout (copying only when it must).
    for node in graph.nodes:
        if node.op == "call_function" and node.target in (torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default):
            node.target = torch.ops.aten.reshape.default
