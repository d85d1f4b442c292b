"""The optimizers the problems train with, as framework-neutral hyper-parameters.

Each kit's ``optim`` module turns these into its framework's own optimizer (torch.optim,
keras.optimizers, optax), so every framework takes the same update from one set of
numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sgd:
    """``p <- p - lr * g``."""

    lr: float


@dataclass(frozen=True)
class AdamW:
    """AdamW with torch's and optax's epsilon placement (``eps`` added after the bias
    correction of ``sqrt(v)``); no weight decay unless given."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0


#: Loss scale of float16 training in every framework (torch's GradScaler start, Keras and Flax
#: float16 executions): small gradients would underflow without it. Keras' LossScaleOptimizer
#: starts at 2**15, which overflows float16 gradients of the unit-scale conformance cases.
FLOAT16_LOSS_SCALE = 2.0**10
