"""Stage 1: ANN -> traced graph.

The model is captured with ``torch.export`` (non-strict) and decomposed to functional ATen ops
(``run_decompositions({})``). Doing the capture at ATen level is what makes the converter general:
``F.relu``, ``torch.relu_``, ``nn.ReLU(inplace=True)`` and the ReLU inside timm's
``BatchNormAct2d`` all arrive as the same ``aten.relu``; in-place ``out += shortcut`` arrives as a
functional ``aten.add``; shape-dependent Python control flow is resolved for the example's shape.

The result is a plain ``torch.fx.GraphModule`` with one placeholder ``x``, ``get_attr`` nodes for
every parameter/buffer/constant, ATen ``call_function`` nodes and one tensor output. Each node keeps
``meta["nn_module_stack"]`` so later stages can name the module path of any operation.
"""

from __future__ import annotations

import copy
import operator
import warnings

import torch
import torch.fx as fx
from torch import nn

from spikecast.errors import SpikecastError, TraceError

# Nodes that torch.export inserts for its own bookkeeping; they carry no computation.
_BOOKKEEPING_TARGETS = {
    torch.ops.aten._assert_scalar.default,
    torch.ops.aten.sym_constrain_range_for_size.default,
    torch.ops.aten._assert_tensor_metadata.default,
}


def module_path(node: fx.Node) -> str:
    """Module path in the source model of the module that issued ``node`` (``""`` = top level)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path, _type = list(stack.values())[-1]
    # torch.export writes paths such as "L__self___layer1_0" in strict mode; non-strict keeps dots.
    return str(path)


def module_type(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    _path, typ = list(stack.values())[-1]
    return typ if isinstance(typ, str) else getattr(typ, "__qualname__", str(typ))


def op_name(node: fx.Node) -> str:
    """Short, stable name of the operation of a call_function node, e.g. ``aten.relu``."""
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target._opname}" if target.namespace == "aten" else str(target)
    if target is operator.getitem:
        return "getitem"
    return getattr(target, "__name__", str(target))


def _export(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim.AUTO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
            return ep.run_decompositions({})
    except SpikecastError:
        raise  # our own checks that ran inside the model (input_channel_guard) say what is wrong
    except Exception as exc:  # torch.export raises many types; all mean "could not trace".
        raise TraceError(_explain_export_failure(model, exc)) from exc


def _explain_export_failure(model: nn.Module, exc: Exception) -> str:
    """Find the innermost module of ``model`` whose code raised, to name it in the error."""
    import traceback

    code_to_path = {}
    for path, module in model.named_modules():
        fwd = getattr(type(module), "forward", None)
        if fwd is not None and hasattr(fwd, "__code__"):
            code_to_path.setdefault(fwd.__code__, (path or "<top level>", type(module).__name__))
    culprit = None
    for frame, _lineno in traceback.walk_tb(exc.__traceback__):
        hit = code_to_path.get(frame.f_code)
        if hit is not None:
            culprit = hit
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = f"in module '{culprit[0]}' ({culprit[1]})" if culprit else "in the model's forward"
    return (
        f"Could not trace the model {where}: {type(exc).__name__}: {first_line}\n"
        "spikecast captures models with torch.export (non-strict). Make that module traceable, or "
        "replace it with an equivalent that is."
    )


def trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """Capture ``model`` (in eval mode) as a functional ATen ``fx.GraphModule``.

    ``example`` is one input batch; its batch dimension is kept dynamic so that the graph runs on
    any batch size. The model itself is not modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"trace() needs an nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"trace() needs an example input tensor, got {type(example).__name__}")
    if example.shape[0] < 2:
        # Export specialises a batch of 1; two rows keep the batch dimension symbolic.
        example = example.expand(2, *example.shape[1:]).contiguous()
    was_training = model.training
    model.eval()
    try:
        ep = _export(model, example)
    finally:
        model.train(was_training)
    return _clean_graph_module(ep)


def _clean_graph_module(ep: torch.export.ExportedProgram) -> fx.GraphModule:
    """Rebuild the exported program as a plain GraphModule: one input, one tensor output."""
    src = ep.module()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    attrs: dict[str, torch.Tensor] = {}
    placeholders = [n for n in src.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise TraceError(f"spikecast converts models with exactly one input; this one has {len(placeholders)}")
    for node in src.graph.nodes:
        if node.op == "placeholder":
            new = graph.placeholder("x")
            new.meta = copy.copy(node.meta)
            env[node] = new
        elif node.op == "get_attr":
            attrs[node.target] = _fetch_attr(src, node.target)
            env[node] = graph.node_copy(node, lambda n: env[n])
        elif node.op == "call_module":
            continue  # export's guard function (_guards_fn): bookkeeping only
        elif node.op == "call_function" and node.target in _BOOKKEEPING_TARGETS:
            continue
        elif node.op == "output":
            outputs = fx.node.map_arg(node.args[0], lambda n: env[n])
            if isinstance(outputs, (tuple, list)):
                if len(outputs) != 1:
                    raise TraceError(
                        f"spikecast converts models with one tensor output; this one returns {len(outputs)}"
                    )
                outputs = outputs[0]
            graph.output(outputs)
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
    root = nn.Module()
    for name, value in attrs.items():
        _set_attr(root, name, value)
    gm = fx.GraphModule(root, graph, class_name="TracedANN")
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _fetch_attr(module: nn.Module, target: str) -> torch.Tensor:
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _set_attr(root: nn.Module, target: str, value: torch.Tensor) -> None:
    *parents, leaf = target.split(".")
    mod = root
    for part in parents:
        if not hasattr(mod, part):
            mod.add_module(part, nn.Module())
        mod = getattr(mod, part)
    tensor = value.detach()
    was_param = isinstance(getattr(mod, leaf, None), nn.Parameter)
    if hasattr(mod, leaf):
        delattr(mod, leaf)
    if isinstance(value, nn.Parameter) or was_param:
        mod.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))
    else:
        mod.register_buffer(leaf, tensor)
