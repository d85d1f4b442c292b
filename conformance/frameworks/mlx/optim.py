"""The shared optimizer hyper-parameters as :mod:`mlx.optimizers` optimizers, and clipping.

MLX's own optimizers take the update, so the harness checks what an MLX user trains with.
Two of MLX's defaults differ from torch's and optax's and are set here: its ``Adam`` and
``AdamW`` skip the bias correction unless asked (``bias_correction=True``: then
``m / (1 - beta1**t)`` over ``sqrt(v) / sqrt(1 - beta2**t) + eps``, epsilon after the
correction as :class:`~aion_conformance.frameworks.optimizers.AdamW` says), and its
``AdamW`` decays weights by 0.01 unless told (the shared spec says 0). The decay itself is
torch's: ``p * (1 - lr * weight_decay)`` before the Adam step, ``lr`` the scheduled rate
(MLX evaluates a schedule at its 0-based step before each update, as torch's LambdaLR).
MLX's AdamW has no per-parameter decay: :class:`MatrixDecayAdamW` adds
``decay_matrices_only``.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optimizers

from aion_conformance.frameworks.optimizers import AdamW, Schedule, Sgd, schedule_factor


class MatrixDecayAdamW(optimizers.AdamW):
    """MLX's AdamW decaying the parameters of two or more dimensions alone; the others take
    Adam's step undecayed (AdamW's with ``weight_decay`` 0: ``p * 1``, exactly)."""

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict):
        if parameter.ndim >= 2:
            return super().apply_single(gradient, parameter, state)
        return optimizers.Adam.apply_single(self, gradient, parameter, state)


def learning_rate(lr: float, schedule: Schedule | None):
    """``lr``, or MLX's schedule of it: a table of ``lr * schedule_factor(schedule, t)``
    (computed in float64 as torch's LambdaLR does, then float32), indexed by the optimizer's
    0-based step; past ``total`` the factor stays ``final``."""
    if schedule is None:
        return lr
    table = mx.array([lr * schedule_factor(schedule, t) for t in range(max(schedule.total, schedule.warmup) + 1)],
                     mx.float32)
    return lambda step: table[mx.minimum(step, table.shape[0] - 1).astype(mx.int32)]


def make(spec: Sgd | AdamW) -> optimizers.Optimizer:
    """The MLX optimizer of ``spec``."""
    if isinstance(spec, Sgd):
        return optimizers.SGD(learning_rate=spec.lr)
    cls = MatrixDecayAdamW if spec.decay_matrices_only else optimizers.AdamW
    return cls(learning_rate=learning_rate(spec.lr, spec.schedule), betas=list(spec.betas), eps=spec.eps,
               weight_decay=spec.weight_decay, bias_correction=True)


def clip(grads, max_norm: float | None):
    """``(grads, norm)``: the gradients clipped to global norm ``max_norm`` and their norm
    before clipping (``grads`` as given and None without ``max_norm``: not computed).

    MLX's :func:`~mlx.optimizers.clip_grad_norm` scales by ``max_norm / (norm + 1e-6)``
    when that is below 1, as torch's ``clip_grad_norm_``.
    """
    if max_norm is None:
        return grads, None
    return optimizers.clip_grad_norm(grads, max_norm)
