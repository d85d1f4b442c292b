"""One functional AION call: state in, output and new state out (spec "Training"/"Eval")."""

from __future__ import annotations

from array_api_compat import array_namespace

from aion_core.config import AionConfig
from aion_core.errors import check_inputs
from aion_core.math import accumulation_dtype, batch_ratio, cast, compute_alpha, where_finite
from aion_core.state import AionState


def _identity(t):
    return t


def is_update_step(step_count, k_update: int):
    """True where the ratio is recomputed: steps 0, k, 2k, ... (``step_count`` before the step).

    The one rule of the ``k_update`` schedule: :func:`scheduled_train_step` applies it to the
    state's counter on the device, an adapter that keeps the phase ``step_count % k_update``
    on the host to that phase.
    """
    return step_count % k_update == 0


def replica_mean_for(config: AionConfig, replica_mean):
    """The cross-replica mean a step applies: ``replica_mean``, or None with ``config.sync_ratio`` False.

    With ``sync_ratio=False`` each replica keeps its own batch ratio and no collective is
    issued, whatever hook the adapter found (spec section 7). An adapter that runs the
    hook itself (a custom backward) asks here which one the forward used.

    >>> replica_mean_for(AionConfig(sync_ratio=False), abs) is None
    True
    """
    return replica_mean if config.sync_ratio else None


def _dtype(t):
    return None if t is None else t.dtype


def _acc(xp, x, y, x_norm):
    return accumulation_dtype(xp, *(t.dtype for t in (x, y, x_norm) if t is not None))


def alpha_from_ratio(xp, alpha0, beta, ratio):
    """:func:`aion_core.compute_alpha` with ``alpha0`` and ``beta`` cast to ``ratio``'s dtype, the accumulation dtype.

    >>> import numpy as np
    >>> alpha_from_ratio(np, np.float32(0.1), np.float32(0.05), np.float64(2.0)).dtype
    dtype('float64')
    """
    return compute_alpha(cast(xp, alpha0, ratio.dtype),
                         cast(xp, beta, ratio.dtype), ratio)


def output_dtype(xp, x_dtype, y_dtype):
    """The promoted floating dtype of ``x`` and ``y``: the output's dtype (``y``'s when ``x_dtype`` is None).

    Written out rather than ``xp.result_type``, which torch answers with a host-side
    ``torch.result_type`` call that ``torch.compile(fullgraph=True)`` cannot trace.
    float16 with bfloat16 gives float32 (no 16-bit dtype holds both), as in torch and JAX.

    Examples
    --------
    >>> import numpy as np
    >>> output_dtype(np, np.float16, np.float32)
    <class 'numpy.float32'>
    """
    if x_dtype is None or x_dtype == y_dtype:
        return y_dtype
    if xp.float64 in (x_dtype, y_dtype):
        return xp.float64
    return xp.float32


def multiply_add(a, s, b):
    """``a + s * b``: the one multiply-add of AION, as an adapter may supply it fused.

    An adapter can pass a one-kernel version (torch: ``torch.addcmul``) where the array API
    has none; it must compute the same expression in the same dtype.

    >>> multiply_add(1.0, 2.0, 3.0)
    7.0
    """
    return a + s * b


def _residual(xp, x, y, alpha, out_dtype, fma=multiply_add):
    # x None: the scale-only form, alpha * y, in the same dtypes.
    # The multiply-add runs in alpha's dtype, the accumulation dtype: the inputs' dtype for
    # float32/float64 (as aion-torch 1.0.2), float32 for 16-bit ones, rounded once at the
    # end, so alpha's gradient, sum(dout * y), is not summed in 16 bits either. Every
    # operand is cast: torch gives a 0-d operand no say in promotion, so a float64 alpha
    # times a float16 y would multiply in float16 (found by the fuzzer).
    acc = alpha.dtype
    if x is None:
        return cast(xp, alpha * cast(xp, y, acc), out_dtype)
    return cast(xp, fma(cast(xp, x, acc), alpha, cast(xp, y, acc)), out_dtype)


def smoothed_ratio(xp, r, ema, gamma: float, stop_gradient=_identity):
    """The update step's guard and EMA (spec section 5): ``(finite, r_s, new ratio_ema)``.

    ``finite`` tells whether ``r`` is finite once rounded to ``ema``'s dtype; ``r_s`` is in
    ``r``'s dtype and carries ``r``'s gradient, scaled by ``1 - gamma`` (1 when ``gamma = 1``),
    except where ``r`` is not finite.
    """
    # The guard asks whether r is finite once rounded to the state's dtype (float32):
    # a float64 ratio beyond float32's range (1e200) would otherwise be stored as inf.
    # For float32 accumulation the cast is a no-op. Checking float32(r) suffices:
    # r_s is a convex combination of ema (a finite float32) and r (finite once rounded
    # to float32), so it lies between two values that round to finite float32 numbers
    # and float32(r_s) is finite. The rounding of its few operations cannot carry it
    # over float32's overflow threshold: the worst case (ema the largest float32, r
    # the largest float64 that still rounds to it) rounds to the largest float32 for
    # every gamma (tests/test_core.py sweeps it).
    finite = xp.isfinite(cast(xp, r, ema.dtype))
    # Replaced before any arithmetic: the step falls back to the stored ratio.
    ema_acc = cast(xp, ema, r.dtype)
    r_safe = where_finite(xp, finite, r, ema_acc)
    # A guarded step's r_s is the stored ratio itself (spec section 5), not gamma * ema +
    # (1 - gamma) * ema, which can round to a neighbour of it.
    r_s = r_safe if gamma == 1.0 else where_finite(xp, finite, gamma * ema_acc + (1.0 - gamma) * r_safe, ema_acc)
    new_ema = xp.where(finite, cast(xp, stop_gradient(r_s), ema.dtype), ema)
    return finite, r_s, new_ema


def advance(xp, x, y, r, alpha0, beta, state: AionState, config: AionConfig, acc, out_dtype, *,
            replica_mean=None, stop_gradient=_identity, fma=multiply_add):
    """The update or hold step once the batch ratio is known: what :func:`train_step` and the closed form share.

    Parameters
    ----------
    x, y : array
        Residual input (None: the scale-only form) and branch output.
    r : array or None
        This replica's batch ratio (an update step, the guard and EMA of spec section 5), or
        None (a hold step: alpha from the stored ratio, the state's ratio and count kept).
    alpha0, beta, state, config, replica_mean, stop_gradient
        As for :func:`train_step` (``stop_gradient`` the identity outside autodiff).
    acc, out_dtype
        The accumulation dtype and the output's dtype.
    fma : callable
        :func:`multiply_add` or an adapter's one-kernel equivalent.

    Returns
    -------
    out, new_state, stats
        As for :func:`train_step`.
    (finite, r_s, alpha)
        What a hand-written backward needs: the guard's verdict (None on a hold step), the
        smoothed ratio, and alpha without the stop-gradient of ``stats``.
    """
    ema, nonfinite = stop_gradient(state.ratio_ema), state.nonfinite_count
    if r is None:
        finite, r_s, new_ema = None, cast(xp, ema, acc), ema
        ratio_stat = r_s  # in the accumulation dtype, like the batch ratio of update steps
    else:
        replica_mean = replica_mean_for(config, replica_mean)
        if replica_mean is not None:
            r = replica_mean(r)
        finite, r_s, new_ema = smoothed_ratio(xp, r, ema, config.ema_gamma, stop_gradient)
        nonfinite = nonfinite + cast(xp, xp.logical_not(finite), nonfinite.dtype)
        ratio_stat = r
    alpha = alpha_from_ratio(xp, alpha0, beta, r_s)
    out = _residual(xp, x, y, alpha, out_dtype, fma)
    new_state = AionState(new_ema, state.step_count + 1, nonfinite)
    stats = {"alpha": stop_gradient(alpha), "ratio": stop_gradient(ratio_stat), "ratio_ema": new_ema}
    return out, new_state, stats, (finite, r_s, alpha)


def train_step(x, y, x_norm, alpha0, beta, state: AionState, config: AionConfig, *,
               xp=None, update=True, replica_mean=None, stop_gradient=None, check=True):
    """A training-mode forward.

    Parameters
    ----------
    x, y : array
        Residual input and branch output, same shape ``(..., D)``.
    x_norm : array or None
        Normalised ``x`` whose energy is the denominator of the ratio; ``x`` if None.
    alpha0, beta : array
        The trainable parameters (0-d); they carry gradient.
    state : AionState
        The running state before the call.
    config : AionConfig
        ``ema_gamma``, ``epsilon`` and ``sync_ratio`` are read here.
    xp : namespace, optional
        Array namespace; found from ``x`` and ``y`` if not given.
    update : bool
        Whether this is an update step (see :func:`is_update_step`). A Python bool:
        it selects the computation, so it must be static under tracing.
    replica_mean : callable, optional
        Maps this replica's batch ratio to the mean over replicas (data parallel). Not
        called when ``config.sync_ratio`` is False (:func:`replica_mean_for`).
    stop_gradient : callable, optional
        The framework's stop-gradient; the stored ratio never carries gradient.
    check : bool
        Run :func:`aion_core.check_inputs` first (True); False for a caller that has
        checked these inputs already, so that each call checks once.

    Returns
    -------
    out : array
        ``x + alpha * y`` in the promoted dtype of ``x`` and ``y``.
    state : AionState
        The new state (free of gradient when ``stop_gradient`` is given).
    stats : dict
        0-d arrays: ``alpha`` and ``ratio`` (this batch's mean ratio on update steps,
        the stored ratio otherwise), both in the accumulation dtype whatever the step,
        and ``ratio_ema`` (after the call, in the state's dtype).
    """
    xp = xp or array_namespace(x, y)
    if check:
        check_inputs(xp, x, y, x_norm)
    acc, out_dtype = _acc(xp, x, y, x_norm), output_dtype(xp, _dtype(x), y.dtype)
    # Each input is cast to acc once: x and y are read twice (energy, multiply-add), and two
    # casts of a 16-bit input give autodiff two 16-bit cotangents that it sums in 16 bits,
    # cancelling where the two gradient terms do (found by the fuzzer).
    x, y, x_norm = (None if t is None else cast(xp, t, acc) for t in (x, y, x_norm))
    r = batch_ratio(xp, x if x_norm is None else x_norm, y, config.epsilon, acc, stop_gradient) if update else None
    out, new_state, stats, _ = advance(xp, x, y, r, alpha0, beta, state, config, acc, out_dtype,
                                       replica_mean=replica_mean, stop_gradient=stop_gradient or _identity)
    return out, new_state, stats


def scheduled_train_step(x, y, x_norm, alpha0, beta, state: AionState, config: AionConfig, *,
                         xp=None, replica_mean=None, stop_gradient=None, cond=None, check=True):
    """:func:`train_step` on the ``k_update`` schedule, the step chosen from ``state.step_count`` on the device.

    With ``k_update = 1`` every step is an update step. Otherwise :func:`is_update_step` of
    the counter picks the step: ``cond`` runs one of the two, and without ``cond`` both are
    computed and every result taken from the one picked. The select is for tracers that
    cannot branch on a device value or keep the phase on the host: a host ``if`` would read
    the counter (a sync; a graph break under ``torch.compile``), and a phase kept on the
    host is a Python side effect that a recomputation (activation checkpointing) or a
    ``tf.distribute`` replica cannot replay. Gradients flow through the chosen step only.

    Parameters
    ----------
    x, y, x_norm, alpha0, beta, state, config, xp, replica_mean, stop_gradient
        As for :func:`train_step`.
    cond : callable, optional
        ``cond(pred, update_fn, hold_fn)`` running one of two thunks on a 0-d boolean
        (``jax.lax.cond``, ``keras.ops.cond``); each thunk returns ``(out, state fields as a
        tuple, stats)``. None: both steps and a select.
    check : bool
        Check the inputs once, before either step is traced (as for :func:`train_step`).

    Returns
    -------
    out, state, stats
        As for :func:`train_step`.

    Examples
    --------
    >>> import numpy as np
    >>> import aion_core as core
    >>> cfg = core.AionConfig(k_update=2)
    >>> x, y = np.ones((2, 4)), np.full((2, 4), 2.0)
    >>> a0, b = np.asarray(0.1), np.asarray(0.05)
    >>> state = core.initial_state(np, dtype=np.float64)._replace(step_count=np.int32(1))
    >>> _, new, stats = scheduled_train_step(x, y, None, a0, b, state, cfg)  # a hold step
    >>> float(new.ratio_ema), int(new.step_count), float(stats["ratio"])
    (1.0, 2, 1.0)
    """
    xp = xp or array_namespace(x, y)
    if check:
        check_inputs(xp, x, y, x_norm)

    inputs = (x, y, x_norm, alpha0, beta)

    def step(update, inputs=inputs):
        out, new_state, stats = train_step(*inputs, state, config, xp=xp, update=update,
                                           replica_mean=replica_mean, stop_gradient=stop_gradient, check=False)
        return out, tuple(new_state), stats  # plain tuples: what every cond takes as a branch's result

    def only_if(taken):
        # The step not taken gets a zero cotangent, which some VJPs still turn into NaN (a
        # quotient whose denominator squared underflows: 0 * a / 0); its inputs let no
        # gradient back unless it is taken. It takes a `where` whose gradient selects (not
        # one that multiplies by the mask, 0 * NaN being NaN).
        if stop_gradient is None:
            return inputs
        return tuple(None if t is None else xp.where(taken, t, stop_gradient(t)) for t in inputs)

    if config.k_update == 1:
        out, new_state, stats = step(True)
    elif cond is not None:
        out, new_state, stats = cond(is_update_step(state.step_count, config.k_update),
                                     lambda: step(True), lambda: step(False))
    else:
        update = is_update_step(state.step_count, config.k_update)
        on, off = step(True, only_if(update)), step(False, only_if(xp.logical_not(update)))
        out, new_state, stats = (xp.where(update, on[0], off[0]),
                                 [xp.where(update, a, b) for a, b in zip(on[1], off[1])],
                                 {k: xp.where(update, on[2][k], off[2][k]) for k in on[2]})
    return out, AionState(*new_state), stats


def eval_step(x, y, alpha0, beta, state: AionState, *, x_norm=None, xp=None,
              stop_gradient=None, check=True):
    """An eval-mode forward: ``alpha`` from the current parameters and the stored ratio.

    Nothing is updated; ``x_norm`` is checked like in training and otherwise unused
    (``check``: as for :func:`train_step`). Returns ``(out, stats)`` with the same stats as
    :func:`train_step`.
    """
    xp = xp or array_namespace(x, y)
    if check:
        check_inputs(xp, x, y, x_norm)
    ema = (stop_gradient or _identity)(state.ratio_ema)
    ratio = cast(xp, ema, _acc(xp, x, y, x_norm))
    alpha = alpha_from_ratio(xp, alpha0, beta, ratio)
    out = _residual(xp, x, y, alpha, output_dtype(xp, _dtype(x), y.dtype))
    return out, {"alpha": (stop_gradient or _identity)(alpha), "ratio": ratio, "ratio_ema": ema}
