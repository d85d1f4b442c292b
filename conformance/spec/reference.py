"""The float64 reference, the spec's truth: ``aion_core`` on numpy float64, plus analytic gradients.

numpy has no autodiff, so the gradient of ``L = sum(out * G)`` is written out here
(spec "Gradients"); the forward is ``aion_core`` itself, not a second copy.
"""

from __future__ import annotations

import numpy as np

import aion_core as core


def state_numbers(state: core.AionState) -> dict:
    """The state as Python numbers, the form drivers exchange it in."""
    return {name: value.item() for name, value in core.portable.state_to_dict(state).items()}


def reference_call(config: core.AionConfig, alpha0: float, beta: float, state: dict,
                   mode: str, x, y, x_norm=None, cotangent=None):
    """One call of the reference. Returns ``(result, new_state)`` in the driver format.

    With a cotangent, ``result`` also has ``grad_scales``: for ``alpha0`` and ``beta``, the
    gradient's magnitude scale of spec section 10 (the gradient with ``sum(|dout * y|)``).
    """
    a0, b = np.float64(alpha0), np.float64(beta)
    st = core.portable.state_from_dict(state, np)
    update = mode == "train" and bool(core.is_update_step(int(st.step_count), config.k_update))
    with np.errstate(invalid="ignore", over="ignore"):
        if mode == "train":
            out, new, stats = core.train_step(x, y, x_norm, np.asarray(a0), np.asarray(b), st,
                                              config, xp=np, update=update)
        else:
            out, stats = core.eval_step(x, y, np.asarray(a0), np.asarray(b), st, x_norm=x_norm, xp=np)
            new = st
    result = {"out": np.asarray(out, np.float64),
              "stats": {k: float(v) for k, v in stats.items()}}
    if cotangent is not None:
        result["grads"], result["grad_scales"] = _grads(config, a0, b, st, update, x, y, x_norm, cotangent)
    return result, state_numbers(new)


def _grads(config, a0, b, st, update, x, y, x_norm, g):
    ema = np.float64(st.ratio_ema)
    x_ref = x if x_norm is None else x_norm
    d = x.shape[-1]
    ex = np.mean(x_ref * x_ref, axis=-1, keepdims=True)
    ey = np.mean(y * y, axis=-1, keepdims=True)
    r = float(np.mean(ey / (ex + config.epsilon)))
    # Does this batch's ratio carry gradient? Only if it is finite once rounded to the
    # state's dtype, float32 (spec section 5): a float64 ratio beyond float32 is guarded.
    with np.errstate(over="ignore"):
        live = update and bool(np.isfinite(np.float32(r)))
    gamma = config.ema_gamma
    if live:
        s = r if gamma == 1.0 else gamma * ema + (1.0 - gamma) * r
        ds_dr = 1.0 if gamma == 1.0 else 1.0 - gamma
    else:
        s, ds_dr = ema, 0.0
    alpha = a0 / (1.0 + b * s)
    dl_dalpha = float(np.sum(g * y))
    grads = {
        "alpha0": dl_dalpha / (1.0 + b * s),
        "beta": -dl_dalpha * a0 * s / (1.0 + b * s) ** 2,
        "x": g.copy(),
        "y": alpha * g,
    }
    # The parameters' gradients are one sum over every element: rounded in float32, they are
    # as accurate as the sum of the terms' magnitudes allows (spec section 10), so the same
    # gradients with sum(|g * y|) are what their error is measured against.
    dl_dalpha_magnitude = float(np.sum(np.abs(g * y)))
    scales = {"alpha0": dl_dalpha_magnitude / (1.0 + b * s),
              "beta": dl_dalpha_magnitude * a0 * s / (1.0 + b * s) ** 2}
    if not live:  # no gradient through the ratio (spec section 7): x_ref's is exactly 0
        if x_norm is not None:
            grads["x_norm"] = np.zeros_like(x_norm)
        return grads, scales
    dl_dr = -dl_dalpha * a0 * b / (1.0 + b * s) ** 2 * ds_dr
    rows = y.size // d
    dl_dratio_row = dl_dr / rows
    grads["y"] = grads["y"] + dl_dratio_row / (ex + config.epsilon) * 2.0 * y / d
    dx_ref = -dl_dratio_row * ey / (ex + config.epsilon) ** 2 * 2.0 * x_ref / d
    if x_norm is None:
        grads["x"] = grads["x"] + dx_ref
    else:
        grads["x_norm"] = dx_ref
    return grads, scales
