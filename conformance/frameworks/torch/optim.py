"""The shared optimizer hyper-parameters as torch.optim optimizers, and clipping."""

from __future__ import annotations

import torch

from aion_conformance.frameworks.optimizers import AdamW, Sgd


def make(spec: Sgd | AdamW, params) -> torch.optim.Optimizer:
    if isinstance(spec, Sgd):
        return torch.optim.SGD(params, lr=spec.lr)
    return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)


def clip(params, max_norm: float | None):
    """The global gradient norm before clipping (None without ``max_norm``: not computed)."""
    return None if max_norm is None else torch.nn.utils.clip_grad_norm_(params, max_norm)
