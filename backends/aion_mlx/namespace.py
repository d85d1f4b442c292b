"""``mlx.core`` as :mod:`aion_core`'s array namespace, with a ``where`` whose gradient selects.

``mlx.core`` arrays carry ``__array_namespace__`` and the core runs on ``mlx.core`` as it is,
except for one thing: the gradient of ``mx.where(c, a, b)`` is the cotangent times the mask,
so a cotangent that is infinite where ``c`` is False gives ``inf * 0 = NaN`` for ``a`` instead
of 0. The core's guard (spec section 7: no gradient through a non-finite ratio) and its
update/hold select rely on the branch not taken receiving exactly zero. Every other name is
``mlx.core``'s.

>>> import mlx.core as mx
>>> from aion_mlx import namespace as xp
>>> c = mx.array([True, False])
>>> mx.grad(lambda a: (xp.where(c, a, 0.0) * mx.array([1.0, mx.inf])).sum())(mx.ones(2))
array([1, 0], dtype=float32)
>>> mx.isnan(mx.grad(lambda a: (mx.where(c, a, 0.0) * mx.array([1.0, mx.inf])).sum())(mx.ones(2))).tolist()
[False, True]
"""

from __future__ import annotations

import mlx.core as mx


def __getattr__(name: str):
    return getattr(mx, name)


def _sum_to(g: mx.array, like: mx.array) -> mx.array:
    """``g`` summed over the axes along which ``like`` was broadcast, in ``like``'s dtype."""
    lead = g.ndim - like.ndim
    axes = [*range(lead), *(lead + i for i, n in enumerate(like.shape) if n == 1 and g.shape[lead + i] != 1)]
    g = g.sum(axis=axes, keepdims=True) if axes else g
    return g.reshape(like.shape).astype(like.dtype)


@mx.custom_function
def _select(condition, x1, x2):
    return mx.where(condition, x1, x2)


@_select.vjp
def _select_vjp(primals, cotangent, output):
    condition, x1, x2 = primals
    zero = mx.zeros_like(cotangent)
    return (mx.zeros(condition.shape, mx.float32), _sum_to(mx.where(condition, cotangent, zero), x1),
            _sum_to(mx.where(condition, zero, cotangent), x2))


def where(condition, x1, x2, /):
    """Array-API ``where``; the cotangent reaches ``x1`` where ``condition``, ``x2`` elsewhere, and
    is exactly 0 on the other side, whatever its value. A Python scalar takes the other's dtype."""
    if not isinstance(x1, mx.array):
        x1 = mx.array(x1, dtype=x2.dtype if isinstance(x2, mx.array) else None)
    if not isinstance(x2, mx.array):
        x2 = mx.array(x2, dtype=x1.dtype)
    return _select(condition, x1, x2)
