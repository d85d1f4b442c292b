"""The formulas of AION: energy, per-row ratio, batch ratio, alpha (spec section "Math").

Energies and ratios are computed in the accumulation dtype: float64 for float64
inputs, float32 for every other floating dtype (float16, bfloat16, float32), so a
low-precision input never overflows where float32 would not and epsilon never
underflows. Both ways of training, autodiff of :func:`aion_core.train_step` and the
closed form of :mod:`aion_core.closed_form`, form the ratio with :func:`row_ratios`.
"""

from __future__ import annotations


def accumulation_dtype(xp, *dtypes):
    """float64 if any of ``dtypes`` is float64, else float32."""
    return xp.float64 if any(d == xp.float64 for d in dtypes) else xp.float32


def cast(xp, t, dtype):
    """``t`` in ``dtype``: ``t`` itself when it already is (no op is recorded or dispatched).

    >>> import numpy as np
    >>> a = np.ones(2)
    >>> cast(np, a, np.float64) is a, cast(np, a, np.float32).dtype
    (True, dtype('float32'))
    """
    return t if t.dtype == dtype else xp.astype(t, dtype)


def energy(xp, t, acc_dtype=None):
    """Mean of squares over the last axis, one value per row, in the accumulation dtype.

    Examples
    --------
    >>> import numpy as np
    >>> energy(np, np.array([[1.0, 3.0], [2.0, 2.0]]))
    array([5., 4.])
    """
    acc_dtype = acc_dtype or accumulation_dtype(xp, t.dtype)
    t = cast(xp, t, acc_dtype)
    return xp.mean(t * t, axis=-1)


def where_finite(xp, finite, value, fallback):
    """``value`` where ``finite``, ``fallback`` elsewhere: how no gradient passes through a non-finite ratio.

    Spec sections 5 and 7: a ratio that is not finite (an overflowed energy, a NaN) reaches
    neither the state nor any gradient. A select, never a product with a 0/1 mask: the
    backward of ``mask * value`` multiplies the incoming gradient by ``value``, and
    ``0 * inf`` is NaN. Where an op's own backward would multiply by a non-finite operand
    (the division of :func:`row_ratios`), the operands are selected before the op and the
    result after it. A hand-written backward (:mod:`aion_core.closed_form`) selects its
    ratio terms the same way.

    >>> import numpy as np
    >>> where_finite(np, np.array([True, False]), np.array([2.0, np.inf]), 0.0)
    array([2., 0.])
    """
    return xp.where(finite, value, fallback)


def row_ratios(xp, x_ref, y, epsilon: float, acc_dtype=None, stop_gradient=None):
    """Each row's ``E[y] / (E[x_ref] + epsilon)`` and its denominator ``E[x_ref] + epsilon``.

    ``epsilon`` is added in the accumulation dtype, after the energy is formed. That dtype
    is ``acc_dtype`` if given (a float64 ``x`` makes it float64 even when ``x_ref`` is
    ``x_norm``: spec section 4), else that of ``x_ref`` and ``y``.

    ``stop_gradient`` (autodiff frameworks): rows whose ratio is not finite (a float32
    square past 3.4e38, an energy over one that underflowed, a NaN) take it through it. The
    guard of spec section 5 then holds the step and sends the ratio a zero gradient, which
    the division's backward would otherwise multiply by that row's inf (``0 * inf = NaN``
    into ``x_ref``'s gradient). The values are the same either way.

    Examples
    --------
    >>> import numpy as np
    >>> per_row, denominator = row_ratios(np, np.ones((2, 4)), np.full((2, 4), 3.0), 0.5)
    >>> per_row, denominator
    (array([6., 6.]), array([1.5, 1.5]))
    """
    acc = acc_dtype or accumulation_dtype(xp, x_ref.dtype, y.dtype)
    numerator, denominator = energy(xp, y, acc), energy(xp, x_ref, acc) + epsilon
    per_row = numerator / denominator
    if stop_gradient is not None:
        finite = xp.isfinite(stop_gradient(per_row))
        safe = where_finite(xp, finite, numerator, 0.0) / where_finite(xp, finite, denominator, 1.0)
        per_row = where_finite(xp, finite, safe, stop_gradient(per_row))
    return per_row, denominator


def batch_ratio(xp, x_ref, y, epsilon: float, acc_dtype=None, stop_gradient=None):
    """``mean over rows of E[y] / (E[x_ref] + epsilon)``: one scalar for the batch (:func:`row_ratios`).

    Examples
    --------
    >>> import numpy as np
    >>> float(batch_ratio(np, np.ones((2, 4)), np.full((2, 4), 3.0), 0.5))
    6.0
    """
    return xp.mean(row_ratios(xp, x_ref, y, epsilon, acc_dtype, stop_gradient)[0])


def compute_alpha(alpha0, beta, ratio):
    """``alpha0 / (1 + beta * ratio)``; works on arrays and Python floats alike.

    Examples
    --------
    >>> compute_alpha(0.1, 0.05, 2.0)
    0.09090909090909091
    """
    return alpha0 / (1.0 + beta * ratio)
