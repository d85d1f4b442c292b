"""The one place where the Flax adapters call :mod:`aion_core` (shared by NNX and Linen).

Both module flavours reduce to :func:`aion_apply`: parameters and state in, output and
new state out. Everything here is traceable: no Python branch reads an array value,
and the ``k_update`` schedule is a :func:`jax.lax.cond` on the traced step counter
(:func:`aion_core.adapter.scheduled_train_step`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import aion_core as core
from aion_core import adapter


def replica_mean_fn(axis_name):
    """The ``replica_mean`` hook of :func:`aion_core.train_step` for a named mapped axis.

    Parameters
    ----------
    axis_name : str, tuple of str or None
        The axis of ``shard_map`` / ``pmap`` that splits the batch; None when the
        batch is not split by a named axis (e.g. plain ``jit`` with sharded inputs,
        where the mean over rows is already global).

    Returns
    -------
    callable or None
        ``r -> jax.lax.pmean(r, axis_name)``, or None.
    """
    if axis_name is None:
        return None
    return lambda ratio: jax.lax.pmean(ratio, axis_name)


def cast_floating(dtype, *arrays):
    """``arrays`` with the floating ones cast to ``dtype`` (None: unchanged), as Flax modules
    treat their ``dtype`` argument and Keras its compute dtype; others are left for the
    input checks to refuse.

    >>> import jax.numpy as jnp
    >>> [a.dtype for a in cast_floating(jnp.bfloat16, jnp.ones(2), jnp.ones(2, jnp.int32))]
    [dtype(bfloat16), dtype('int32')]
    """
    if dtype is None:
        return arrays
    return tuple(a.astype(dtype) if a is not None and jnp.issubdtype(a.dtype, jnp.floating) else a
                 for a in arrays)


def aion_apply(x, y, x_norm, alpha0, beta, state: core.AionState, config: core.AionConfig, *,
               train: bool, axis_name=None):
    """One AION forward through :mod:`aion_core`.

    Parameters
    ----------
    x, y : jax.Array
        Residual input and branch output, same shape ``(..., D)``.
    x_norm : jax.Array or None
        Normalised ``x`` for the ratio's denominator; ``x`` is used if None.
    alpha0, beta : jax.Array
        The 0-d float32 trainable parameters.
    state : aion_core.AionState
        Running state before the call.
    config : aion_core.AionConfig
        Validated hyper-parameters; with ``sync_ratio=False`` the ratio is not averaged
        over ``axis_name`` (each shard keeps its own).
    train : bool
        Training forward (ratio measured, state advanced) or eval forward (stored ratio,
        state returned unchanged). Static.
    axis_name : str or None
        Named mapped axis over which the batch ratio is averaged (when ``config.sync_ratio``).

    Returns
    -------
    out : jax.Array
    new_state : aion_core.AionState
    stats : dict of 0-d jax.Array
        ``alpha``, ``ratio``, ``ratio_ema``.

    Raises
    ------
    TypeError, ValueError
        Bad inputs (from :func:`aion_core.check_inputs`), raised while tracing, before
        any state is produced.
    """
    if not train:
        out, stats = core.eval_step(x, y, alpha0, beta, state, x_norm=x_norm, xp=jnp,
                                    stop_gradient=jax.lax.stop_gradient)
        return out, state, stats
    return adapter.scheduled_train_step(x, y, x_norm, alpha0, beta, state, config, xp=jnp,
                                        replica_mean=replica_mean_fn(axis_name),
                                        stop_gradient=jax.lax.stop_gradient, cond=jax.lax.cond)
