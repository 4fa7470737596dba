"""Acceptance test of timm coverage: the timm models of benchmarks/bench_coverage.py convert, and the
SNN's logits reach cosine similarity >= 0.99 with the ANN's (ReLU families at T = 256, modern families
at T = 64).

The models, input sizes, settings (every Recipe field, pinned), seeds, random inputs and the
measurement itself are those of ``benchmarks/bench_coverage.py`` (its docstring says why each setting
is what it is); this test calls its ``measure`` on the same suites, so what it asserts is what the
script publishes in benchmarks/RESULTS.md. The test publishes no number. It skips the spike-driven
share (one more trace per model) and the script's extra rows (settings changed for one model), which
keeps it as fast as before.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")


def _coverage():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_coverage.py"
    spec = importlib.util.spec_from_file_location("bench_coverage", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


COVERAGE = _coverage()
RELU = COVERAGE.SUITES["relu"]
MODERN = COVERAGE.SUITES["modern"]

# Modern models that miss cosine 0.99 at T=64 with the common settings (RESULTS.md reports them as
# misses, with the per-model settings that reach it as extra rows, which this test does not run). Their
# bound is a regression guard a little below the value measured with the common settings, not the target.
KNOWN_MISSES = {
    "mobilenetv3_large_100": 0.93,
    "mobilevit_xxs": 0.98,
}


# ReLU models the benchmark measures but CI does not re-run: what they are made of is tested in
# another model and each adds one to two minutes of CPU (the CI suite must stay under 20 minutes on 2 cores).
# The VGGs' ops (conv, BN, ReLU, max pool, linear) are all in resnet50, which is tested; vgg11_bn alone
# took 102 s of a 1,079 s suite run (2026-12-03).
CI_SKIP = {"vgg16": "resnet50 covers the VGG ops; benchmarks/bench_coverage.py measures vgg16",
           "vgg11_bn": "resnet50 covers the VGG ops; benchmarks/bench_coverage.py measures vgg11_bn"}
RELU_TESTED = [m for m in RELU.models if m[0] not in CI_SKIP]


def _check(suite, name: str, size: int, kwargs: dict, bound: float) -> None:
    row = COVERAGE.measure(suite, name, size, kwargs, share=False, raise_errors=True)
    print(f"\n{name} {size}x{size}: neurons={row['neurons']} convert={row['convert_s']:.1f}s "
          f"simulate={row['simulate_s']:.1f}s " + " ".join(f"cos@{t}={c:.5f}" for t, c in row["cosine"].items())
          + f" logit spread={row['logit_spread']:.3g}")
    assert row["finite"], f"{name}: non-finite SNN output"
    cosine = row["cosine"][suite.target_t]
    assert cosine >= bound, f"{name}: cosine {cosine:.5f} at T={suite.target_t} < {bound}"


@pytest.mark.slow
@pytest.mark.parametrize("name, size, kwargs", RELU_TESTED, ids=[m[0] for m in RELU_TESTED])
def test_timm_model_converts_and_matches_ann_logits(name: str, size: int, kwargs: dict) -> None:
    _check(RELU, name, size, kwargs, RELU.min_cosine)


@pytest.mark.slow
@pytest.mark.parametrize("name, size, kwargs", MODERN.models, ids=[m[0] for m in MODERN.models])
def test_modern_timm_model_converts_and_matches_ann_logits(name: str, size: int, kwargs: dict) -> None:
    _check(MODERN, name, size, kwargs, KNOWN_MISSES.get(name, MODERN.min_cosine))


def test_ci_skips_are_relu_models_whose_family_is_tested() -> None:
    assert set(CI_SKIP) <= {m[0] for m in RELU.models} and len(RELU_TESTED) == len(RELU.models) - len(CI_SKIP)


def test_known_misses_are_modern_models() -> None:
    assert set(KNOWN_MISSES) <= {m[0] for m in MODERN.models}
    assert all(bound < MODERN.min_cosine for bound in KNOWN_MISSES.values())
