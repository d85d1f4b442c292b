"""Cross-replica mean of the batch ratio under ``torch.distributed`` (DDP, FSDP)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def replica_mean_or_none():
    """The mean over ranks of the default group, or None when not running distributed.

    The all-reduce is autograd-aware (its backward all-reduces the gradient), so the
    gradient equals that of one process holding the whole batch.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    world = dist.get_world_size()

    def replica_mean(r: torch.Tensor) -> torch.Tensor:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(r, op=dist.ReduceOp.SUM) / world

    return replica_mean
