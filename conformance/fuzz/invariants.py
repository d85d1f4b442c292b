"""What must hold beyond the compared region of spec section 10, where no reference value binds.

Past float32's normal range a float32 implementation and the float64 reference may differ
(squares overflow to inf in float32 and not in float64; XLA and GPUs flush subnormals), so
a case of :func:`aion_conformance.fuzz.strategies.beyond_cases` is not compared with the
reference. What the spec still demands of every call there, and :func:`check_invariants`
checks, call by call:

- it runs (non-finite data is not an error, section 8) and its output has section 4's dtype
  and ``x``'s shape;
- the state never holds a NaN or inf, and ``ratio_ema >= 0`` (sections 3, 5);
- an eval call changes nothing (section 6); a training call adds 1 to ``step_count``; a hold
  step (``step_count % k_update != 0`` before the call) changes nothing else (section 5);
- on an update step the guard fires, adding 1 to ``nonfinite_count`` and leaving
  ``ratio_ema`` as it was, exactly when this batch's ratio, the ``ratio`` stat, is not
  finite once rounded to float32 (sections 5, 7a);
- the stats (section 7a): ``ratio_ema`` is the stored ratio after the call, ``ratio`` the
  stored one on hold steps and in eval, and ``alpha`` is finite, between 0 and ``alpha0``;
- on hold steps, guarded steps and in eval no gradient flows through the ratio (section 7):
  with finite inputs and cotangent, ``x_norm``'s gradient is exactly 0 (an autodiff path once
  turned the ratio's zero gradient into NaN where a float32 ``E[y]`` overflowed).

A stored ratio below float32's smallest normal number (a state the fuzzer sets, ``1e-40``)
and 0 count as the same value: XLA (JAX, TensorFlow) and GPUs flush float32 subnormals to
zero wherever they pass, a ratio kept on a guarded or hold step included (found by this
fuzzer on keras-tensorflow, keras-jax, flax-nnx and flax-linen; spec section 10 allows it).
"""

from __future__ import annotations

import math

import numpy as np

from aion_conformance.drivers.protocol import Execution, has_grads
from aion_conformance.runner import input_dtypes, runs_under
from aion_conformance.spec.musts import MUSTS
from aion_conformance.spec.cases import output_dtype_name
from aion_conformance.spec.tolerance import round_to

_WHERE = "beyond the compared region"
#: float32's smallest normal number: below it, XLA and GPUs flush to zero (spec section 2, epsilon).
_TINY = 2.0**-126


def _same(a: float, b: float) -> bool:
    """Equal ratios, or both below float32's smallest normal number (one of them flushed to zero)."""
    return a == b or (abs(a) < _TINY and abs(b) < _TINY)


def _label(kind: str) -> str:
    return f"[{MUSTS[kind]}; {_WHERE}]"


def _as_run(case: dict, execution: Execution) -> tuple[list[dict], object, str]:
    """The calls, the ``dtype`` the driver is given, and the output dtype under ``execution``.

    As :func:`aion_conformance.runner.run_vector` runs a case: an execution with a compute
    dtype (a mixed policy) gets the inputs rounded to it and is told that dtype.
    """
    dtypes = input_dtypes(case)
    given = case["input_dtypes"] if case.get("input_dtypes") else case["dtype"]
    compute = execution.compute_dtype
    if compute is None or set(dtypes.values()) == {compute}:
        return case["calls"], given, output_dtype_name(dtypes["x"], dtypes["y"])
    calls = [{**call, **{k: round_to(call[k], compute) for k in ("x", "y", "x_norm", "cotangent")
                         if call[k] is not None}} for call in case["calls"]]
    return calls, compute, compute


def check_invariants(driver, case: dict, execution: Execution) -> list[str]:
    """The failure messages of ``case``'s calls on ``driver`` under ``execution`` (empty: it holds)."""
    if execution.unavailable or not runs_under(case, execution):
        return []
    calls, given, out_dtype = _as_run(case, execution)
    layer = driver.make(case["config"])
    driver.set_state(layer, case["state"])
    k_update = case["config"].get("k_update", 1)
    messages = []
    for i, call in enumerate(calls):
        driver.set_params(layer, call["alpha0"], call["beta"])
        before = driver.get_state(layer)
        try:
            with np.errstate(all="ignore"):
                got = driver.call(layer, call["mode"], call["x"], call["y"], call["x_norm"],
                                  call["cotangent"] if has_grads(driver) else None, given)
        except Exception as e:  # noqa: BLE001 - a call that raises on valid data is the finding
            return messages + [f"{_label('crash')} call {i} ({call['mode']}) raised {type(e).__name__}: {str(e)[:300]}"]
        after = driver.get_state(layer)
        messages += [f"{label} call {i} ({call['mode']}): {text}"
                     for label, text in _call_faults(call, got, before, after, out_dtype, k_update)]
    return messages


def _call_faults(call: dict, got: dict, before: dict, after: dict, out_dtype: str,
                 k_update: int) -> list[tuple[str, str]]:
    faults = []
    if got.get("out_dtype") != out_dtype:
        faults.append((_label("out_dtype"), f"out_dtype {got.get('out_dtype')!r}, expected {out_dtype!r}"))
    if np.shape(got["out"]) != np.shape(call["x"]):
        faults.append((_label("out"), f"out of shape {np.shape(got['out'])}, x of {np.shape(call['x'])}"))
    ema = after["ratio_ema"]
    if not (math.isfinite(ema) and ema >= 0):
        faults.append((_label("nonfinite state"), f"state.ratio_ema = {ema}"))
    stats = got["stats"]
    if call["mode"] == "eval":
        if any(after[k] != before[k] for k in ("step_count", "nonfinite_count")) or not _same(
                after["ratio_ema"], before["ratio_ema"]):
            faults.append((_label("eval state"), f"state {before} -> {after}"))
        faults += _stats_faults(stats, after, call, stored=before["ratio_ema"])
        return faults + _ratio_gradient_faults(call, got)
    update = int(before["step_count"]) % k_update == 0
    if int(after["step_count"]) != int(before["step_count"]) + 1:
        faults.append((_label("state"), f"step_count {before['step_count']} -> {after['step_count']}"))
    guarded = int(after["nonfinite_count"]) - int(before["nonfinite_count"])
    if not update:
        if guarded or not _same(after["ratio_ema"], before["ratio_ema"]):
            faults.append((_label("state"), f"a hold step changed the state: {before} -> {after}"))
        faults += _stats_faults(stats, after, call, stored=before["ratio_ema"])
        return faults + _ratio_gradient_faults(call, got)
    with np.errstate(over="ignore"):
        ratio_finite = bool(np.isfinite(np.float32(stats["ratio"])))
    if guarded not in (0, 1) or bool(guarded) == ratio_finite:
        faults.append((_label("state"), f"nonfinite_count {before['nonfinite_count']} -> "
                                        f"{after['nonfinite_count']} with the ratio stat {stats['ratio']!r} "
                                        f"({'finite' if ratio_finite else 'not finite'} in float32)"))
    if guarded and not _same(after["ratio_ema"], before["ratio_ema"]):
        faults.append((_label("state"), f"the guard fired but ratio_ema {before['ratio_ema']} -> {after['ratio_ema']}"))
    faults += _stats_faults(stats, after, call, stored=None)
    return faults + (_ratio_gradient_faults(call, got) if guarded else [])


def _ratio_gradient_faults(call: dict, got: dict) -> list[tuple[str, str]]:
    """Spec 7: where the ratio carries no gradient, ``x_norm`` (used by the ratio alone) gets 0."""
    g = got.get("grads", {}).get("x_norm")
    arrays = [call[k] for k in ("x", "y", "x_norm", "cotangent")]
    if g is None or any(a is None or not np.isfinite(a).all() for a in arrays):
        return []
    if np.all(np.asarray(g) == 0):
        return []
    bad = np.asarray(g)[np.asarray(g) != 0]
    return [(_label("grad"), f"grad.x_norm is not 0 where no gradient flows through the ratio: "
                             f"{bad.size} elements, e.g. {bad.reshape(-1)[0]!r}")]


def _stats_faults(stats: dict, after: dict, call: dict, stored: float | None) -> list[tuple[str, str]]:
    """Spec 7a: ``ratio_ema`` is the state after the call, ``ratio`` the ``stored`` one on hold
    steps and in eval (None: an update step's batch ratio, unchecked), ``alpha`` in [0, alpha0]."""
    faults = []
    if not _same(stats["ratio_ema"], after["ratio_ema"]):
        faults.append((_label("stats"), f"stats.ratio_ema {stats['ratio_ema']!r} != state.ratio_ema "
                                        f"{after['ratio_ema']!r}"))
    if stored is not None and not _same(stats["ratio"], stored):
        faults.append((_label("stats"), f"stats.ratio {stats['ratio']!r}, the stored ratio is {stored!r}"))
    alpha = stats["alpha"]
    # alpha0 / (1 + beta * r_s) with 1 + beta * r_s >= 1: at most alpha0, in any rounding.
    if not (math.isfinite(alpha) and 0.0 <= alpha <= call["alpha0"]):
        faults.append((_label("stats"), f"stats.alpha = {alpha!r} outside [0, alpha0 = {call['alpha0']!r}]"))
    return faults
