"""The shared optimizer hyper-parameters as keras.optimizers optimizers, and their step.

Keras' own optimizers take the update, so the harness checks what a Keras user trains
with. Two differences from torch and optax are made up for here: Keras' AdamW adds epsilon
at a different place (:func:`apply`), and TensorFlow hands the embedding's gradient over as
``IndexedSlices`` (:func:`dense`). Keras' AdamW decays as torch's does, decoupled and by the
scheduled rate (``p - p * weight_decay * lr_t``, before the Adam step); its schedule is
evaluated at the optimizer's 0-based ``iterations``, as torch's LambdaLR steps.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from aion_conformance.frameworks.keras.arrays import BACKEND
from aion_conformance.frameworks.optimizers import AdamW, Schedule, Sgd, schedule_factor


class Scheduled(keras.optimizers.schedules.LearningRateSchedule):
    """``lr * schedule_factor(schedule, step)`` as a table (computed in float64 as torch's
    LambdaLR does, then float32), indexed by the optimizer's 0-based step; past ``total``
    the factor stays ``final``."""

    def __init__(self, lr: float, schedule: Schedule):
        self.lr, self.schedule = lr, schedule
        self.table = [lr * schedule_factor(schedule, t) for t in range(max(schedule.total, schedule.warmup) + 1)]

    def __call__(self, step):
        index = ops.minimum(ops.cast(step, "int32"), len(self.table) - 1)
        return ops.take(ops.convert_to_tensor(self.table, "float32"), index)

    def get_config(self):
        return {"lr": self.lr, "schedule": self.schedule}


def make(spec: Sgd | AdamW, clip: float | None = None, variables=()) -> keras.optimizers.Optimizer:
    """The Keras optimizer of ``spec``; ``clip``: the global gradient norm it clips to;
    ``variables``: what it trains, for ``decay_matrices_only`` (the others excluded from
    the decay before the optimizer is built)."""
    if isinstance(spec, Sgd):
        return keras.optimizers.SGD(spec.lr, global_clipnorm=clip)
    lr = spec.lr if spec.schedule is None else Scheduled(spec.lr, spec.schedule)
    optimizer = keras.optimizers.AdamW(lr, weight_decay=spec.weight_decay, beta_1=spec.betas[0],
                                       beta_2=spec.betas[1], epsilon=spec.eps, global_clipnorm=clip)
    if spec.decay_matrices_only:
        optimizer.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) < 2])
    return optimizer


def dense(grads) -> list:
    """The gradients as dense tensors.

    TensorFlow returns an embedding's gradient as ``IndexedSlices`` with a row per looked-up
    token, repeated tokens repeated: its norm taken row by row (``keras.ops`` keeps only
    the slices' values) would not be the gradient's. Dense, as torch and JAX have it, the
    norm (and so the clipping) is the true one. The other backends' gradients are dense.
    """
    if BACKEND != "tensorflow":
        return list(grads)
    import tensorflow as tf

    return [tf.convert_to_tensor(g) for g in grads]


def global_norm(grads) -> float:
    """The global L2 norm of dense ``grads``: what ``global_clipnorm`` clips."""
    return float(ops.convert_to_numpy(ops.sqrt(sum(ops.sum(ops.square(g)) for g in grads))))


def apply(optimizer: keras.optimizers.Optimizer, spec: Sgd | AdamW, grads, variables) -> None:
    """One step of ``optimizer`` (made by :func:`make` from ``spec``) on ``variables``.

    Keras' AdamW adds epsilon to ``sqrt(v)`` before the bias correction of ``sqrt(v)``,
    torch and optax after it: ``epsilon * sqrt(1 - beta2**step)`` here takes their step
    exactly (``step`` counted from 1, as the optimizer's ``iterations + 1``).
    """
    if isinstance(spec, AdamW):
        step = int(ops.convert_to_numpy(optimizer.iterations)) + 1
        optimizer.epsilon = spec.eps * math.sqrt(1.0 - spec.betas[1] ** step)
    optimizer.apply_gradients(zip(grads, variables))
