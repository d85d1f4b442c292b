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
        with np.errstate(over="ignore"):  # beyond the dtype's range: inf, as the cast rounds
            return a.astype(dtype).astype(np.float64)
    if dtype == "bfloat16":
        with np.errstate(over="ignore"):
            bits = a.astype(np.float32).view(np.uint32)
        bits = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
        return bits.view(np.float32).astype(np.float64)
    raise ValueError(f"unknown dtype {dtype!r}")


#: Where rounding to each dtype overflows: its largest finite value plus half a unit in the
#: last place (``2**(emax + 1) * (1 - 2**-(p + 1))``); a value at or beyond it rounds to infinity.
OVERFLOW = {"float64": np.inf, "float32": 2.0**128 * (1 - 2.0**-25), "float16": 65520.0,
            "bfloat16": 2.0**128 * (1 - 2.0**-9)}


def compare(got, want, rtol: float, atol: float = 0.0, dtype: str | None = None,
            magnitude: float = 0.0) -> tuple[bool, float, float, str]:
    """Elementwise ``|got - want| <= rtol * (|want| + max|want|) + atol`` over the finite
    ``want``; NaN must meet NaN and an infinity the same infinity. ``atol``: the compared
    dtype's :data:`SUBNORMAL_STEP`, for results in its subnormal range. ``dtype``: the dtype
    ``got`` was rounded to; where ``want``, widened by the tolerance, reaches that dtype's
    :data:`OVERFLOW`, ``got`` may be the infinity of ``want``'s sign (a float16 output past
    65504 rounds to it, spec sections 4 and 10). ``magnitude``: where ``want`` is a sum whose
    terms cancel, the sum of their magnitudes; ``max|want|`` is raised to it.

    Returns ``(ok, max_abs, max_rel, why)`` where ``max_rel = max_abs / max|want|`` over the
    elements finite in both.

    >>> compare([1.0, 2.0], [1.0, 2.00001], 1e-5)[0], compare([1.0], [1.1], 1e-5)[0]
    (True, False)
    >>> compare([np.inf, 1.0], [np.inf, 1.0], 1e-5)[0], compare([-np.inf], [np.inf], 1e-5)[0]
    (True, False)
    >>> tuple(compare([np.inf], [w], 4e-3, 0.0, "float16")[0] for w in (65530.0, 65400.0, 60000.0, -65530.0))
    (True, True, False, False)
    >>> compare([2.5e-5], [2.53e-5], 1e-5)[0], compare([2.5e-5], [2.53e-5], 1e-5, magnitude=1.5)[0]
    (False, True)
    """
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        return False, np.inf, np.inf, f"shape {got.shape} != expected {want.shape}"
    nan_w, nan_g = np.isnan(want), np.isnan(got)
    if not np.array_equal(nan_w, nan_g):
        return False, np.inf, np.inf, f"NaN at {int((nan_w != nan_g).sum())} unexpected places"
    inf_w, inf_g = np.isinf(want), np.isinf(got)
    if not np.array_equal(want[inf_w], got[inf_w]):
        return False, np.inf, np.inf, "infinities differ (positions or signs)"
    finite_w = ~nan_w & ~inf_w
    scale = float(np.max(np.abs(want[finite_w]))) if finite_w.any() else 0.0
    scale = max(scale, magnitude)
    bound = rtol * (np.abs(want) + scale) + atol
    overflowed = finite_w & inf_g  # got rounded to infinity where the reference is finite
    if overflowed.any():
        w, b = want[overflowed], bound[overflowed]
        reach = np.where(got[overflowed] > 0, w + b, b - w)  # how far the band reaches towards got's infinity
        if not np.all(reach >= OVERFLOW.get(dtype, np.inf)):
            return False, np.inf, np.inf, (f"inf at {int(overflowed.sum())} places where the reference is finite "
                                           f"and, within the tolerance, does not overflow {dtype or 'the dtype'}")
    ok = finite_w & ~inf_g
    if not ok.any():
        return True, 0.0, 0.0, ""
    err = np.abs(got[ok] - want[ok])
    max_abs = float(err.max())
    max_rel = max_abs / scale if scale > 0 else max_abs
    passed = bool(np.all(err <= bound[ok]))
    return passed, max_abs, max_rel, "" if passed else f"max abs error {max_abs:.3g} (rtol {rtol:g})"
