"""Accuracies a benchmark already measured, kept so that a restarted run does not simulate them again.

The long benchmarks (``bench_anytime.py``, ``bench_finetune.py``) resume their networks from a work
folder after an interruption, and then used to re-read every finished network on its images: on
2 cores, most of an hour per restart. :class:`RowStore` keeps each measurement in a JSON file of
that work folder, under a key made of everything the number depends on - the network as it computes
(tensors, simulation settings, graph, neuron settings; not its metadata, which holds wall times), the exact images
and labels, the time steps, and the spikecast package's Python sources - so a stored number is read
back only for the same network on the same images with the same code; anything else is measured.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

import spikecast
from spikecast.graph import serialize
from spikecast.nn.stateful import STATEFUL_TYPES


def _sha(chunks: Iterable) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk if isinstance(chunk, bytes) else str(chunk).encode())
    return h.hexdigest()


def source_digest() -> str:
    """The spikecast package's Python sources: a stored row is reused only by the code that measured it."""
    root = Path(spikecast.__file__).parent
    return _sha(part for f in sorted(root.rglob("*.py")) for part in (f.relative_to(root).as_posix(), f.read_bytes()))


def tensor_digest(*tensors: torch.Tensor) -> str:
    return _sha(part for t in tensors for part in (t.dtype, tuple(t.shape), t.detach().cpu().contiguous().numpy()
                                                    .tobytes()))


def network_digest(snn) -> str:
    """What a network computes: its tensors, simulation settings, graph and its modules' settings
    (what ``SpikingNetwork.save`` writes, less the metadata, which holds wall times)."""
    gm = snn.graph_module
    state = gm.state_dict()
    return _sha([tensor_digest(*(state[k] for k in sorted(state))), ",".join(sorted(state)),
                 json.dumps(asdict(snn.config), sort_keys=True),
                 json.dumps(serialize.graph_to_json(gm), sort_keys=True),
                 json.dumps(serialize.module_specs(gm, STATEFUL_TYPES), sort_keys=True)])


class RowStore:
    """Top-1 per T of networks on one image set, kept in ``path`` (JSON) across sittings."""

    def __init__(self, path: Path, x: torch.Tensor, y: torch.Tensor):
        self.path = Path(path)
        self.code, self.images = source_digest(), tensor_digest(x, y)

    def accuracy(self, snn, timesteps: Sequence[int], measure: Callable[[], dict]) -> dict[int, float]:
        """``measure()`` (T -> top-1 of ``snn`` at ``timesteps``), or what it returned in an earlier sitting."""
        stored = json.loads(self.path.read_text()) if self.path.is_file() else {}
        key = _sha([self.code, network_digest(snn), self.images, timesteps])
        if key in stored:
            return {int(t): a for t, a in stored[key].items()}
        acc = {int(t): float(a) for t, a in measure().items()}
        stored = json.loads(self.path.read_text()) if self.path.is_file() else {}  # (re-read: measuring is long)
        stored[key] = acc
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored, indent=1))
        tmp.replace(self.path)
        return acc
