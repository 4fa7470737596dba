"""The CIFAR-10 image sets the benchmarks read, from the shared JPEG folder or from one packed file.

:func:`cifar10` returns exactly what ``spikecast.data.cifar10_tensors(split, limit)`` returns.
When the environment variable ``SPIKECAST_BENCH_IMAGES`` names a file written by ``pack``, the
images come from it instead (bit-identical: the file holds the decoded uint8 pixels and the same
normalisation is applied), so a benchmark can run on a machine that has no copy of the shared
folder - a GPU machine reached with a 64 MiB upload, say. A set missing from the file is an error,
never a silent fallback to other images.

    python benchmarks/bench_data.py pack images.npz train:512 val:1000 test:all
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from spikecast.data import cifar10_tensors, cifar10_uint8, normalise_uint8

ENV = "SPIKECAST_BENCH_IMAGES"


def _key(split: str, limit: Optional[int]) -> str:
    return f"{split}:{'all' if limit is None else int(limit)}"


def cifar10(split: str, limit: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``cifar10_tensors(split, limit=limit)``, or the same images from the packed file named by
    ``SPIKECAST_BENCH_IMAGES``."""
    packed = os.environ.get(ENV)
    if not packed:
        return cifar10_tensors(split, limit=limit)
    with np.load(packed) as data:
        key = _key(split, limit)
        if f"{key}/x" not in data:
            raise KeyError(f"{packed} ({ENV}) has no image set {key}; it has "
                           + ", ".join(sorted({k.split('/')[0] for k in data.files})))
        return normalise_uint8(torch.from_numpy(data[f"{key}/x"])), torch.from_numpy(data[f"{key}/y"])


def pack(out: Path, sets: list[str]) -> None:
    arrays = {}
    for item in sets:
        split, _, limit = item.partition(":")
        limit_value = None if limit in ("", "all") else int(limit)
        x, y = cifar10_uint8(split, limit=limit_value)
        arrays[f"{_key(split, limit_value)}/x"] = x.numpy()
        arrays[f"{_key(split, limit_value)}/y"] = y.numpy()
        print(f"{_key(split, limit_value)}: {tuple(x.shape)}")
    np.savez_compressed(out, **arrays)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write image sets (split:limit or split:all) to one .npz file")
    p.add_argument("out", type=Path)
    p.add_argument("sets", nargs="+")
    args = parser.parse_args(argv)
    pack(args.out, args.sets)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
