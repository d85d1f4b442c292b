"""Run one driver over every case and compare with the reference (spec "Conformance")."""

from __future__ import annotations

import copy
from dataclasses import asdict

from aion_conformance.drivers.protocol import ERROR_CLASSES, CheckResult, extra_checks, has_grads
from aion_conformance.spec.cases import CONFIG_ERRORS, call_error_cases
from aion_conformance.spec.golden import load_all
from aion_conformance.spec.tolerance import RTOL, compare
from aion_core import STATE_SPEC

#: State a layer holds before an error case: anything but the initial state.
_DIRTY_STATE = {"ratio_ema": 1.75, "step_count": 3, "nonfinite_count": 1}
#: Parameters are float32 everywhere, so their gradients are float32 at best.
_FLOAT32_QUANTITIES = ("grad.alpha0", "grad.beta")
#: Integer state, which must match exactly.
_COUNTERS = [name for name, (dtype, _, _) in STATE_SPEC.items() if dtype.startswith("int")]


def run_vector(driver, case: dict) -> CheckResult:
    res = CheckResult(driver.name, "vector", case["name"], case["dtype"], "pass")
    if case["dtype"] not in driver.dtypes:
        res.status, res.messages = "skip", [f"{driver.name} does not support {case['dtype']}"]
        return res
    rtol = RTOL[case["dtype"]]
    layer = driver.make(case["config"])
    driver.set_state(layer, case["state"])
    grads_ok = has_grads(driver)
    for i, call in enumerate(case["calls"]):
        driver.set_params(layer, call["alpha0"], call["beta"])
        cot = call["cotangent"] if grads_ok else None
        got = driver.call(layer, call["mode"], call["x"], call["y"], call["x_norm"], cot, case["dtype"])
        want = call["expected"]
        pairs = [("out", got["out"], want["out"])]
        pairs += [(f"stats.{k}", got["stats"][k], v) for k, v in want["stats"].items()]
        state = driver.get_state(layer)
        pairs.append(("state.ratio_ema", state["ratio_ema"], want["state"]["ratio_ema"]))
        for k in _COUNTERS:
            if int(state[k]) != int(want["state"][k]):
                res.messages.append(f"call {i}: state.{k} = {state[k]}, expected {want['state'][k]}")
        if cot is not None and "grads" in want:
            pairs += [(f"grad.{k}", got["grads"].get(k), v) for k, v in want["grads"].items()]
        for name, g, w in pairs:
            if g is None:
                res.messages.append(f"call {i}: {name} missing")
                continue
            tol = max(rtol, RTOL["float32"]) if name in _FLOAT32_QUANTITIES else rtol
            ok, a, r, why = compare(g, w, tol)
            res.max_abs, res.max_rel = max(res.max_abs, a), max(res.max_rel, r)
            if not ok:
                res.messages.append(f"call {i} ({call['mode']}): {name}: {why}")
    if res.messages:
        res.status = "fail"
    return res


def _expect_error(res: CheckResult, err_name: str, fn) -> bool:
    try:
        fn()
    except ERROR_CLASSES[err_name]:
        return True
    except Exception as e:  # noqa: BLE001 - the wrong class is the finding
        res.messages.append(f"raised {type(e).__name__} ({e}), expected {err_name}")
        return False
    res.messages.append(f"raised nothing, expected {err_name}")
    return False


def run_errors(driver) -> list[CheckResult]:
    results = []
    for config, err in CONFIG_ERRORS:
        res = CheckResult(driver.name, "config_error", f"config {config}", "-", "pass")
        _expect_error(res, err, lambda: driver.make(config))
        res.status = "fail" if res.messages else "pass"
        results.append(res)
    for case in call_error_cases():
        res = CheckResult(driver.name, "call_error", case["name"], case["dtype"], "pass")
        layer = driver.make(case["config"])
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


def run_driver(driver) -> list[CheckResult]:
    """Every vector and error case against ``driver``, plus the driver's own ``extra_checks()``."""
    return [run_vector(driver, c) for c in load_all()] + run_errors(driver) + extra_checks(driver)


def run_spec(spec: str) -> dict:
    """Load a driver (a registry name or ``module:Class``) and run it: the JSON-ready run."""
    from aion_conformance.registry import load_driver

    driver = load_driver(spec)
    return {"driver": driver.name, "versions": driver.versions(),
            "results": [asdict(r) for r in run_driver(driver)]}


def failed(run: dict) -> bool:
    """Whether a run (as from :func:`run_spec`) has a failing check."""
    return any(r["status"] == "fail" for r in run["results"])
