"""What a framework adapter builds on beyond the top-level :mod:`aion_core` API.

The adapters (``aion_pytorch``, ``aion_keras``, ``aion_flax``, and ``aion_torch_ops`` which
the torch-backed ones share) import :mod:`aion_core` and this module only, never a core
submodule: what they need is named here, once, and kept stable for them. A new adapter
starts from the same list.

Training steps
    :func:`scheduled_train_step`
        :func:`aion_core.train_step` on the ``k_update`` schedule, chosen on the device
        (a ``cond`` the framework supplies, else both steps and a select).
    :func:`train_forward`, :func:`train_vjp`, :class:`Saved`, :class:`Grads`
        The closed-form VJP of the training step (:mod:`aion_core.closed_form`), for a
        framework's custom-gradient op (torch's eager ``autograd.Function``).
    :func:`multiply_add`
        ``a + s * b``, the one multiply-add, which an adapter may replace by a one-kernel
        equivalent (``fma=``).
    :func:`replica_mean_for`
        The cross-replica mean a step applies (None with ``sync_ratio=False``); a custom
        backward must apply the same one to the ratio's gradient.
    :func:`alpha_from_ratio`
        alpha from the parameters and a ratio, in the ratio's (accumulation) dtype.

Blocks
    :func:`block_forward`
        An ``AionBlock``'s forward from its parts: checked input, ``LayerNorm``, branch,
        residual.

Checks
    :func:`check_dim`
        An ``AionBlock``'s feature width.
    :func:`block_shape_error`
        The shape part of :func:`aion_core.block_input_error`, for frameworks that build
        layers from shapes (Keras ``build``).

Activation checkpointing (spec section 6a)
    :class:`ReplayLog`, :func:`fingerprint`
        What a training forward read, found again when a recomputation replays it
        (:mod:`aion_core.replay`).

The portable checkpoint layout is the public :mod:`aion_core.portable`.

Examples
--------
>>> import numpy as np
>>> import aion_core as core
>>> from aion_core import adapter
>>> cfg = core.AionConfig(k_update=2)
>>> x, y = np.ones((2, 4)), np.full((2, 4), 2.0)
>>> _, state, _ = adapter.scheduled_train_step(x, y, None, np.asarray(0.1), np.asarray(0.05),
...                                            core.initial_state(np), cfg)
>>> int(state.step_count), round(float(state.ratio_ema), 6)
(1, 1.03)
"""

from __future__ import annotations

from aion_core.closed_form import Grads, Saved, train_forward, train_vjp
from aion_core.config import check_dim
from aion_core.errors import block_input_error, block_shape_error
from aion_core.replay import ReplayLog, fingerprint
from aion_core.step import alpha_from_ratio, multiply_add, replica_mean_for, scheduled_train_step

__all__ = [
    "Grads",
    "ReplayLog",
    "Saved",
    "alpha_from_ratio",
    "block_forward",
    "block_shape_error",
    "check_dim",
    "fingerprint",
    "multiply_add",
    "replica_mean_for",
    "scheduled_train_step",
    "train_forward",
    "train_vjp",
]


def block_forward(xp, x, dim: int, norm, layer, aion, **residual_kwargs):
    """``aion(x, layer(norm(x)), x_norm=norm(x), **residual_kwargs)``, ``x`` checked first.

    The pre-norm block of every adapter: the ratio is taken on ``LayerNorm(x)``. ``x`` is
    checked against the block's width ``dim`` by :func:`aion_core.block_input_error`
    (shapes and dtypes only, so the error is raised while a compiler traces).

    Examples
    --------
    >>> import numpy as np
    >>> block_forward(np, np.ones((2, 3)), 4, None, None, None)
    Traceback (most recent call last):
    ...
    ValueError: x.shape[-1] must equal dim=4, got shape (2, 3)
    """
    error = block_input_error(xp, x, dim)
    if error is not None:
        raise error
    x_norm = norm(x)
    return aion(x, layer(x_norm), x_norm=x_norm, **residual_kwargs)
