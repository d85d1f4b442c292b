"""The shared optimizer hyper-parameters as optax transformations, and clipping.

Clipping is the first link of the chain, as torch clips ``.grad`` before its optimizer
steps; :func:`grad_norm` is the global norm it clips by, as torch's ``clip_grad_norm_``
returns it. optax's AdamW decays as torch's does, decoupled and by the scheduled rate:
``-lr_t * (adam + weight_decay * p)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from aion_conformance.frameworks.optimizers import AdamW, Schedule, Sgd, schedule_factor


def learning_rate(lr: float, schedule: Schedule | None):
    """``lr``, or optax's schedule of it: a table of ``lr * schedule_factor(schedule, t)``
    (computed in float64 as torch's LambdaLR does, then float32), indexed by optax's 0-based
    update count; past ``total`` the factor stays ``final``."""
    if schedule is None:
        return lr
    table = jnp.asarray([lr * schedule_factor(schedule, t) for t in range(max(schedule.total, schedule.warmup) + 1)],
                        jnp.float32)
    return lambda count: table[jnp.minimum(count, table.shape[0] - 1)]


def _matrices(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make(spec: Sgd | AdamW, clip: float | None = None) -> optax.GradientTransformation:
    """``spec`` as optax's optimizer, after ``clip_by_global_norm(clip)`` when clipped."""
    if isinstance(spec, Sgd):
        tx = optax.sgd(spec.lr)
    else:
        tx = optax.adamw(learning_rate(spec.lr, spec.schedule), b1=spec.betas[0], b2=spec.betas[1], eps=spec.eps,
                         weight_decay=spec.weight_decay, mask=_matrices if spec.decay_matrices_only else None)
    return tx if clip is None else optax.chain(optax.clip_by_global_norm(clip), tx)


def grad_norm(grads, clip: float | None):
    """The global gradient norm before clipping (None without ``clip``: not computed)."""
    return None if clip is None else optax.global_norm(grads)


def step(tx: optax.GradientTransformation, grads, opt_state, params):
    """One update of ``params`` by ``tx``: ``(new params, new optimizer state)``."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
