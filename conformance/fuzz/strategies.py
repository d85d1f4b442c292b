"""Hypothesis strategies for differential fuzzing: cases in the golden-vector format.

Three kinds of case, all drawn for the driver's dtypes:

- :func:`vector_cases`, what :func:`aion_conformance.spec.cases.vector_cases` builds, drawn
  instead of fixed: a config (``ema_gamma`` 0, 1 or between, ``k_update`` 1-4, ``epsilon``,
  ``alpha0``, ``beta``), an initial state (a restored ``step_count`` and ``nonfinite_count``,
  small or near int32's largest value, a ratio from 0 to 1e15), and 1-5 train/eval calls on
  inputs of one dtype or of mixed dtypes, 1-D to 3-D. Values are normal numbers of a drawn
  magnitude, exact zeros (whole arrays and rows), subnormals of the dtype, the largest value
  of the region below, and NaN or inf (a call with them has no cotangent: spec section 10
  leaves its gradients unspecified). Held to the float64 reference within section 10's
  tolerance.
- :func:`beyond_cases`, the same format beyond that region: magnitudes up to the dtype's
  largest value, rows of subnormals only, ratios beyond float32, a stored ratio up to the
  largest float32, parameters up to 3e38, ``epsilon`` down to ``2**-126``. Held only to the
  invariants of :mod:`aion_conformance.fuzz.invariants` (no NaN or inf in the state, ...).
- :func:`error_cases`, an invalid call (spec section 8), in the format of
  :func:`aion_conformance.spec.cases.call_error_cases` plus a drawn state.

The compared region, and why it stops where it does (spec section 10):

- magnitudes from 1e-3 to 1e3 for float32, float64 and bfloat16, and stored ratios up to
  1e15: the float64 reference computes every intermediate in float64, and a float32
  implementation is held to it at float32's relative precision only while its intermediates
  (the ratio, ``alpha0 / (1 + beta * r_s)`` and its square, ``sum(dout * y)`` times them, the
  gradient into ``x_norm``) stay in float32's normal range; wider ranges gave gradients near
  1e-37 built from subnormal intermediates, off by 7e-5 relative (found by this fuzzer);
  even inside it a zero ``x_norm`` row or a large stored ratio can make a gradient that
  small, so a drawn case whose reference gradients have a nonzero element below
  :data:`_SMALLEST_COMPARED` is held to the invariants only, as a beyond case;
  bfloat16 has float32's range, so its largest values square to inf in float32;
- float16 up to its largest value, 65504: its squares (4.3e9) and every intermediate stay
  in float32's normal range; ``x + alpha * y`` may pass 65504, and the output is then inf,
  which section 10 accepts where the reference, within the tolerance, reaches 65520;
- subnormals only among normal values in a row: a row made only of subnormals has an energy
  below float32's normal range, which XLA and GPUs flush to zero and numpy does not
  (:func:`beyond_cases` draws such rows);
- ``step_count`` and ``nonfinite_count`` at most ``2**31 - 6``: five calls cannot carry them
  past int32's largest value (the spec does not say what a full counter does).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from aion_conformance.drivers.protocol import FLOAT_DTYPES, INPUTS
from aion_conformance.spec.cases import loosest, output_dtype_name
from aion_conformance.spec.golden import expected_case
from aion_conformance.spec.tolerance import round_to

#: Largest magnitude drawn per dtype in the compared region (see the module notes).
_LARGEST = {"float64": 1e3, "float32": 1e3, "bfloat16": 1e3, "float16": 65504.0}
#: The dtype's largest finite value: the edge of :func:`beyond_cases`.
_MAX = {"float64": float(np.finfo(np.float64).max), "float32": float(np.finfo(np.float32).max),
        "bfloat16": 3.3895313892515355e38, "float16": 65504.0}
#: Smallest positive subnormal per dtype.
_SUBNORMAL = {"float64": 5e-324, "float32": 1.4e-45, "bfloat16": 9.2e-41, "float16": 6e-8}
#: Magnitudes of :func:`beyond_cases`, per dtype: where energies and ratios leave float32.
_BEYOND = {"float64": [1e-160, 1e-30, 1.0, 1e30, 1e160, 1e300], "float32": [1e-30, 1e-19, 1.0, 1e19, 1e30, 1e38],
           "bfloat16": [1e-30, 1e-19, 1.0, 1e19, 1e30, 1e38], "float16": [1e-6, 1.0, 65504.0]}
_INT32_MAX = 2**31 - 1
_MAX_CALLS = 5


def _counter():
    """A restored int32 counter: small, or so near int32's largest that five calls just fit."""
    return st.integers(0, 7) | st.integers(_INT32_MAX - _MAX_CALLS - 3, _INT32_MAX - _MAX_CALLS)


@st.composite
def _array(draw, shape, dtype: str, finite: bool, beyond: bool = False):
    """One input: values of one magnitude, with zeros, subnormals, extremes, non-finite values."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    largest = _MAX[dtype] if beyond else _LARGEST[dtype]
    magnitude = draw(st.sampled_from(_BEYOND[dtype] if beyond else [1.0, 1e-3, 1e3, largest]))
    values = np.clip(rng.standard_normal(shape) * min(magnitude, largest / 4), -largest, largest)
    flat = values.reshape(-1)
    patterns = ["plain", "zeros", "zero row", "subnormals", "extreme", "near largest", "nonfinite"]
    pattern = draw(st.sampled_from(patterns + (["subnormal row"] if beyond else [])))
    if pattern == "zeros":
        values[...] = 0.0
    elif pattern == "zero row" and values.ndim > 1:
        values[(0,) * (values.ndim - 1)] = 0.0
    elif pattern == "subnormals" and flat.size > 1:
        flat[rng.integers(flat.size)] = _SUBNORMAL[dtype] * draw(st.sampled_from([1, 3, -7]))
    elif pattern == "subnormal row":
        values[(0,) * (values.ndim - 1)] = _SUBNORMAL[dtype] * rng.integers(-9, 10, shape[-1])
    elif pattern == "extreme":
        flat[rng.integers(flat.size)] = largest * draw(st.sampled_from([1.0, -1.0, 0.75]))
    elif pattern == "near largest":  # every value within a factor 2 of the largest (float16: x + alpha * y overflows)
        values[...] = np.where(values < 0, -largest, largest) * rng.uniform(0.5, 1.0, shape)
    elif pattern == "nonfinite" and not finite:
        flat[rng.integers(flat.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return round_to(values, dtype)


def _shape(draw) -> tuple[int, ...]:
    rank = draw(st.integers(1, 3))
    rows = draw(st.lists(st.integers(1, 4), min_size=rank - 1, max_size=rank - 1))
    return (*rows, draw(st.integers(1, 8)))


def _dtypes(draw, dtypes) -> tuple[dict[str, str], bool]:
    """Each input's dtype name, and whether they may differ (a mixed case)."""
    if draw(st.booleans()) and draw(st.booleans()):
        return {k: draw(st.sampled_from(dtypes)) for k in INPUTS}, True
    return dict.fromkeys(INPUTS, draw(st.sampled_from(dtypes))), False


def _f32(value: float) -> float:
    return float(np.float32(value))


@st.composite
def _case(draw, dtypes, beyond: bool) -> dict:
    dt, mixed = _dtypes(draw, dtypes)
    shape = _shape(draw)
    if beyond:
        config = {"ema_gamma": draw(st.sampled_from([0.0, 1e-7, 0.5, 0.99, 1 - 1e-7, 1.0])),
                  "epsilon": draw(st.sampled_from([2.0**-126, 1e-8, 1.0, 1e30])),
                  "alpha0": draw(st.sampled_from([0.1, 1e30])), "beta": draw(st.sampled_from([0.0, 3e38]))}
        ratios = [1.0, 0.0, 1e-40, 1e30, _MAX["float32"]]  # 1e-40: a subnormal float32, a valid state
        params = [(0.1, 0.05), (1.0, 0.0), (1e30, 1e30), (3e38, 0.0), (1e-38, 3e38), (0.5, 1e-45)]
    else:
        config = {"ema_gamma": draw(st.sampled_from([0.0, 0.5, 0.99, 1.0])),
                  "epsilon": draw(st.sampled_from([1e-8, 1e-5, 1.0])),
                  "alpha0": draw(st.sampled_from([0.1, 0.5, 1.0])), "beta": draw(st.sampled_from([0.0, 0.05, 2.0]))}
        ratios = [1.0, 0.0, 3.5, 1e3, 1e15]
        params = [(0.1, 0.05), (0.5, 0.7), (1.0, 0.0), (1.0, 2.0)]
    config["k_update"] = draw(st.integers(1, 4))
    state = {"ratio_ema": _f32(draw(st.sampled_from(ratios))), "step_count": draw(_counter()),
             "nonfinite_count": draw(_counter())}
    out_dtype = output_dtype_name(dt["x"], dt["y"])
    calls = []
    for i in range(draw(st.integers(1, _MAX_CALLS))):
        finite = draw(st.booleans()) or draw(st.booleans())
        x, y = draw(_array(shape, dt["x"], finite, beyond)), draw(_array(shape, dt["y"], finite, beyond))
        x_norm = draw(st.none() | _array(shape, dt["x_norm"], finite, beyond))
        clean = all(t is None or np.isfinite(t).all() for t in (x, y, x_norm))
        cot = round_to(np.random.default_rng(i).standard_normal(shape), out_dtype) if clean else None
        alpha0, beta = draw(st.sampled_from(params))
        calls.append({"mode": draw(st.sampled_from(["train", "train", "eval"])), "alpha0": _f32(alpha0),
                      "beta": _f32(beta), "x": x, "y": y, "x_norm": x_norm, "cotangent": cot})
    must = ("the invariants beyond the compared region (spec sections 5, 10)" if beyond
            else "the fuzzer's outcome (spec section 10)")
    case = {"name": "fuzz beyond" if beyond else "fuzz", "must": must, "dtype": loosest(dt.values()),
            "config": config, "state": state, "calls": calls}
    case = {**case, "input_dtypes": dt} if mixed else case
    return {**case, "region": "beyond"} if beyond or not _compared(case) else case


#: The smallest nonzero gradient element compared with the reference, by accumulation dtype.
#: A smaller one is built from intermediates that may be subnormal (a flushed 1e-39 times
#: the factors that follow it, up to about 1e17 here: 1 / (E[x_norm] + epsilon) with an
#: all-zero row, E[y], 2 x / D); the drawn inputs alone do not bound it: a stored ratio of
#: 1e15 or a zero row with epsilon 1e-8 makes (1 + beta r_s)**2 reach 1e30 (found by this
#: fuzzer: a gradient into x_norm of 4e-37 that XLA gave as 0).
_SMALLEST_COMPARED = {"float32": 1e-20, "float64": 1e-290}


def _compared(case: dict) -> bool:
    """Whether the reference's gradients of ``case`` stay where spec section 10's tolerance holds."""
    acc = "float64" if "float64" in (case.get("input_dtypes") or {"x": case["dtype"]}).values() else "float32"
    with np.errstate(all="ignore"):
        expected = expected_case(case)
    for call in expected["calls"]:
        for grad in call["expected"].get("grads", {}).values():
            a = np.abs(np.asarray(grad, np.float64))
            if np.any((a > 0) & (a < _SMALLEST_COMPARED[acc])):
                return False
    return True


def vector_cases(dtypes=FLOAT_DTYPES):
    """A case in the golden-vector format (without ``expected``: the reference gives it)."""
    return _case(tuple(dtypes), beyond=False)


def beyond_cases(dtypes=FLOAT_DTYPES):
    """A case beyond the compared region: the vector format, plus ``"region": "beyond"``."""
    return _case(tuple(dtypes), beyond=True)


#: Invalid dtypes an input may have (spec section 8): each fails with TypeError.
_BAD_DTYPES = ("int32", "bool", "complex64")


@st.composite
def error_cases(draw, dtypes=FLOAT_DTYPES) -> dict:
    """An invalid call (spec section 8): one or two faults among the dtypes and shapes.

    The expected class and argument follow section 8's order (dtypes of ``x``, ``y``,
    ``x_norm``, then per argument: no axis, empty, a shape other than ``x``'s);
    :func:`expected_error` computes them, and the reference's own error (``aion_core``)
    is asserted to agree.
    """
    base = _shape(draw)
    names = ["x", "y", "x_norm"] if draw(st.booleans()) else ["x", "y"]
    floating = draw(st.sampled_from(tuple(dtypes)))
    dt = dict.fromkeys(names, floating)
    shapes = dict.fromkeys(names, base)
    for _ in range(draw(st.integers(1, 2))):
        name, fault = draw(st.sampled_from(names)), draw(st.sampled_from(["dtype", "scalar", "empty", "shape"]))
        if fault == "dtype":
            dt[name] = draw(st.sampled_from(_BAD_DTYPES))
        elif fault == "scalar":
            shapes[name] = ()
        elif fault == "empty":
            shapes[name] = (*base[:-1], 0) if draw(st.booleans()) or len(base) == 1 else (0, *base[1:])
        else:  # a width of each argument's own, so that two shape faults never agree
            shapes[name] = (*base[:-1], base[-1] + 1 + INPUTS.index(name))
    arrays = {k: np.ones(shapes[k], np.float64 if dt[k] in FLOAT_DTYPES else dt[k]) for k in names}
    error, argument = expected_error(arrays)  # every fault above makes the call invalid
    given = dt["x"] if len(set(dt.values())) == 1 else {**dt, **({} if "x_norm" in dt else {"x_norm": floating})}
    return {"name": "fuzz invalid call", "config": {"k_update": draw(st.integers(1, 3))},
            "state": {"ratio_ema": _f32(draw(st.sampled_from([1.75, 0.0, 1e3]))), "step_count": draw(_counter()),
                      "nonfinite_count": draw(_counter())},
            "mode": draw(st.sampled_from(["train", "eval"])), "x": arrays["x"], "y": arrays["y"],
            "x_norm": arrays.get("x_norm"), "dtype": given, "error": error, "argument": argument}


def expected_error(arrays: dict) -> tuple[str | None, str | None]:
    """(class name, argument) of the error spec section 8 gives for these inputs (None, None: valid).

    Written from the spec's order, and checked against the reference's own error: the two
    disagreeing is a bug of one of them, raised here.
    """
    import aion_core

    named = [(k, arrays[k]) for k in INPUTS if arrays.get(k) is not None]
    spec = next((("TypeError", k) for k, a in named if a.dtype.kind != "f"), None)
    for k, a in named:
        if spec is None and (a.ndim == 0 or 0 in a.shape or (k != "x" and a.shape != arrays["x"].shape)):
            spec = ("ValueError", k)
    ref = aion_core.errors.input_error(np, arrays["x"], arrays["y"], arrays.get("x_norm"))
    if (type(ref).__name__ if ref is not None else None) != (spec[0] if spec else None):
        raise AssertionError(f"spec section 8 gives {spec}, the reference {ref!r}")
    return spec if spec else (None, None)
