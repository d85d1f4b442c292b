"""The training step's closed-form VJP: a forward that keeps what its backward needs, and that backward written out.

Not a fused kernel: the same array-API ops as :func:`aion_core.train_step`, run outside
autodiff, and the chain rule of spec section 7 by hand. For frameworks whose eager autodiff
records every small op (torch), most of AION's cost is op count: :func:`aion_core.train_step`
records some twenty nodes per layer, an adapter's custom-gradient op built on
:func:`train_forward` and :func:`train_vjp` one. The forward runs the ratio
(:func:`aion_core.math.row_ratios`) and the update/hold step (:func:`aion_core.step.advance`)
that :func:`aion_core.train_step` runs, so the two paths give the same forward bit for bit.

Full-tensor passes (reads and writes of ``(..., D)`` arrays) on an update step with ``x_norm``:

- forward: ``E[x_ref]`` and ``E[y]`` (one read each, plus the squares' temporary that
  ``mean(t * t)`` writes and reads back), ``out = x + alpha * y``;
- backward: ``sum(dout * y)`` for alpha, ``dy = alpha * dout + c_y * y``, ``dx_ref = c_x * x_ref``
  (``c_y``, ``c_x`` one number per row); ``dx = dout`` is passed through, not copied.

Examples
--------
>>> import numpy as np
>>> import aion_core as core
>>> cfg = core.AionConfig(alpha0=0.1, beta=0.05)
>>> x, y = np.ones((2, 4)), np.full((2, 4), 2.0)
>>> a0, b = np.float32(0.1), np.float32(0.05)
>>> out, state, stats, saved = train_forward(x, y, None, a0, b, core.initial_state(np), cfg, xp=np)
>>> round(float(stats["alpha"]), 6)  # 0.1 / (1 + 0.05 * r_s), r_s = 0.99 * 1 + 0.01 * 4
0.095102
>>> grads = train_vjp(saved, np.ones_like(out), xp=np)
>>> round(float(grads.alpha0), 4), round(float(grads.x[0, 0]), 6), round(float(grads.y[0, 0]), 6)
(15.2164, 1.000724, 0.09474)
"""

from __future__ import annotations

import math
from typing import NamedTuple

from array_api_compat import array_namespace

from aion_core.config import AionConfig
from aion_core.errors import check_inputs
from aion_core.math import cast, row_ratios, where_finite
from aion_core.state import AionState
from aion_core.step import _acc, _dtype, advance, multiply_add, output_dtype


class Saved(NamedTuple):
    """What :func:`train_vjp` needs from the forward: the inputs it reads and a few numbers.

    ``denominator`` (``E[x_ref] + epsilon``) and ``per_row`` (``E[y] / denominator``) are one
    value per row, None on a hold step; ``per_row`` is 0 where the ratio was guarded (so a
    row whose energy overflowed carries no ``0 * inf`` into the gradient). ``ratio_slope`` is
    ``d r_s / d r``: ``1 - gamma`` (1 when ``gamma = 1``) on a finite update step, else 0.
    ``x_ref_is_x`` says that the ratio's denominator is ``x`` itself (no ``x_norm``);
    ``x_dtype`` is None in the scale-only form (no ``x``, no gradient for it).
    ``alpha`` (and so the multiply-add and the gradients) is in the accumulation dtype.
    """

    x_dtype: object
    x_ref_is_x: bool
    y: object
    x_ref: object
    denominator: object
    per_row: object
    ratio_slope: object
    alpha0: object
    beta: object
    r_s: object
    alpha: object


class Grads(NamedTuple):
    """Gradients of the loss with respect to each input of :func:`train_forward`, in its dtype.

    ``x_norm`` is None when no ``x_norm`` was given; ``alpha0`` and ``beta`` are in the
    accumulation dtype (cast them to the parameters' dtype).
    """

    x: object
    y: object
    x_norm: object
    alpha0: object
    beta: object


def train_forward(x, y, x_norm, alpha0, beta, state: AionState, config: AionConfig, *,
                  xp=None, update=True, replica_mean=None, fma=multiply_add, check=True):
    """:func:`aion_core.train_step` without autodiff, plus the :class:`Saved` values for :func:`train_vjp`.

    Same arguments and first three results as :func:`aion_core.train_step`; nothing here
    needs a stop-gradient (the caller runs it outside autodiff). ``replica_mean`` is not
    called when ``config.sync_ratio`` is False; :func:`train_vjp` must be given the one this
    used, ``replica_mean_for(config, replica_mean)``: the mean's gradient is the mean of the
    gradients. ``fma`` is :func:`aion_core.adapter.multiply_add` or an adapter's one-kernel
    equivalent; ``check=False`` for a caller that has checked the inputs (each call checks once).
    """
    xp = xp or array_namespace(x, y)
    if check:
        check_inputs(xp, x, y, x_norm)
    acc = _acc(xp, x, y, x_norm)
    x_ref = x if x_norm is None else x_norm
    r = per_row = denominator = ratio_slope = None
    if update:
        per_row, denominator = row_ratios(xp, x_ref, y, config.epsilon, acc)
        r = xp.mean(per_row)  # math.batch_ratio, keeping the rows for the backward
    out, new_state, stats, (finite, r_s, alpha) = advance(xp, x, y, r, alpha0, beta, state, config, acc,
                                                          output_dtype(xp, _dtype(x), y.dtype),
                                                          replica_mean=replica_mean, fma=fma)
    if update:
        slope = 1.0 if config.ema_gamma == 1.0 else 1.0 - config.ema_gamma
        ratio_slope = cast(xp, finite, acc) * slope  # d r_s / d r: 0 where the guard held the step
        per_row = where_finite(xp, finite, per_row, xp.zeros_like(per_row))
    saved = Saved(_dtype(x), x_norm is None, y, x_ref if update else None, denominator, per_row, ratio_slope,
                  cast(xp, alpha0, acc), cast(xp, beta, acc), r_s, alpha)
    return out, new_state, stats, saved


def train_vjp(saved: Saved, dout, *, xp=None, replica_mean=None, fma=multiply_add) -> Grads:
    """The gradients of :func:`train_forward`'s ``out`` given ``dout`` (spec section 7), in closed form.

    With ``q = 1 + beta * r_s`` and ``g = sum(dout * y)`` (in the multiply-add's dtype):
    ``d alpha0 = g / q``, ``d beta = -g * alpha * r_s / q``, ``d r = -g * alpha * beta / q * ratio_slope``
    (then ``replica_mean``'d), and with ``R`` rows of ``D`` features,
    ``dy = alpha * dout + 2 d r / (R D) / denominator * y``,
    ``dx_ref = -2 d r / (R D) * per_row / denominator * x_ref``, ``dx = dout`` (+ ``dx_ref`` without ``x_norm``).
    """
    y, alpha = saved.y, saved.alpha
    xp = xp or array_namespace(dout, y)
    # The multiply-add (step._residual) runs in the accumulation dtype, alpha's: it is the
    # output's dtype for float32/float64 outputs and float32 for 16-bit ones.
    acc = alpha.dtype
    dout_acc = cast(xp, dout, acc)
    y_acc = cast(xp, y, acc)
    g_alpha = xp.sum(dout_acc * y_acc)
    q = 1.0 + saved.beta * saved.r_s
    d_q = -g_alpha * alpha / q
    dy = alpha * dout_acc
    dx = dout_acc
    dx_norm = None
    if saved.denominator is not None:
        # ratio_slope is 0 on a guarded step: no gradient through the ratio, even where d_q
        # overflowed (math.where_finite: a product with the 0 would be NaN).
        d_r = where_finite(xp, saved.ratio_slope > 0, d_q * saved.beta * saved.ratio_slope, 0.0)
        if replica_mean is not None:
            d_r = replica_mean(d_r)
        scale = 2.0 * d_r / (math.prod(y.shape) * saved.denominator)  # d r / d E[y], per row, over D
        dy = fma(dy, scale[..., None], y_acc)
        dx_ref = (-scale * saved.per_row)[..., None] * cast(xp, saved.x_ref, acc)
        if saved.x_ref_is_x:
            dx = dx + dx_ref
        else:
            dx_norm = cast(xp, dx_ref, saved.x_ref.dtype)
    dx = None if saved.x_dtype is None else cast(xp, dx, saved.x_dtype)
    return Grads(dx, cast(xp, dy, y.dtype), dx_norm,
                 g_alpha / q, d_q * saved.r_s)
