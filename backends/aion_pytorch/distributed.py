"""Cross-replica mean of the batch ratio under ``torch.distributed`` (DDP, FSDP)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _differentiable_all_reduce():
    """torch's functional all-reduce where it is differentiable, else None (read once, at import).

    ``torch.distributed._functional_collectives.all_reduce`` is what torch 2.13 recommends in
    place of ``torch.distributed.nn.functional.all_reduce`` (deprecated there with a
    ``FutureWarning``, and refused under ``torch.compile``); its autograd formula (the
    backward all-reduces the gradient, "sum" only) is registered in recent torch (2.13 has
    it). Older versions (``torch>=2.4`` is allowed) have it without a gradient, and there the
    autograd-aware ``torch.distributed.nn.functional.all_reduce`` is kept. Asked of the
    dispatcher here, not in ``forward``, where ``torch.compile`` would trace the question.
    """
    if not dist.is_available():
        return None
    try:
        from torch.distributed import _functional_collectives as funcol

        if torch._C._dispatch_has_kernel_for_dispatch_key("_c10d_functional::all_reduce", "Autograd"):
            return funcol.all_reduce
    except (ImportError, AttributeError, RuntimeError):
        pass
    return None


_FUNCTIONAL_ALL_REDUCE = _differentiable_all_reduce()


def replica_mean_or_none(autograd: bool = True, group=None):
    """The mean over the ranks of ``group`` (None: the default group), or None when there is nothing to average.

    ``autograd=True`` (for ``aion_core.train_step`` under ``torch.compile``): the all-reduce
    is autograd-aware, its backward all-reduces the gradient, so each rank's ratio receives
    ``(1/N) sum_j dL_j/dr`` and the gradient equals that of one process holding the whole
    batch (spec section 7). It is torch's functional all-reduce, which ``torch.compile``
    traces. ``autograd=False`` (for the eager closed-form node, which runs the mean in its
    forward and, on the gradient, in its backward, both outside autograd): a plain
    ``dist.all_reduce`` of a copy. Measured on 2 gloo CPU ranks (torch 2.13, shared cores),
    one 0-d all-reduce took 0.29-0.34 ms that way (0.30-0.37 ms through the deprecated
    autograd function) and 0.56-0.74 ms through the functional collective's Python wrapper
    (``AsyncCollectiveTensor``), so eager training does not pay for an autograd it does not use.

    A ratio that is a ``DTensor`` (inputs sharded by tensor or sequence parallelism) is
    already the ratio of the whole tensor over its mesh: it is gathered to a plain tensor
    (``full_tensor``) first and then averaged over ``group``, the data-parallel replicas.

    A sum divided by the group's size: gloo has no AVG, and the functional all-reduce's
    backward takes "sum" only. An ``AionConfig`` with ``sync_ratio=False`` never calls it
    (:func:`aion_core.adapter.replica_mean_for`).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = group if group is not None else dist.group.WORLD
    size = dist.get_world_size(group)
    if size == 1:
        return None
    if not autograd:
        def replica_mean(r: torch.Tensor) -> torch.Tensor:
            total = _local(r).clone()
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
            return total / size
    elif _FUNCTIONAL_ALL_REDUCE is not None:
        def replica_mean(r: torch.Tensor) -> torch.Tensor:
            return _FUNCTIONAL_ALL_REDUCE(_local(r), "sum", group) / size
    else:  # pragma: no cover - torch versions whose functional all-reduce has no gradient
        def replica_mean(r: torch.Tensor) -> torch.Tensor:
            from torch.distributed.nn.functional import all_reduce

            return all_reduce(_local(r), op=dist.ReduceOp.SUM, group=group) / size

    return replica_mean


def _local(r: torch.Tensor) -> torch.Tensor:
    # A DTensor ratio (sharded inputs) as the plain tensor of its whole value; a plain one as it is.
    return r.full_tensor() if hasattr(r, "full_tensor") else r


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


def set_process_group(model: torch.nn.Module, group: dist.ProcessGroup | None) -> int:
    """Set ``process_group`` on every AION layer of ``model``: the ranks ``sync_ratio`` averages over.

    For layouts where ranks hold different layers (pipeline stages: each stage passes its
    data-parallel group, ``mesh["dp"].get_group()``) and for models built before the mesh
    exists (model zoos). None restores the default group. Returns the number of layers set.
    """
    from aion_pytorch.residual import AionResidual

    layers = [m for m in model.modules() if isinstance(m, AionResidual)]
    for layer in layers:
        layer.process_group = group
    return len(layers)


def _average_grad_over_ranks(param: torch.Tensor) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)  # (gloo has no AVG)
        param.grad.div_(dist.get_world_size())
