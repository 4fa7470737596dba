"""benchmarks/row_store.py: a restarted benchmark reads back a measurement only for the same network,
images, time steps and spikecast sources."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

import spikecast


def _row_store():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "row_store.py"
    spec = importlib.util.spec_from_file_location("row_store", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _snn(seed: int):
    torch.manual_seed(seed)
    ann = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    return spikecast.convert(ann, torch.randn(32, 6), timesteps=8, correction="none", progress=False)


def test_a_stored_row_is_read_back_only_for_what_it_measured(tmp_path):
    rs = _row_store()
    x, y = torch.randn(10, 6), torch.arange(10) % 3
    snn, other = _snn(0), _snn(1)
    calls = []

    def measure(value):
        return lambda: calls.append(value) or {4: value, 8: value}

    store = rs.RowStore(tmp_path / "rows.json", x, y)
    assert store.accuracy(snn, (4, 8), measure(0.5)) == {4: 0.5, 8: 0.5}
    # another sitting: the same network loaded from disk, same images -> read back, not measured
    snn.save(tmp_path / "snn")
    again = rs.RowStore(tmp_path / "rows.json", x.clone(), y.clone())
    assert again.accuracy(spikecast.load(tmp_path / "snn"), (4, 8), measure(0.9)) == {4: 0.5, 8: 0.5}
    assert calls == [0.5]
    # anything else is measured: other weights, other steps, other images, other spikecast sources
    assert again.accuracy(other, (4, 8), measure(0.1))[4] == 0.1
    assert again.accuracy(snn, (4, 8, 16), measure(0.2))[4] == 0.2
    assert rs.RowStore(tmp_path / "rows.json", x[:9], y[:9]).accuracy(snn, (4, 8), measure(0.3))[4] == 0.3
    changed = rs.RowStore(tmp_path / "rows.json", x, y)
    changed.code = "other sources"
    assert changed.accuracy(snn, (4, 8), measure(0.4))[4] == 0.4
    assert calls == [0.5, 0.1, 0.2, 0.3, 0.4]
    # a change of a neuron's settings alone, or of the simulation's, is another network
    neuron = next(iter(snn.neurons().values()))
    neuron.v_init = 0.25 if neuron.v_init != 0.25 else 0.5
    assert again.accuracy(snn, (4, 8), measure(0.6))[4] == 0.6
    snn.config = replace(snn.config, encoding="poisson")
    assert again.accuracy(snn, (4, 8), measure(0.7))[4] == 0.7
