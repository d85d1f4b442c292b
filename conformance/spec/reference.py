"""The float64 reference, the spec's truth: AION's forward and gradients from ``docs/spec.md`` alone.

Plain numpy in float64, written from the spec's text and importing nothing of ``aion_core``
(``tests/test_vectors.py`` checks that): the golden vectors are its answers, and
``aion_core`` is held to them like every other implementation (the ``numpy`` driver runs
it). The only dtype rules that change a float64 value are applied here: the inputs are
taken as rounded to their dtypes (spec section 10), ``ratio_ema`` is a float32 (section 3),
and the guard tests ``float32(r)`` (section 5). Everything else is float64 arithmetic: an
implementation's float32 accumulation and the rounding of its output are its own error
(section 10). One process: ``sync_ratio`` acts between replicas only (section 2).

numpy has no autodiff, so the gradient of ``L = sum(out * G)`` is written out (section 7).

>>> x, y = np.ones((2, 4)), np.full((2, 4), 2.0)
>>> result, state = reference_call({}, 0.1, 0.05, INITIAL_STATE, "train", x, y)
>>> round(result["stats"]["ratio"], 6), round(result["stats"]["alpha"], 6), state["step_count"]
(4.0, 0.095102, 1)
>>> state["ratio_ema"] == float(np.float32(0.99 * 1.0 + 0.01 * result["stats"]["ratio"]))
True
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from aion_conformance.spec.tolerance import round_to

#: Spec section 2: the hyper-parameters' defaults.
DEFAULTS = {"alpha0": 0.1, "beta": 0.05, "ema_gamma": 0.99, "epsilon": 1e-8, "k_update": 1, "sync_ratio": True}
#: Spec section 3: a fresh layer's state.
INITIAL_STATE = {"ratio_ema": 1.0, "step_count": 0, "nonfinite_count": 0}
_INPUTS = ("x", "y", "x_norm")


def spec_config(config=None) -> dict:
    """The hyper-parameters of section 2 as plain numbers, defaults filled in.

    ``config``: a mapping, or an object with those attributes (an adapter's config).

    >>> spec_config({"k_update": 3})["k_update"], spec_config()["ema_gamma"]
    (3, 0.99)
    """
    if config is None:
        given = {}
    elif isinstance(config, Mapping):
        given = dict(config)
    else:
        given = {k: getattr(config, k) for k in DEFAULTS if hasattr(config, k)}
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown hyper-parameters {sorted(unknown)}")
    c = {**DEFAULTS, **given}
    return {**{k: float(c[k]) for k in ("alpha0", "beta", "ema_gamma", "epsilon")},
            "k_update": int(c["k_update"]), "sync_ratio": bool(c["sync_ratio"])}


def _float32(value: float) -> float:
    """``value`` rounded to float32, the state's dtype (inf beyond its range, NaN kept)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.float32(value))


def _int32_next(count: int) -> int:
    """``count + 1`` in int32 two's complement (section 3): ``2**31 - 1`` is followed by ``-2**31``.

    >>> _int32_next(5), _int32_next(2**31 - 1)
    (6, -2147483648)
    """
    return (count + 1 + 2**31) % 2**32 - 2**31


def _energy(t: np.ndarray) -> np.ndarray:
    """Section 4: ``E[t] = mean(t * t)`` over the last axis, one value per row (kept as an axis)."""
    return np.mean(t * t, axis=-1, keepdims=True)


def reference_forward(config, alpha0: float, beta: float, state: Mapping, mode: str, x, y, x_norm=None,
                      dtypes=None) -> dict:
    """One call's forward (sections 4 to 7a): output, stats, new state, and what the gradients need.

    Parameters
    ----------
    config : mapping or object
        The hyper-parameters (:func:`spec_config`).
    alpha0, beta : float
        The parameters' values (float32 numbers in the vectors; taken as given).
    state : mapping
        ``ratio_ema`` (read as a float32), ``step_count``, ``nonfinite_count``.
    mode : {"train", "eval"}
    x, y, x_norm : array_like
        The inputs; ``x`` None is the scale-only form ``alpha * y`` (section 1), which
        needs ``x_norm``.
    dtypes : str or mapping, optional
        Each input's dtype name (one for all, or by input): the inputs are rounded to it
        first. None: taken as they are (already rounded, as the vector files hold them).

    Returns
    -------
    dict
        ``out`` (float64, not rounded to the output's dtype), ``stats`` (``alpha``,
        ``ratio``, ``ratio_ema``), ``state`` (the new state), and ``update``, ``live``
        (the ratio carries gradient), ``r_s``, ``alpha``, ``x``, ``y``, ``x_ref``, ``ex``,
        ``ey`` (the rows' energies, None without an update step).

    Examples
    --------
    A hold step (``k_update = 2``, ``step_count = 1``) uses the stored ratio:

    >>> f = reference_forward({"k_update": 2}, 0.1, 0.05, {**INITIAL_STATE, "step_count": 1},
    ...                       "train", np.ones(4), np.ones(4))
    >>> f["update"], f["stats"]["ratio"], f["state"]
    (False, 1.0, {'ratio_ema': 1.0, 'step_count': 2, 'nonfinite_count': 0})
    """
    cfg = spec_config(config)
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    if dtypes is not None:
        names = dtypes if isinstance(dtypes, Mapping) else dict.fromkeys(_INPUTS, dtypes)
        x, y, x_norm = (None if t is None else round_to(t, names[k]) for k, t in zip(_INPUTS, (x, y, x_norm)))
    x, y, x_norm = (None if t is None else np.asarray(t, np.float64) for t in (x, y, x_norm))
    if x is None and x_norm is None:
        raise TypeError("x_norm is required without x (the scale-only form alpha * y)")
    ema = _float32(state["ratio_ema"])
    steps, nonfinite = int(state["step_count"]), int(state["nonfinite_count"])
    a0, b, gamma = float(alpha0), float(beta), cfg["ema_gamma"]
    x_ref = x if x_norm is None else x_norm  # section 4: x_norm if given, else x
    update = mode == "train" and steps % cfg["k_update"] == 0  # section 5
    live, ex, ey = False, None, None
    with np.errstate(all="ignore"):
        if update:
            ex, ey = _energy(x_ref), _energy(y)
            r = float(np.mean(ey / (ex + cfg["epsilon"])))  # epsilon after the energy
            live = bool(np.isfinite(_float32(r)))  # the guard: float32(r) finite
            if live:
                r_s = r if gamma == 1.0 else gamma * ema + (1.0 - gamma) * r
                ema = _float32(r_s)
            else:
                r_s, nonfinite = ema, nonfinite + 1  # substituted before any arithmetic with r
            ratio = r  # the ratio stat: this batch's, even when not finite
        else:  # a hold step or an eval call: the stored ratio
            r_s = ratio = ema
        alpha = a0 / (1.0 + b * r_s)
        out = alpha * y if x is None else x + alpha * y
    # Section 3: step_count is int32 and counts in its two's complement: 2**31 - 1 + 1 wraps to -2**31.
    new_state = {"ratio_ema": ema, "step_count": _int32_next(steps) if mode == "train" else steps,
                 "nonfinite_count": nonfinite}
    return {"out": out, "stats": {"alpha": alpha, "ratio": ratio, "ratio_ema": ema}, "state": new_state,
            "update": update, "live": live, "r_s": r_s, "alpha": alpha, "x": x, "y": y, "x_ref": x_ref,
            "ex": ex, "ey": ey, "config": cfg}


def reference_call(config, alpha0: float, beta: float, state: Mapping, mode: str,
                   x, y, x_norm=None, cotangent=None, dtypes=None):
    """One call of the reference. Returns ``(result, new_state)`` in the driver format.

    Arguments as for :func:`reference_forward`. With a cotangent, ``result`` also has
    ``grads`` and ``grad_scales``: for ``alpha0`` and ``beta``, the gradient's magnitude
    scale of spec section 10 (the gradient with ``sum(|dout * y|)``).
    """
    f = reference_forward(config, alpha0, beta, state, mode, x, y, x_norm, dtypes)
    result = {"out": np.asarray(f["out"], np.float64), "stats": {k: float(v) for k, v in f["stats"].items()}}
    if cotangent is not None:
        with np.errstate(over="ignore", invalid="ignore"):  # a sum(dout * y) past float64 is inf
            result["grads"], result["grad_scales"] = _grads(f, float(alpha0), float(beta), x_norm is not None,
                                                            np.asarray(cotangent, np.float64))
    return result, f["state"]


def _grads(f: dict, a0: float, b: float, has_x_norm: bool, g: np.ndarray):
    """Section 7: the gradients of ``sum(out * g)`` with respect to the inputs and parameters."""
    x, y, x_ref, s, alpha = f["x"], f["y"], f["x_ref"], f["r_s"], f["alpha"]
    gamma, epsilon = f["config"]["ema_gamma"], f["config"]["epsilon"]
    dl_dalpha = float(np.sum(g * y))
    grads = {"alpha0": dl_dalpha / (1.0 + b * s), "beta": -dl_dalpha * a0 * s / (1.0 + b * s) ** 2}
    if x is not None:
        grads["x"] = g.copy()
    grads["y"] = alpha * g
    # The parameters' gradients are one sum over every element: rounded in float32, they are
    # as accurate as the sum of the terms' magnitudes allows (spec section 10), so the same
    # gradients with sum(|g * y|) are what their error is measured against.
    dl_dalpha_magnitude = float(np.sum(np.abs(g * y)))
    scales = {"alpha0": dl_dalpha_magnitude / (1.0 + b * s),
              "beta": dl_dalpha_magnitude * a0 * s / (1.0 + b * s) ** 2}
    # Only a live update step's ratio (finite once rounded to float32) carries gradient.
    if not f["live"]:  # no gradient through the ratio (spec section 7): x_ref's is exactly 0
        if has_x_norm:
            grads["x_norm"] = np.zeros_like(x_ref)
        return grads, scales
    ds_dr = 1.0 if gamma == 1.0 else 1.0 - gamma
    ex, ey, d = f["ex"], f["ey"], y.shape[-1]
    dl_dr = -dl_dalpha * a0 * b / (1.0 + b * s) ** 2 * ds_dr
    dl_dratio_row = dl_dr / (y.size // d)  # r is the mean over rows
    grads["y"] = grads["y"] + dl_dratio_row / (ex + epsilon) * 2.0 * y / d
    dx_ref = -dl_dratio_row * ey / (ex + epsilon) ** 2 * 2.0 * x_ref / d
    if not has_x_norm:
        grads["x"] = grads["x"] + dx_ref
    else:
        grads["x_norm"] = dx_ref
    return grads, scales
