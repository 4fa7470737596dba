"""Scale-out of evaluation on an existing engine: ``torchrun --nproc_per_node=N -m spikecast validate ...``.

Each process evaluates the share of the data that ``torch.utils.data.DistributedSampler``
(``shuffle=False``) gives its rank, without the padding the sampler adds to make shares equal
(a padded duplicate would be counted twice); :func:`spikecast.validate` then sums its counts over
all ranks, so every rank ends with the numbers of the single-process run. Gloo on CPU, NCCL when
the model runs on CUDA.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(backend: Optional[str] = None) -> bool:
    """Join the process group described by torchrun's environment; False when not under torchrun."""
    if not launched_by_torchrun():
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def shard_indices(n: int) -> list[int]:
    """The indices of ``range(n)`` this rank evaluates (DistributedSampler order, padding dropped)."""
    if not active():
        return list(range(n))
    from torch.utils.data import DistributedSampler

    world, r = dist.get_world_size(), dist.get_rank()
    sampler = DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False, drop_last=False)
    # position k of this rank's share is element r + k * world of the padded list; past n it is padding
    return [idx for k, idx in enumerate(sampler) if r + k * world < n]


def shard(*tensors: Optional[torch.Tensor]) -> tuple:
    """This rank's share of each tensor (first dimension); None passes through."""
    if not active():
        return tensors
    n = next(len(t) for t in tensors if t is not None)
    idx = torch.tensor(shard_indices(n), dtype=torch.long)
    return tuple(None if t is None else t[idx] for t in tensors)


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (identity in a single process)."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()
