"""The public API (``spikecast.__all__``) is typed and documented: every function names the types
of its parameters and of its result, every class and function has a docstring."""

from __future__ import annotations

import inspect

import spikecast


def _public():
    return [(name, getattr(spikecast, name)) for name in spikecast.__all__ if name != "__version__"]


def test_every_public_name_is_documented():
    undocumented = [name for name, obj in _public() if not inspect.getdoc(obj)]
    assert not undocumented, f"public names without a docstring: {undocumented}"


def test_every_public_function_is_typed():
    untyped = []
    for name, obj in _public():
        if not inspect.isfunction(obj):
            continue
        sig = inspect.signature(obj)
        for param in sig.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue  # **recipe_overrides / **settings: the Recipe's / FinetuneConfig's typed fields
            if param.annotation is inspect.Parameter.empty:
                untyped.append(f"{name}({param.name})")
        if sig.return_annotation is inspect.Signature.empty:
            untyped.append(f"{name} -> ?")
    assert not untyped, f"public functions with untyped parameters or results: {untyped}"
