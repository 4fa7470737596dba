"""Graph <-> JSON. The graph holds only ATen ops, ``operator`` helpers and spikecast modules,
so every node target has a stable name and a saved network reloads without pickle."""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import nn

from spikecast.graph.trace import module_path

FORMAT_VERSION = 1


def _target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"torch.ops.{target.namespace}.{target._opname}.{target._overloadname}"
    if getattr(operator, getattr(target, "__name__", ""), None) is target:
        return f"operator.{target.__name__}"
    raise ValueError(f"cannot serialise call target {target!r}")


def _resolve_target(name: str) -> Callable:
    if name.startswith("operator."):
        return getattr(operator, name.split(".", 1)[1])
    if name.startswith("torch.ops."):
        _, _, ns, op, overload = name.split(".")
        return getattr(getattr(getattr(torch.ops, ns), op), overload)
    raise ValueError(f"unknown call target {name!r} in saved graph")


def _encode(value: Any) -> Any:
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, (list, tuple)):
        return {"tuple" if isinstance(value, tuple) else "list": [_encode(v) for v in value]}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, dict):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    raise ValueError(f"cannot serialise graph argument {value!r} ({type(value).__name__})")


def _decode(value: Any, env: dict[str, fx.Node]) -> Any:
    if not isinstance(value, dict):
        return value
    (kind, v), = value.items()
    if kind == "node":
        return env[v]
    if kind == "float":
        return float(v)
    if kind in ("list", "tuple"):
        items = [_decode(x, env) for x in v]
        return tuple(items) if kind == "tuple" else items
    if kind in ("dtype", "memory_format", "layout"):
        return getattr(torch, v)
    if kind == "device":
        return torch.device(v)
    if kind == "dict":
        return {k: _decode(x, env) for k, x in v.items()}
    raise ValueError(f"unknown encoded value {value!r}")


def graph_to_json(gm: fx.GraphModule) -> list[dict]:
    nodes = []
    for node in gm.graph.nodes:
        entry = {"name": node.name, "op": node.op}
        if node.op == "call_function":
            entry["target"] = _target_name(node.target)
        elif node.op in ("get_attr", "call_module", "placeholder"):
            entry["target"] = str(node.target)
        entry["args"] = _encode(tuple(node.args))
        if node.kwargs:
            entry["kwargs"] = _encode(dict(node.kwargs))
        path = module_path(node)
        if path:
            entry["path"] = path
        nodes.append(entry)
    return nodes


def graph_from_json(nodes: list[dict]) -> fx.Graph:
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for entry in nodes:
        op, args = entry["op"], _decode(entry.get("args", {"tuple": []}), env)
        kwargs = _decode(entry["kwargs"], env) if "kwargs" in entry else {}
        if op == "placeholder":
            node = graph.placeholder(entry["target"])
        elif op == "get_attr":
            node = graph.get_attr(entry["target"])
        elif op == "call_function":
            node = graph.call_function(_resolve_target(entry["target"]), args, kwargs)
        elif op == "call_module":
            node = graph.call_module(entry["target"], args, kwargs)
        elif op == "output":
            graph.output(args[0])
            continue
        else:
            raise ValueError(f"unknown node op {op!r} in saved graph")
        node.name = entry["name"]
        if "path" in entry:
            node.meta["nn_module_stack"] = {"saved": (entry["path"], "")}
        env[entry["name"]] = node
    return graph


def module_specs(gm: fx.GraphModule, registry: dict[str, type]) -> list[dict]:
    """Config of every called submodule (neurons, pools...), whose types must be in ``registry``
    (the runtime passes ``spikecast.nn.stateful.STATEFUL_TYPES``: this layer knows no module type)."""
    specs = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        kind = type(mod).__name__
        if registry.get(kind) is not type(mod):
            raise ValueError(f"cannot serialise module {node.target} of type {kind}")
        specs.append({"target": node.target, "type": kind, "config": mod.config()})
    return specs


def build_modules(root: nn.Module, specs: list[dict], registry: dict[str, type],
                  tensors: dict[str, torch.Tensor]) -> None:
    for spec in specs:
        cls = registry.get(spec["type"])
        if cls is None:
            raise ValueError(f"module {spec['target']} has the unknown type {spec['type']!r} "
                             f"(known: {', '.join(sorted(registry))})")
        prefix = spec["target"] + "."
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        module = cls.from_config(spec["config"], own)
        *parents, leaf = spec["target"].split(".")
        parent = root
        for p in parents:
            if not hasattr(parent, p):
                parent.add_module(p, nn.Module())
            parent = getattr(parent, p)
        parent.add_module(leaf, module)
