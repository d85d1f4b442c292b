"""The one place where the MLX adapter calls :mod:`aion_core`.

:func:`aion_apply` takes parameters and state in and gives the output and the new state
out, so it runs unchanged eagerly, under :func:`mlx.core.compile` and inside
:func:`mlx.nn.value_and_grad`. MLX has no traced conditional: with ``k_update > 1`` both
the update and the hold step are computed and one is selected on the device
(:func:`aion_core.adapter.scheduled_train_step`), so no Python branch reads an array. The
namespace handed to the core is :mod:`aion_mlx.namespace` (``mlx.core`` with a ``where``
whose gradient selects).
"""

from __future__ import annotations

import mlx.core as mx

import aion_core as core
from aion_core import adapter
from aion_mlx import namespace


def replica_mean_fn(group: mx.distributed.Group | None = None):
    """The ``replica_mean`` hook of :func:`aion_core.train_step` over an ``mx.distributed`` group.

    Parameters
    ----------
    group : mlx.core.distributed.Group or None
        The data-parallel processes (None: the global group, ``mx.distributed.init()``).

    Returns
    -------
    callable or None
        ``r -> all_sum(r) / N``, whose gradient is ``all_sum(g) / N`` (each process's
        ratio receives ``(1/N) sum_j dL_j/dr``, spec section 7; MLX's own ``all_sum``
        passes the gradient through unreduced); None for a group of one process.
    """
    if not mx.distributed.is_available():
        return None
    group = group if group is not None else mx.distributed.init()
    size = group.size()
    if size == 1:
        return None

    @mx.custom_function
    def replica_mean(r):
        return mx.distributed.all_sum(r, group=group) / size

    @replica_mean.vjp
    def _(primals, cotangent, output):
        return mx.distributed.all_sum(cotangent, group=group) / size

    return replica_mean


def require_arrays(**named) -> None:
    """Raise a TypeError naming the first argument that is neither None nor an ``mlx.core.array``.

    >>> import numpy as np
    >>> require_arrays(x=np.ones(2))
    Traceback (most recent call last):
    ...
    TypeError: x must be an mlx.core.array, got numpy.ndarray
    """
    for name, t in named.items():
        if t is not None and not isinstance(t, mx.array):
            raise TypeError(f"{name} must be an mlx.core.array, got {type(t).__module__}.{type(t).__qualname__}")


def aion_apply(x, y, x_norm, alpha0, beta, state: core.AionState, config: core.AionConfig, *,
               train: bool, group: mx.distributed.Group | None = None):
    """One AION forward through :mod:`aion_core`.

    Parameters
    ----------
    x, y : mlx.core.array
        Residual input (None for the scale alone) and branch output, shape ``(..., D)``.
    x_norm : mlx.core.array or None
        Normalised ``x`` for the ratio's denominator; ``x`` is used if None.
    alpha0, beta : mlx.core.array
        The 0-d float32 trainable parameters.
    state : aion_core.AionState
        Running state before the call.
    config : aion_core.AionConfig
        Validated hyper-parameters.
    train : bool
        Training forward (ratio measured, state advanced) or eval forward (stored ratio,
        state returned unchanged).
    group : mlx.core.distributed.Group or None
        Data-parallel group over which the batch ratio is averaged (``config.sync_ratio``).

    Returns
    -------
    out : mlx.core.array
    new_state : aion_core.AionState
    stats : dict of 0-d mlx.core.array
        ``alpha``, ``ratio``, ``ratio_ema``.

    Raises
    ------
    TypeError, ValueError
        An input that is no ``mlx.core.array``, or bad inputs (:func:`aion_core.check_inputs`),
        before any state is produced.

    Examples
    --------
    >>> import mlx.core as mx
    >>> import aion_core as core
    >>> out, state, _ = aion_apply(mx.ones((2, 4)), mx.full((2, 4), 2.0), None, mx.array(0.1),
    ...                            mx.array(0.05), core.initial_state(mx), core.AionConfig(), train=True)
    >>> round(out[0, 0].item(), 4), state.step_count.item()
    (1.1902, 1)
    """
    require_arrays(x=x, y=y, x_norm=x_norm)
    if not train:
        out, stats = core.eval_step(x, y, alpha0, beta, state, x_norm=x_norm, xp=namespace,
                                    stop_gradient=mx.stop_gradient)
        return out, state, stats
    replica_mean = replica_mean_fn(group) if config.sync_ratio else None
    return adapter.scheduled_train_step(x, y, x_norm, alpha0, beta, state, config, xp=namespace,
                                        replica_mean=replica_mean, stop_gradient=mx.stop_gradient)
