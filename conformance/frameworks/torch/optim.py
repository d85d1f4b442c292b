"""The shared optimizer hyper-parameters as torch.optim optimizers, their schedule, and clipping."""

from __future__ import annotations

import torch

from aion_conformance.frameworks.optimizers import AdamW, Sgd, schedule_factor


def make(spec: Sgd | AdamW, params) -> torch.optim.Optimizer:
    """``spec`` over ``params``; with ``decay_matrices_only``, two parameter groups: the
    parameters of two or more dimensions decayed, the others not."""
    if isinstance(spec, Sgd):
        return torch.optim.SGD(params, lr=spec.lr)
    if spec.decay_matrices_only:
        params = list(params)
        groups = [{"params": [p for p in params if p.ndim >= 2]},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        params = [g for g in groups if g["params"]]
    return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)


def scheduler(spec: Sgd | AdamW, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The learning-rate schedule of ``spec`` (stepped after each optimizer step), or None:
    LambdaLR sets step ``t``'s rate to ``lr * schedule_factor(schedule, t)``."""
    schedule = getattr(spec, "schedule", None)
    if schedule is None:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule_factor(schedule, step))


def clip(params, max_norm: float | None):
    """The global gradient norm before clipping (None without ``max_norm``: not computed)."""
    return None if max_norm is None else torch.nn.utils.clip_grad_norm_(params, max_norm)
