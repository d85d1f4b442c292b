"""The optimizers the problems train with, as framework-neutral hyper-parameters.

Each kit's ``optim`` module turns these into its framework's own optimizer (torch.optim,
keras.optimizers, optax), so every framework takes the same update from one set of
numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Sgd:
    """``p <- p - lr * g``."""

    lr: float


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up then cosine decay: the learning rate of step ``t`` (0-based) is
    ``lr * factor(t)``, see :func:`schedule_factor`."""

    warmup: int
    total: int
    final: float = 0.1


def schedule_factor(schedule: Schedule | None, step: int) -> float:
    """The learning-rate factor of 0-based ``step``: ``(step + 1) / warmup`` during warm-up,
    then cosine from 1 to ``final`` at ``total - 1`` (``final`` after it); 1 without a schedule.

    >>> s = Schedule(warmup=2, total=6, final=0.1)
    >>> [round(schedule_factor(s, t), 4) for t in range(7)]
    [0.5, 1.0, 1.0, 0.775, 0.325, 0.1, 0.1]
    """
    if schedule is None:
        return 1.0
    if step < schedule.warmup:
        return (step + 1) / schedule.warmup
    span = max(schedule.total - 1 - schedule.warmup, 1)
    progress = min((step - schedule.warmup) / span, 1.0)
    return schedule.final + (1 - schedule.final) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class AdamW:
    """AdamW with torch's and optax's epsilon placement (``eps`` added after the bias
    correction of ``sqrt(v)``); no weight decay unless given.

    ``weight_decay`` applies to every parameter, or with ``decay_matrices_only`` to the
    parameters of two or more dimensions alone (kernels and embeddings; not biases, norm
    scales, LayerScale's gamma or AION's alpha0 and beta), as GPT training usually does.
    ``schedule`` multiplies ``lr`` per step (None: constant).
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_matrices_only: bool = False
    schedule: Schedule | None = None


#: Loss scale of float16 training in every framework (torch's GradScaler start, Keras and Flax
#: float16 executions): small gradients would underflow without it. Keras' LossScaleOptimizer
#: starts at 2**15, which overflows float16 gradients of the unit-scale conformance cases.
FLOAT16_LOSS_SCALE = 2.0**10
