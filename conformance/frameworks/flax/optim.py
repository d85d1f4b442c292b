"""The shared optimizer hyper-parameters as optax transformations, and clipping.

Clipping is the first link of the chain, as torch clips ``.grad`` before its optimizer
steps; :func:`grad_norm` is the global norm it clips by, as torch's ``clip_grad_norm_``
returns it.
"""

from __future__ import annotations

import optax

from aion_conformance.frameworks.optimizers import AdamW, Sgd


def make(spec: Sgd | AdamW, clip: float | None = None) -> optax.GradientTransformation:
    """``spec`` as optax's optimizer, after ``clip_by_global_norm(clip)`` when clipped."""
    if isinstance(spec, Sgd):
        tx = optax.sgd(spec.lr)
    else:
        tx = optax.adamw(spec.lr, b1=spec.betas[0], b2=spec.betas[1], eps=spec.eps,
                         weight_decay=spec.weight_decay)
    return tx if clip is None else optax.chain(optax.clip_by_global_norm(clip), tx)


def grad_norm(grads, clip: float | None):
    """The global gradient norm before clipping (None without ``clip``: not computed)."""
    return None if clip is None else optax.global_norm(grads)


def step(tx: optax.GradientTransformation, grads, opt_state, params):
    """One update of ``params`` by ``tx``: ``(new params, new optimizer state)``."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
