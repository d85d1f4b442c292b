"""Run one driver over every case and compare with the reference (spec "Conformance")."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from conformance.cases import CONFIG_ERRORS, call_error_cases
from conformance.driver import ERROR_CLASSES
from conformance.dtypes import RTOL
from conformance.vectors import load_all

#: State a layer holds before an error case: anything but the initial state.
_DIRTY_STATE = {"ratio_ema": 1.75, "step_count": 3, "nonfinite_count": 1}


_FLOAT32_QUANTITIES = ("grad.alpha0", "grad.beta")


@dataclass
class Result:
    driver: str
    check: str  # "vector", "config_error", "call_error"
    case: str
    dtype: str
    status: str  # "pass", "fail", "skip"
    max_abs: float = 0.0
    max_rel: float = 0.0
    messages: list[str] = field(default_factory=list)


def compare(got, want, rtol: float) -> tuple[bool, float, float, str]:
    """Elementwise ``|got - want| <= rtol * (|want| + max|want|)``; NaN must meet NaN.

    Returns ``(ok, max_abs, max_rel, why)`` where ``max_rel = max_abs / max|want|``.
    """
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        return False, np.inf, np.inf, f"shape {got.shape} != expected {want.shape}"
    nan_w, nan_g = np.isnan(want), np.isnan(got)
    if not np.array_equal(nan_w, nan_g):
        return False, np.inf, np.inf, f"NaN at {int((nan_w != nan_g).sum())} unexpected places"
    ok = ~nan_w
    if not ok.any():
        return True, 0.0, 0.0, ""
    err = np.abs(got[ok] - want[ok])
    scale = float(np.max(np.abs(want[ok])))
    max_abs = float(err.max())
    max_rel = max_abs / scale if scale > 0 else max_abs
    passed = bool(np.all(err <= rtol * (np.abs(want[ok]) + scale)))
    return passed, max_abs, max_rel, "" if passed else f"max abs error {max_abs:.3g} (rtol {rtol:g})"


def run_vector(driver, case: dict) -> Result:
    res = Result(driver.name, "vector", case["name"], case["dtype"], "pass")
    if case["dtype"] not in driver.dtypes:
        res.status, res.messages = "skip", [f"{driver.name} does not support {case['dtype']}"]
        return res
    rtol = RTOL[case["dtype"]]
    layer = driver.make(case["config"])
    driver.set_state(layer, case["state"])
    grads_ok = getattr(driver, "has_grads", True)
    for i, call in enumerate(case["calls"]):
        driver.set_params(layer, call["alpha0"], call["beta"])
        cot = call["cotangent"] if grads_ok else None
        got = driver.call(layer, call["mode"], call["x"], call["y"], call["x_norm"], cot, case["dtype"])
        want = call["expected"]
        pairs = [("out", got["out"], want["out"])]
        pairs += [(f"stats.{k}", got["stats"][k], v) for k, v in want["stats"].items()]
        state = driver.get_state(layer)
        pairs.append(("state.ratio_ema", state["ratio_ema"], want["state"]["ratio_ema"]))
        for k in ("step_count", "nonfinite_count"):
            if int(state[k]) != int(want["state"][k]):
                res.messages.append(f"call {i}: state.{k} = {state[k]}, expected {want['state'][k]}")
        if cot is not None and "grads" in want:
            pairs += [(f"grad.{k}", got["grads"].get(k), v) for k, v in want["grads"].items()]
        for name, g, w in pairs:
            if g is None:
                res.messages.append(f"call {i}: {name} missing")
                continue
            # Parameters are float32 everywhere, so their gradients are float32 at best.
            tol = max(rtol, RTOL["float32"]) if name in _FLOAT32_QUANTITIES else rtol
            ok, a, r, why = compare(g, w, tol)
            res.max_abs, res.max_rel = max(res.max_abs, a), max(res.max_rel, r)
            if not ok:
                res.messages.append(f"call {i} ({call['mode']}): {name}: {why}")
    if res.messages:
        res.status = "fail"
    return res


def _expect_error(res: Result, err_name: str, fn) -> bool:
    try:
        fn()
    except ERROR_CLASSES[err_name]:
        return True
    except Exception as e:  # noqa: BLE001 - the wrong class is the finding
        res.messages.append(f"raised {type(e).__name__} ({e}), expected {err_name}")
        return False
    res.messages.append(f"raised nothing, expected {err_name}")
    return False


def run_errors(driver) -> list[Result]:
    results = []
    for config, err in CONFIG_ERRORS:
        res = Result(driver.name, "config_error", f"config {config}", "-", "pass")
        _expect_error(res, err, lambda: driver.make(config))
        res.status = "fail" if res.messages else "pass"
        results.append(res)
    for case in call_error_cases():
        res = Result(driver.name, "call_error", case["name"], case["dtype"], "pass")
        layer = driver.make({})
        driver.set_state(layer, _DIRTY_STATE)
        before = copy.deepcopy(driver.get_state(layer))
        if _expect_error(res, case["error"], lambda: driver.call(
                layer, case["mode"], case["x"], case["y"], case["x_norm"], None, case["dtype"])):
            after = driver.get_state(layer)
            if {k: float(v) for k, v in after.items()} != {k: float(v) for k, v in before.items()}:
                res.messages.append(f"state changed by a failed call: {before} -> {after}")
        res.status = "fail" if res.messages else "pass"
        results.append(res)
    return results


def run_driver(driver) -> list[Result]:
    """Every vector and error case against ``driver``, plus the driver's own ``extra_checks()``."""
    extra = driver.extra_checks() if hasattr(driver, "extra_checks") else []
    return [run_vector(driver, c) for c in load_all()] + run_errors(driver) + extra
