"""The CIFAR-10 image sets the benchmarks read, from the shared JPEG folder or from one packed file.

:func:`cifar10` returns exactly what ``spikecast.data.cifar10_tensors(split, limit)`` returns.
When the environment variable ``SPIKECAST_BENCH_IMAGES`` names a file written by ``pack``, the
images come from it instead (bit-identical: the file holds the decoded uint8 pixels and the same
normalisation is applied), so a benchmark can run on a machine that has no copy of the shared
folder - a GPU machine reached with a 64 MiB upload, say. A set missing from the file is an error,
never a silent fallback to other images.

    python benchmarks/bench_data.py pack images.npz train:512 val:1000 test:all

``pack-folder`` / ``unpack-folder`` move the shared JPEG folder itself as one blob and an index
(the files' bytes unchanged, ~53 MiB for train + test), to rebuild it elsewhere:

    python benchmarks/bench_data.py pack-folder ../shared/data/cifar10-jpeg cifar10.blob
    python benchmarks/bench_data.py unpack-folder cifar10.blob SOMEWHERE/data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from safetensors import safe_open

from spikecast.data import cifar10_tensors, cifar10_uint8, normalise_uint8
from spikecast.zoo.trained import weights_path

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


def training_info(name: str) -> dict:
    """What ``train_cifar_zoo.py`` recorded in the weights of zoo model ``name`` (epochs, seconds,
    validation accuracy...); empty when the file or its metadata is missing (informational only)."""
    try:
        with safe_open(str(weights_path(name)), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - informational only
        return {}


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


def pack_folder(folder: Path, out: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    index, offset = [], 0
    with open(out, "wb") as blob:
        for path in files:
            data = path.read_bytes()
            blob.write(data)
            index.append([str(path.relative_to(folder)), offset, len(data)])
            offset += len(data)
    Path(f"{out}.json").write_text(json.dumps(index))
    print(f"{out}: {len(files)} files, {offset / 2**20:.1f} MiB")


def unpack_folder(blob_path: Path, folder: Path) -> None:
    index = json.loads(Path(f"{blob_path}.json").read_text())
    data = blob_path.read_bytes()
    for name, offset, size in index:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[offset:offset + size])
    print(f"{folder}: {len(index)} files")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write image sets (split:limit or split:all) to one .npz file")
    p.add_argument("out", type=Path)
    p.add_argument("sets", nargs="+")
    p = sub.add_parser("pack-folder", help="a folder's files as one blob + a .json index")
    p.add_argument("folder", type=Path)
    p.add_argument("out", type=Path)
    p = sub.add_parser("unpack-folder", help="rebuild the folder from pack-folder's blob")
    p.add_argument("blob", type=Path)
    p.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.out, args.sets)
    elif args.command == "pack-folder":
        pack_folder(args.folder, args.out)
    else:
        unpack_folder(args.blob, args.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
