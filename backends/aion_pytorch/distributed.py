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


def fsdp_ignored_params(model: torch.nn.Module) -> set[torch.nn.Parameter]:
    """AION's scalar parameters, for ``fully_shard(..., ignored_params=...)`` (FSDP2).

    FSDP2 refuses 0-d parameters ("fully_shard doesn't support scalar parameters"), and
    ``alpha0`` and ``beta`` are 0-d (spec section 2; aion-torch 1.0.2's checkpoints). Left
    out of FSDP they stay whole, float32, on every rank; this registers a hook on each that
    averages its gradient over the ranks after every backward, as FSDP averages the
    others', so every rank takes the same optimizer step as one process holding the whole
    batch (tests/torch/test_ddp.py). Call it once, before training.
    """
    from aion_pytorch.residual import AionResidual

    params = {p for m in model.modules() if isinstance(m, AionResidual) for p in (m.alpha0, m.beta)}
    for p in params:
        if not getattr(p, "_aion_grad_averaged", False):
            p.register_post_accumulate_grad_hook(_average_grad_over_ranks)
            p._aion_grad_averaged = True
    return params


def _average_grad_over_ranks(param: torch.Tensor) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)  # (gloo has no AVG)
        param.grad.div_(dist.get_world_size())
