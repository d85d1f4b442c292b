"""Backend-neutral conformance cases: the golden-vector sequences and the error cases.

Inputs are drawn from a seeded numpy generator in float64 and rounded to the case's dtype,
so every implementation and the float64 reference see the very same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aion_conformance.spec.json_numbers import decode
from aion_conformance.spec.reference import reference_call
from aion_conformance.spec.tolerance import RTOL, round_to
from aion_core import STATE_SPEC, AionConfig

A0, B0 = 0.1, 0.05  # aion-torch 1.0.2's defaults


def _layer_norm(x):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


def loosest(dtypes) -> str:
    """The input dtype with the widest tolerance: a mixed case is checked at its rtol."""
    return max(dtypes, key=RTOL.__getitem__)


def output_dtype_name(x_dtype: str, y_dtype: str) -> str:
    """The output dtype (spec section 4) of inputs of these dtypes, by name."""
    if x_dtype == y_dtype:
        return x_dtype
    return "float64" if "float64" in (x_dtype, y_dtype) else "float32"


def _calls(rng, dtype, shape, modes, *, x_norm=True, scale=1.0, params=None, nan_at=None, scales=None,
           dtypes=None):
    dt = dtypes or {"x": dtype, "y": dtype, "x_norm": dtype}
    calls = []
    for i, mode in enumerate(modes):
        x_scale, y_scale = scales[i] if scales else (scale, scale)
        x = round_to(rng.standard_normal(shape) * x_scale, dt["x"])
        y = round_to(rng.standard_normal(shape) * y_scale * rng.uniform(0.3, 3.0), dt["y"])
        if nan_at == i:
            y.reshape(-1)[1] = np.nan
        xn = round_to(_layer_norm(x), dt["x_norm"]) if x_norm else None
        alpha0, beta = params[i] if params else (A0, B0)
        cot = None if nan_at == i else round_to(rng.standard_normal(shape), output_dtype_name(dt["x"], dt["y"]))
        calls.append({"mode": mode, "alpha0": float(np.float32(alpha0)), "beta": float(np.float32(beta)),
                      "x": x, "y": y, "x_norm": xn, "cotangent": cot})
    return calls


def _cancelling_calls(rng, dtype, shape, modes, state) -> list[dict]:
    """Calls whose ``x`` is ``-alpha * y`` rounded to ``dtype``: ``out`` is only the rounding residue.

    A multiply-add run in 16 bits (``alpha`` or ``alpha * y`` rounded to ``dtype``) errs by
    about one rounding of ``x``, which is of the size of the whole output here and far
    beyond the tolerance; the float32 multiply-add of spec section 4, rounded once, is exact
    to the output's own rounding. ``x_norm`` is drawn apart from ``x``, so ``alpha`` is
    known before ``x`` is (the reference gives it).
    """
    config, calls = AionConfig(), []
    for mode in modes:
        y = round_to(rng.standard_normal(shape) * 30.0, dtype)  # |out| well above float16's subnormals
        xn = round_to(_layer_norm(rng.standard_normal(shape)), dtype)
        call = {"mode": mode, "alpha0": float(np.float32(A0)), "beta": float(np.float32(B0)), "y": y, "x_norm": xn}
        result, _ = reference_call(config, A0, B0, state, mode, np.zeros(shape), y, xn)
        call["x"] = round_to(-result["stats"]["alpha"] * y, dtype)
        state = reference_call(config, A0, B0, state, mode, call["x"], y, xn)[1]
        calls.append({**call, "cotangent": round_to(rng.standard_normal(shape), dtype)})
    return calls


def _overflow_calls(rng, shape, modes) -> list[dict]:
    """float16 ``x`` and ``y`` near 65504, mostly of one sign: ``x + alpha * y`` passes 65520.

    No ``x_norm``, so the ratio is about 1 and ``alpha`` about 0.95. The float32 multiply-add
    rounded once to float16 (spec section 4) is then inf, where the float64 reference is
    finite; section 10 accepts an infinity where the reference, within the tolerance,
    reaches the dtype's overflow threshold (65520).
    """
    calls = []
    for mode in modes:
        sign = np.where(rng.uniform(size=shape) < 0.5, -1.0, 1.0)
        x = round_to(sign * rng.uniform(30000.0, 65504.0, shape), "float16")
        flip = np.where(rng.uniform(size=shape) < 0.2, -1.0, 1.0)
        y = round_to(np.clip(x * rng.uniform(0.5, 1.2, shape) * flip, -65504.0, 65504.0), "float16")
        calls.append({"mode": mode, "alpha0": 1.0, "beta": float(np.float32(B0)), "x": x, "y": y,
                      "x_norm": None, "cotangent": round_to(rng.standard_normal(shape), "float16")})
    return calls


#: What each vector is there to hold implementations to (shown with its failures).
CASE_MUSTS = {
    "train_xnorm_f32": "spec 4, 5: the ratio from x_norm, EMA over update steps",
    "train_no_xnorm_f32": "spec 4: the ratio from x when x_norm is not given",
    "strong_beta_f32": "spec 4: alpha0 / (1 + beta * r_s)",
    "gamma1_f32": "spec 5: ema_gamma = 1 stores the batch ratio",
    "gamma0_f64": "spec 5: ema_gamma = 0 keeps the stored ratio",
    "k_update3_f32": "spec 5: hold steps (k_update > 1) reuse the stored ratio",
    "eval_fresh_f32": "spec 6: eval alpha from the current parameters and the stored ratio",
    "basic_f64": "spec 4: float64 inputs accumulate in float64",
    "vector_1d_f32": "spec 1: a 1-D input is one row",
    "large_rms_f16": "spec 4: energies in float32, never rounded to float16",
    "basic_bf16": "spec 4: bfloat16 inputs",
    "nonfinite_f32": "spec 5: the non-finite guard",
    "f64_beyond_float32": "spec 5: the guard tests float32(r)",
    "all_zero_f16": "spec 4: epsilon added in float32 after the energy",
    "k_update3_resumed_f32": "spec 4a, 5: the schedule follows a step_count set from outside",
    "mixed_f32_bf16": "spec 4: mixed input dtypes",
    "mixed_bf16_f16": "spec 4: mixed input dtypes (float16 with bfloat16 gives float32)",
    "mixed_f16_xnorm_f64": "spec 4: mixed input dtypes (float64 x_norm: float64 accumulation)",
    "mixed_f64_f32": "spec 4: mixed input dtypes",
    "cancelling_bf16": "spec 4: the 16-bit multiply-add in float32, rounded once",
    "cancelling_f16": "spec 4: the 16-bit multiply-add in float32, rounded once",
    "overflow_f16": "spec 4, 10: a float16 output past 65504 rounds to inf",
    "overflow_energy_f32": "spec 5, 7: a guarded or hold step sends no gradient through the ratio",
    "guard_per_call_f32": "spec 7: the guard is per call: no row's gradient passes through a guarded ratio",
    "step_count_wraps_f32": "spec 3: step_count wraps in int32 (2**31 - 1 + 1 = -2**31)",
    "step_count_wraps_k3_f32": "spec 3: the k_update schedule reads the wrapped step_count",
}


def vector_cases() -> list[dict]:
    """The golden-vector cases: name, dtype, config, initial state and a sequence of calls."""
    rng = np.random.default_rng(20261123)
    T, E = "train", "eval"
    fresh = {name: spec[2] for name, spec in STATE_SPEC.items()}
    spec = [
        ("train_xnorm_f32", "float32", {}, (2, 3, 8), [T, T, T, E], {}),
        ("train_no_xnorm_f32", "float32", {}, (4, 16), [T, T, E], {"x_norm": False}),
        ("strong_beta_f32", "float32", {"alpha0": 0.3, "beta": 0.7}, (3, 8), [T, T, E],
         {"params": [(0.3, 0.7)] * 3}),
        ("gamma1_f32", "float32", {"ema_gamma": 1.0}, (2, 8), [T, T, E], {}),
        ("gamma0_f64", "float64", {"ema_gamma": 0.0}, (3, 5), [T, T, E], {}),
        ("k_update3_f32", "float32", {"k_update": 3}, (2, 6), [T, T, T, T, T, E],
         {"params": [(0.1, 0.05), (0.11, 0.06), (0.12, 0.07), (0.13, 0.08), (0.14, 0.09), (0.15, 0.1)]}),
        ("eval_fresh_f32", "float32", {}, (2, 4), [E, T, E], {}),
        ("basic_f64", "float64", {"epsilon": 1e-6}, (3, 5), [T, T, E], {"x_norm": False}),
        ("vector_1d_f32", "float32", {}, (16,), [T, E], {}),
        ("large_rms_f16", "float16", {}, (2, 16), [T, T, E], {"scale": 300.0}),
        ("basic_bf16", "bfloat16", {}, (2, 4, 16), [T, T, E], {}),
        ("nonfinite_f32", "float32", {}, (2, 8), [T, T, T, E], {"nan_at": 1}),
        # A float64 ratio of ~1e68: finite in float64, inf once rounded to float32 (the
        # state's dtype), so guarded; with ema_gamma 0 an unguarded inf would turn into NaN
        # on the next step. Gradients stay within float32 (alpha0's is ~1e30).
        ("f64_beyond_float32", "float64", {"ema_gamma": 0.0}, (2, 6), [T, T, E],
         {"x_norm": False, "scales": [(1e-30, 1e30), (1.0, 1.0), (1.0, 1.0)]}),
    ]
    cases = [{"name": name, "dtype": dtype, "config": config, "state": dict(fresh),
              "calls": _calls(rng, dtype, shape, modes, **kw)}
             for name, dtype, config, shape, modes, kw in spec]
    zeros = {"mode": T, "alpha0": float(np.float32(A0)), "beta": float(np.float32(B0)),
             "x": np.zeros((2, 8)), "y": np.zeros((2, 8)), "x_norm": None, "cotangent": np.ones((2, 8))}
    cases.append({"name": "all_zero_f16", "dtype": "float16", "config": {}, "state": dict(fresh),
                  "calls": [zeros, dict(zeros, mode=E)]})
    # A layer resumed mid-schedule: step_count 5 with k_update 3 makes the first call a hold
    # step (5 % 3 != 0), then update (6), hold, hold. An adapter that tracks the schedule
    # itself must follow a step_count that was set from outside.
    cases.append({"name": "k_update3_resumed_f32", "dtype": "float32", "config": {"k_update": 3},
                  "state": {"ratio_ema": 1.75, "step_count": 5, "nonfinite_count": 2},
                  "calls": _calls(rng, "float32", (2, 6), [T, T, T, T, E],
                                  params=[(0.1, 0.05), (0.12, 0.3), (0.14, 0.2), (0.16, 0.1), (0.18, 0.4)])})
    # Mixed input dtypes (spec section 4): the output in the promoted dtype of x and y, the
    # accumulation in float64 if any input is float64. Checked at the loosest input's rtol.
    mixed = [("mixed_f32_bf16", {"x": "float32", "y": "bfloat16", "x_norm": "float32"}),  # an autocast branch
             ("mixed_bf16_f16", {"x": "bfloat16", "y": "float16", "x_norm": "bfloat16"}),  # float32 out
             ("mixed_f16_xnorm_f64", {"x": "float16", "y": "float16", "x_norm": "float64"}),  # float64 acc
             ("mixed_f64_f32", {"x": "float64", "y": "float32", "x_norm": "float32"})]
    cases += [{"name": name, "dtype": loosest(dt.values()), "input_dtypes": dt, "config": {},
               "state": dict(fresh), "calls": _calls(rng, None, (3, 8), [T, T, E], dtypes=dt)}
              for name, dt in mixed]
    # The multiply-add of 16-bit outputs in float32, rounded once (spec section 4).
    cases += [{"name": f"cancelling_{short}", "dtype": dtype, "config": {}, "state": dict(fresh),
               "calls": _cancelling_calls(rng, dtype, (4, 64), [T, T, E], fresh)}
              for short, dtype in (("bf16", "bfloat16"), ("f16", "float16"))]
    cases.append({"name": "overflow_f16", "dtype": "float16", "config": {"alpha0": 1.0}, "state": dict(fresh),
                  "calls": _overflow_calls(rng, (3, 8), [T, T, E])})
    # float32 squares of y past 3.4e38: E[y] is inf in float32 (1e60 in the float64 reference,
    # whose ratio is inf in float32 too), so the step is guarded. The ratio's zero gradient
    # must not meet that inf in the division's backward (0 * inf = NaN into x_norm's
    # gradient), on the update step nor on the hold step after it, where an adapter may
    # compute the update step and discard it (Keras on torch).
    cases.append({"name": "overflow_energy_f32", "dtype": "float32", "config": {"k_update": 2},
                  "state": dict(fresh),
                  "calls": _calls(rng, "float32", (2, 8), [T, T, T, T, E],
                                  scales=[(1.0, 1e30), (1.0, 1e30), (1.0, 1.0), (1.0, 1e30), (1.0, 1.0)])})
    # Spec 1.1, section 7: the guard is per call, not per row. One row's float32 energy of y
    # overflows (its ratio is inf, so the batch ratio is), the other row's ratio is finite:
    # no gradient through the ratio reaches either row (x_norm's gradient exactly 0).
    rows = _calls(rng, "float32", (2, 8), [T, T, E])
    for call in rows[:1]:
        call["y"][0] = round_to(call["y"][0] * 1e30, "float32")
    cases.append({"name": "guard_per_call_f32", "dtype": "float32", "config": {}, "state": dict(fresh),
                  "calls": rows})
    # Spec 1.1, section 3: step_count counts in int32 two's complement, 2**31 - 1 + 1 = -2**31,
    # and the schedule reads the wrapped counter (update iff step_count mod k_update is 0).
    cases.append({"name": "step_count_wraps_f32", "dtype": "float32", "config": {},
                  "state": {"ratio_ema": 1.25, "step_count": 2**31 - 2, "nonfinite_count": 0},
                  "calls": _calls(rng, "float32", (2, 6), [T, T, T, E])})
    # The same wrap with k_update = 3: 2**32 is no multiple of 3, so a schedule kept by
    # counting steps mod 3 (not reading the wrapped counter) takes the wrong step after it.
    cases.append({"name": "step_count_wraps_k3_f32", "dtype": "float32", "config": {"k_update": 3},
                  "state": {"ratio_ema": 1.25, "step_count": 2**31 - 3, "nonfinite_count": 0},
                  "calls": _calls(rng, "float32", (2, 6), [T, T, T, T, T, T, E])})
    cases = [{**case, "must": CASE_MUSTS[case["name"]]} for case in cases]
    return cases + found_cases()


#: Disagreements the fuzzer found (``python -m aion_conformance.fuzz``), kept as fixed cases:
#: a saved ``found_*.json`` moved here, with ``name`` and ``must`` filled in.
FOUND_DIR = Path(__file__).parent / "found"


def found_cases() -> list[dict]:
    """The cases of :data:`FOUND_DIR`, as :func:`vector_cases` builds its own (no expected values)."""
    return [decode(json.loads(path.read_text())) for path in sorted(FOUND_DIR.glob("*.json"))]


#: Constructor arguments that must be refused: (config, error class name). The message must
#: name the config's one key.
CONFIG_ERRORS = [
    ({"alpha0": 0.0}, "ValueError"), ({"alpha0": -1.0}, "ValueError"),
    ({"alpha0": float("nan")}, "ValueError"), ({"alpha0": float("inf")}, "ValueError"),
    ({"beta": -0.1}, "ValueError"), ({"ema_gamma": 1.5}, "ValueError"),
    ({"ema_gamma": -0.1}, "ValueError"), ({"epsilon": 0.0}, "ValueError"),
    ({"k_update": 0}, "ValueError"), ({"k_update": 1.5}, "TypeError"),
    ({"alpha0": "0.1"}, "TypeError"),
    # Beyond the storage dtypes: the step counter is int32, the parameters float32, and
    # epsilon is added in float32 to float32 energies.
    ({"k_update": 2**31}, "ValueError"), ({"k_update": 2**32 + 1}, "ValueError"),
    ({"alpha0": 1e300}, "ValueError"), ({"alpha0": 1e-300}, "ValueError"),
    ({"beta": 1e300}, "ValueError"), ({"epsilon": 1e-300}, "ValueError"),
    ({"epsilon": 1e300}, "ValueError"),
    # bool is an int in Python, but not a hyper-parameter value; nor is an integral float.
    ({"alpha0": True}, "TypeError"), ({"ema_gamma": False}, "TypeError"),
    ({"k_update": True}, "TypeError"), ({"k_update": 2.0}, "TypeError"),
    # A subnormal float32 epsilon: XLA and GPUs flush it to zero, numpy and torch do not.
    ({"epsilon": 1e-40}, "ValueError"),
    # sync_ratio is a switch: a truthy int or string is a mistake, not a choice.
    ({"sync_ratio": 1}, "TypeError"), ({"sync_ratio": "yes"}, "TypeError"), ({"sync_ratio": None}, "TypeError"),
    # An integer beyond float64 (spec 1.1, section 2): out of range (ValueError), not a wrong type.
    ({"alpha0": 10**400}, "ValueError"), ({"beta": -(10**400)}, "ValueError"), ({"epsilon": 10**400}, "ValueError"),
]


def call_error_cases() -> list[dict]:
    """Inputs that must be refused, in train and eval, with the state left untouched.

    Each case names the argument the message must name (spec section 8). ``dtype`` is one
    dtype name for every input or, where they differ, a dict by input name. Each runs with
    ``k_update`` 1 and 2: adapters that choose the update step on the device check their
    inputs on a path of its own.
    """
    f, f32 = np.ones, "float32"
    cases = [
        ("shape_mismatch", f((2, 3)), f((2, 4)), None, f32, "ValueError", "y"),
        ("x_norm_shape_mismatch", f((2, 3)), f((2, 3)), f((2, 4)), f32, "ValueError", "x_norm"),
        ("empty_rows", f((0, 4)), f((0, 4)), None, f32, "ValueError", "x"),
        ("empty_features", f((2, 0)), f((2, 0)), None, f32, "ValueError", "x"),
        ("scalar_inputs", f(()), f(()), None, f32, "ValueError", "x"),
        ("scalar_y", f((2, 3)), f(()), None, f32, "ValueError", "y"),
        ("integer_inputs", np.ones((2, 3), np.int32), np.ones((2, 3), np.int32), None, "int32", "TypeError", "x"),
        ("bool_inputs", np.ones((2, 3), bool), np.ones((2, 3), bool), None, "bool", "TypeError", "x"),
        ("complex_inputs", np.ones((2, 3), np.complex64), np.ones((2, 3), np.complex64), None, "complex64",
         "TypeError", "x"),
        ("complex_y", f((2, 3)), np.ones((2, 3), np.complex64), None, {"x": f32, "y": "complex64"},
         "TypeError", "y"),
        # The dtype check comes first (section 8): x_norm's dtype wins over its shape.
        ("x_norm_integer", f((2, 3)), f((2, 3)), np.ones((2, 4), np.int32),
         {"x": f32, "y": f32, "x_norm": "int32"}, "TypeError", "x_norm"),
        # Spec 1.1, section 8: the dtypes of all arguments before any shape check ...
        ("order_y_dtype_before_x_empty", f((0, 3)), np.ones((0, 3), np.int32), None,
         {"x": f32, "y": "int32"}, "TypeError", "y"),
        # ... then per argument, all of its shape checks before the next argument's: x's
        # emptiness before y's missing axis (per check, y's missing axis would come first) ...
        ("order_x_empty_before_y_scalar", f((0, 4)), f(()), None, f32, "ValueError", "x"),
        # ... and y's shape before x_norm's missing axis.
        ("order_y_shape_before_x_norm_scalar", f((2, 3)), f((2, 4)), f(()), f32, "ValueError", "y"),
    ]
    return [{"name": f"{name}_{mode}" + ("" if k == 1 else f"_k{k}"), "config": {"k_update": k}, "mode": mode,
             "x": x, "y": y, "x_norm": xn, "dtype": dt, "error": err, "argument": arg}
            for name, x, y, xn, dt, err, arg in cases for mode in ("train", "eval") for k in (1, 2)]


#: A layer's portable entries (spec section 9, names without the layer's path) that load.
PORTABLE_VALID = {"alpha0": float(np.float32(0.2)), "beta": float(np.float32(0.07)), "ratio_ema": 1.5,
                  "step_count": 4, "nonfinite_count": 2}


def portable_loads() -> list[tuple[str, dict, str | None, dict | None]]:
    """Section 9's loader rules: ``(name, entries, refusal class or None, state after a load)``.

    A refused load names the class section 9 says a loader SHOULD raise (the suite requires
    a refusal and the state unchanged; the class is reported, not required). An accepted one
    gives the state the loader must hold after it.
    """
    v = PORTABLE_VALID
    state = {"ratio_ema": v["ratio_ema"], "step_count": v["step_count"], "nonfinite_count": v["nonfinite_count"]}
    without = {k: x for k, x in v.items() if k != "nonfinite_count"}
    refused = [
        ("missing_beta", {k: x for k, x in v.items() if k != "beta"}, "KeyError"),
        ("unknown_entry", {**v, "gamma": 0.5}, "ValueError"),
        ("negative_step_count", {**v, "step_count": -1}, "ValueError"),
        ("fractional_step_count", {**v, "step_count": 3.7}, "ValueError"),
        ("step_count_beyond_int32", {**v, "step_count": 2**40}, "ValueError"),
        ("negative_nonfinite_count", {**v, "nonfinite_count": -1}, "ValueError"),
        ("nan_ratio_ema", {**v, "ratio_ema": float("nan")}, "ValueError"),
        ("negative_ratio_ema", {**v, "ratio_ema": -1.0}, "ValueError"),
        ("alpha0_inf_in_float32", {**v, "alpha0": 1e300}, "ValueError"),
        ("beta_not_0d", {**v, "beta": np.array([0.05])}, "ValueError"),
        ("complex_ratio_ema", {**v, "ratio_ema": np.complex64(1.5)}, "TypeError"),
        ("string_alpha0", {**v, "alpha0": "0.1"}, "TypeError"),
    ]
    accepted = [
        ("all_entries", dict(v), state),
        ("integral_float_counter", {**v, "step_count": 4.0}, state),
        ("aion_torch_102_layout", {**without, "alpha_cached": 0.19}, {**state, "nonfinite_count": 0}),
    ]
    return [(n, e, err, None) for n, e, err in refused] + [(n, e, None, st) for n, e, st in accepted]
