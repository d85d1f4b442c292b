"""Tolerances of spec section 10, rounding to a dtype, and the one comparison every check uses."""

from __future__ import annotations

import numpy as np

#: Per-dtype tolerance of a conformant result: an element passes when
#: ``|got - want| <= rtol * (|want| + max|want|)``.
RTOL = {"float64": 1e-10, "float32": 1e-5, "float16": 4e-3, "bfloat16": 3e-2}
#: The smallest subnormal of each dtype: the absolute error a result rounded into the
#: dtype's subnormal range may carry, beyond the relative tolerance.
SUBNORMAL_STEP = {"float64": 2.0**-1074, "float32": 2.0**-149, "float16": 2.0**-24, "bfloat16": 2.0**-133}


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded (nearest, ties to even) to ``dtype``, returned as float64.

    >>> float(round_to(np.array(1.0 + 2.0**-9), "bfloat16"))
    1.0
    """
    a = np.asarray(a, dtype=np.float64)
    if dtype == "float64":
        return a
    if dtype in ("float32", "float16"):
        return a.astype(dtype).astype(np.float64)
    if dtype == "bfloat16":
        bits = a.astype(np.float32).view(np.uint32)
        bits = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
        return bits.view(np.float32).astype(np.float64)
    raise ValueError(f"unknown dtype {dtype!r}")


def compare(got, want, rtol: float, atol: float = 0.0) -> tuple[bool, float, float, str]:
    """Elementwise ``|got - want| <= rtol * (|want| + max|want|) + atol`` over the finite
    ``want``; NaN must meet NaN and an infinity the same infinity. ``atol``: the compared
    dtype's :data:`SUBNORMAL_STEP`, for results in its subnormal range.

    Returns ``(ok, max_abs, max_rel, why)`` where ``max_rel = max_abs / max|want|``.

    >>> compare([1.0, 2.0], [1.0, 2.00001], 1e-5)[0], compare([1.0], [1.1], 1e-5)[0]
    (True, False)
    >>> compare([np.inf, 1.0], [np.inf, 1.0], 1e-5)[0], compare([-np.inf], [np.inf], 1e-5)[0]
    (True, False)
    """
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        return False, np.inf, np.inf, f"shape {got.shape} != expected {want.shape}"
    nan_w, nan_g = np.isnan(want), np.isnan(got)
    if not np.array_equal(nan_w, nan_g):
        return False, np.inf, np.inf, f"NaN at {int((nan_w != nan_g).sum())} unexpected places"
    inf_w = np.isinf(want)
    if not np.array_equal(np.where(inf_w, want, 0.0), np.where(np.isinf(got), got, 0.0)):
        return False, np.inf, np.inf, "infinities differ (positions or signs)"
    ok = ~nan_w & ~inf_w
    if not ok.any():
        return True, 0.0, 0.0, ""
    err = np.abs(got[ok] - want[ok])
    scale = float(np.max(np.abs(want[ok])))
    max_abs = float(err.max())
    max_rel = max_abs / scale if scale > 0 else max_abs
    passed = bool(np.all(err <= rtol * (np.abs(want[ok]) + scale) + atol))
    return passed, max_abs, max_rel, "" if passed else f"max abs error {max_abs:.3g} (rtol {rtol:g})"
