"""Hypothesis strategies for differential fuzzing: cases in the golden-vector format.

A drawn case is what :func:`aion_conformance.spec.cases.vector_cases` builds, drawn instead
of fixed: a config (``ema_gamma`` 0, 1 or between, ``k_update`` 1-4, ``epsilon``, ``alpha0``,
``beta``), an initial state (a restored ``step_count``, a nonzero ``nonfinite_count``, a
ratio from 0 to 1e3), and 1-5 train/eval calls on inputs of one dtype or of mixed dtypes,
1-D to 3-D. Values are normal numbers of a drawn magnitude, exact zeros (whole arrays and
rows), subnormals of the dtype, values near the largest the region below allows, and NaN or
inf (a call with them has no cotangent: spec section 10 leaves its gradients unspecified).
With probability 1/8 a case is an invalid call instead (:func:`error_cases`).

The region drawn from, and why (spec section 10):

- magnitudes from 1e-3 to 1e3 (float16 also up to a quarter of its largest value) and
  stored ratios up to 1e3: the float64 reference computes every intermediate in float64, and
  a float32 implementation is held to it at float32's relative precision only while its
  intermediates (the ratio, ``alpha / (1 + beta * r_s)`` times ``sum(dout * y)``, the
  gradient into ``x_norm``) stay in float32's normal range; wider ranges gave gradients near
  1e-37 built from subnormal intermediates, off by 7e-5 relative (found by this fuzzer);
- subnormals only among normal values in a row: a row made only of subnormals has an energy
  below float32's normal range, which XLA and GPUs flush to zero and numpy does not;
- 16-bit inputs at most a quarter of the dtype's largest value, with ``alpha0 <= 1``, so
  that ``x + alpha * y`` cannot overflow the output dtype.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from aion_conformance.drivers.protocol import FLOAT_DTYPES, INPUTS
from aion_conformance.spec.cases import loosest, output_dtype_name
from aion_conformance.spec.tolerance import round_to

#: Largest magnitude drawn per dtype (see the module notes).
_LARGEST = {"float64": 1e3, "float32": 1e3, "bfloat16": 1e3, "float16": 65504.0 / 4}
#: Smallest positive subnormal per dtype.
_SUBNORMAL = {"float64": 5e-324, "float32": 1.4e-45, "bfloat16": 9.2e-41, "float16": 6e-8}


@st.composite
def _array(draw, shape, dtype: str, finite: bool):
    """One input: normal values of one magnitude, with zeros, subnormals, extremes, non-finite."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    magnitude = draw(st.sampled_from([1.0, 1e-3, 1e3, _LARGEST[dtype]]))
    values = rng.standard_normal(shape) * min(magnitude, _LARGEST[dtype] / 4)
    flat = values.reshape(-1)
    pattern = draw(st.sampled_from(["plain", "zeros", "zero row", "subnormals", "nonfinite"]))
    if pattern == "zeros":
        values[...] = 0.0
    elif pattern == "zero row" and values.ndim > 1:
        values[(0,) * (values.ndim - 1)] = 0.0
    elif pattern == "subnormals" and flat.size > 1:
        flat[rng.integers(flat.size)] = _SUBNORMAL[dtype] * draw(st.sampled_from([1, 3, -7]))
    elif pattern == "nonfinite" and not finite:
        flat[rng.integers(flat.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return round_to(values, dtype)


@st.composite
def vector_cases(draw, dtypes=FLOAT_DTYPES) -> dict:
    """A case in the golden-vector format (without ``expected``: the reference gives it)."""
    mixed = draw(st.booleans()) and draw(st.booleans())
    if mixed:
        dt = {k: draw(st.sampled_from(dtypes)) for k in INPUTS}
    else:
        dt = dict.fromkeys(INPUTS, draw(st.sampled_from(dtypes)))
    rank = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=rank - 1, max_size=rank - 1))) + (draw(st.integers(1, 8)),)
    config = {"ema_gamma": draw(st.sampled_from([0.0, 0.5, 0.99, 1.0])), "k_update": draw(st.integers(1, 4)),
              "epsilon": draw(st.sampled_from([1e-8, 1e-5, 1.0])),
              "alpha0": draw(st.sampled_from([0.1, 0.5, 1.0])), "beta": draw(st.sampled_from([0.0, 0.05, 2.0]))}
    state = {"ratio_ema": draw(st.sampled_from([1.0, 0.0, 3.5, 1e3])), "step_count": draw(st.integers(0, 7)),
             "nonfinite_count": draw(st.integers(0, 2))}
    out_dtype = output_dtype_name(dt["x"], dt["y"])
    calls = []
    for _ in range(draw(st.integers(1, 5))):
        finite = draw(st.booleans()) or draw(st.booleans())
        x, y = draw(_array(shape, dt["x"], finite)), draw(_array(shape, dt["y"], finite))
        x_norm = draw(st.none() | _array(shape, dt["x_norm"], finite))
        clean = all(t is None or np.isfinite(t).all() for t in (x, y, x_norm))
        cot = round_to(np.random.default_rng(len(calls)).standard_normal(shape), out_dtype) if clean else None
        alpha0, beta = draw(st.sampled_from([(0.1, 0.05), (0.5, 0.7), (1.0, 0.0)]))
        calls.append({"mode": draw(st.sampled_from(["train", "train", "eval"])),
                      "alpha0": float(np.float32(alpha0)), "beta": float(np.float32(beta)),
                      "x": x, "y": y, "x_norm": x_norm, "cotangent": cot})
    case = {"name": "fuzz", "must": "the fuzzer's outcome (spec section 10)", "dtype": loosest(dt.values()),
            "config": config, "state": state, "calls": calls}
    return {**case, "input_dtypes": dt} if mixed else case


@st.composite
def error_cases(draw, dtypes=FLOAT_DTYPES) -> dict:
    """An invalid call (spec section 8), in the format of ``cases.call_error_cases``."""
    dtype = draw(st.sampled_from(dtypes))
    fault = draw(st.sampled_from(["shape", "x_norm shape", "empty", "scalar", "integer", "complex"]))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)))
    x, y, x_norm, dt = np.ones(shape), np.ones(shape), None, dtype
    error, argument = "ValueError", "y"
    if fault == "shape":
        y = np.ones((shape[0], shape[1] + 1))
    elif fault == "x_norm shape":
        x_norm, argument = np.ones((shape[0] + 1, shape[1])), "x_norm"
    elif fault == "empty":
        x, y, argument = np.ones((0, shape[1])), np.ones((0, shape[1])), "x"
    elif fault == "scalar":
        y = np.ones(())
    elif fault == "integer":
        x_norm, dt, error, argument = np.ones(shape, np.int32), {"x": dtype, "y": dtype, "x_norm": "int32"}, \
            "TypeError", "x_norm"
    else:
        y, dt, error = np.ones(shape, np.complex64), {"x": dtype, "y": "complex64"}, "TypeError"
    return {"name": f"fuzz {fault}", "config": {"k_update": draw(st.integers(1, 3))},
            "mode": draw(st.sampled_from(["train", "eval"])), "x": x, "y": y, "x_norm": x_norm, "dtype": dt,
            "error": error, "argument": argument}
