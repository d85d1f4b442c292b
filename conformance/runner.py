"""Run one driver over every case and compare with the reference (spec "Conformance")."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import asdict

from aion_conformance.drivers.protocol import (DEFAULT_EXECUTION, ERROR_CLASSES, INPUTS, PROTOCOL_VERSION,
                                               CheckResult, Execution, executions, extra_checks, has_complex, has_grads,
                                               spec_version_note)
from aion_conformance.spec import SPEC_VERSION
from aion_conformance.spec.cases import CONFIG_ERRORS, call_error_cases, loosest, output_dtype_name, portable_loads
from aion_conformance.spec.golden import load_all, recast_case
from aion_conformance.spec.tolerance import RTOL, SUBNORMAL_STEP, compare
from aion_conformance.spec.musts import MUSTS
from aion_conformance.trajectory.parity import hook_checks
from aion_core import STATE_SPEC

#: State a layer holds before an error case: anything but the initial state.
_DIRTY_STATE = {"ratio_ema": 1.75, "step_count": 3, "nonfinite_count": 1}
#: Parameters are float32 everywhere, so their gradients are float32 at best.
_FLOAT32_QUANTITIES = ("grad.alpha0", "grad.beta")
#: Integer state, which must match exactly.
_COUNTERS = [name for name, (dtype, _, _) in STATE_SPEC.items() if dtype.startswith("int")]


def _must(kind: str, case: dict | None = None) -> str:
    """``[label]``, with what the vector ``case`` targets (its ``must``) when it has one."""
    target = f"; {case['name']} targets {case['must']}" if case and case.get("must") else ""
    return f"[{MUSTS[kind]}{target}]"


def input_dtypes(case: dict) -> dict[str, str]:
    """Each input's dtype name: the case's ``input_dtypes`` (mixed cases), else its ``dtype``."""
    return case.get("input_dtypes") or dict.fromkeys(INPUTS, case["dtype"])


def _dtype_arg(case: dict):
    """What :meth:`Driver.call` receives as ``dtype``: one name, or a dict for mixed inputs."""
    return case["input_dtypes"] if case.get("input_dtypes") else case["dtype"]


def runs_under(case: dict, execution: Execution) -> bool:
    """Whether ``case`` is a cell of ``execution``: every input dtype is one it runs."""
    return set(input_dtypes(case).values()) <= set(execution.dtypes)


def run_vector(driver, case: dict, execution: Execution = DEFAULT_EXECUTION) -> CheckResult:
    """One golden-vector case under one execution: outputs, stats, state and gradients."""
    res = CheckResult(driver.name, "vector", case["name"], case["dtype"], "pass", execution=execution.name)
    unsupported = sorted(set(input_dtypes(case).values()) - set(driver.dtypes))
    if unsupported:
        res.status, res.messages = "skip", [f"{driver.name} does not support {', '.join(unsupported)}"]
        return res
    if execution.unavailable:
        res.status, res.messages = "skip", [f"not run ({execution.unavailable})"]
        return res
    given = _dtype_arg(case)  # what the driver is told
    if execution.compute_dtype is not None and set(input_dtypes(case).values()) != {execution.compute_dtype}:
        case = recast_case(case, execution.compute_dtype)
        given = _dtype_arg(case)
    elif execution.casts_inputs and case.get("input_dtypes"):
        # Inputs rounded to the output's dtype; each input's gradient comes back through the
        # cast, in the looser of its own dtype and that one.
        dtypes = case["input_dtypes"]
        target = output_dtype_name(dtypes["x"], dtypes["y"])
        held = {k: loosest([d, target]) for k, d in dtypes.items()}
        case = {**recast_case(case, target), "dtype": loosest(held.values()), "input_dtypes": held}
    try:
        _check_calls(driver, case, res, given)
    except Exception as e:  # noqa: BLE001 - a driver that cannot run a cell fails it, the others still run
        res.messages.append(f"{_must('crash', case)} raised {type(e).__name__}: {str(e)[:300]}")
        for part in res.parts.values() or [res.parts.setdefault("train fwd", [0.0, 0])]:
            part[1] = part[1] or 1  # the parts reached fail with it
    if res.messages:
        res.status = "fail"
    return res


def _check_calls(driver, case: dict, res: CheckResult, given) -> None:
    rtol = RTOL[case["dtype"]]
    dtypes = input_dtypes(case)
    out_dtype = output_dtype_name(dtypes["x"], dtypes["y"])
    acc_dtype = "float64" if "float64" in dtypes.values() else "float32"  # the stats' dtype (spec 7a)
    layer = driver.make(case["config"])
    driver.set_state(layer, case["state"])
    grads_ok = has_grads(driver)
    for i, call in enumerate(case["calls"]):
        driver.set_params(layer, call["alpha0"], call["beta"])
        cot = call["cotangent"] if grads_ok else None
        got = driver.call(layer, call["mode"], call["x"], call["y"], call["x_norm"], cot, given)
        want = call["expected"]
        if got.get("out_dtype") != out_dtype:
            res.parts.setdefault(f"{call['mode']} fwd", [0.0, 0])[1] += 1
            res.messages.append(f"{_must('out_dtype', case)} call {i}: out_dtype {got.get('out_dtype')!r}, "
                                f"expected {out_dtype!r} "
                                f"(x {dtypes['x']}, y {dtypes['y']}; spec section 4)")
        pairs = [("out", got["out"], want["out"])]
        pairs += [(f"stats.{k}", got["stats"][k], v) for k, v in want["stats"].items()]
        state = driver.get_state(layer)
        pairs.append(("state.ratio_ema", state["ratio_ema"], want["state"]["ratio_ema"]))
        state_kind = "eval state" if call["mode"] == "eval" else "state"
        if not math.isfinite(state["ratio_ema"]):
            res.messages.append(f"{_must('nonfinite state', case)} call {i}: state.ratio_ema = {state['ratio_ema']}")
        for k in _COUNTERS:
            if int(state[k]) != int(want["state"][k]):
                res.messages.append(f"{_must(state_kind, case)} call {i}: state.{k} = {state[k]}, "
                                    f"expected {want['state'][k]}")
        if cot is not None and "grads" in want:
            pairs += [(f"grad.{k}", got["grads"].get(k), v) for k, v in want["grads"].items()]
        for name, g, w in pairs:
            part = res.parts.setdefault(f"{call['mode']} {'bwd' if name.startswith('grad.') else 'fwd'}", [0.0, 0])
            if g is None:
                res.messages.append(f"{_must(_kind(name, call['mode']), case)} call {i}: {name} missing")
                part[1] += 1
                continue
            tol = max(rtol, RTOL["float32"]) if name in _FLOAT32_QUANTITIES else rtol
            # Arrays of an input's or the output's dtype: its subnormal step as an absolute floor.
            array_dtype = out_dtype if name == "out" else dtypes.get(name.removeprefix("grad."))
            # The stats are in the accumulation dtype: a float32 ratio past 3.4e38 is inf.
            overflow_dtype = acc_dtype if name.startswith("stats.") else array_dtype
            ok, a, r, why = compare(g, w, tol, SUBNORMAL_STEP.get(array_dtype, 0.0), overflow_dtype,
                                    want.get("grad_scales", {}).get(name.removeprefix("grad."), 0.0))
            res.max_abs, res.max_rel = max(res.max_abs, a), max(res.max_rel, r)
            part[0] = max(part[0], r)
            if not ok:
                part[1] += 1
                res.messages.append(f"{_must(_kind(name, call['mode']), case)} "
                                    f"call {i} ({call['mode']}): {name}: {why}")


def _kind(quantity: str, mode: str) -> str:
    """The :data:`MUSTS` key of a compared quantity ("out", "stats.alpha", "grad.y", ...)."""
    if quantity.startswith("state."):
        return "eval state" if mode == "eval" else "state"
    return quantity.split(".", 1)[0]


def _expect_error(res: CheckResult, err_name: str, argument: str, fn, where: str = "call") -> bool:
    """Whether ``fn()`` raises ``err_name`` with a message naming ``argument`` (spec sections 2, 8)."""
    try:
        fn()
    except ERROR_CLASSES[err_name] as e:
        if re.search(rf"(?<![\w.]){re.escape(argument)}(?!\w)", str(e)):
            return True
        res.messages.append(f"{_must(where + ' argument')} the message does not name {argument}: "
                            f"{type(e).__name__}({str(e)[:200]!r})")
        return False
    except Exception as e:  # noqa: BLE001 - the wrong class is the finding
        res.messages.append(f"{_must(where + ' class')} raised {type(e).__name__} ({e}), expected {err_name}")
        return False
    res.messages.append(f"{_must(where + ' class')} raised nothing, expected {err_name}")
    return False


def run_config_errors(driver) -> list[CheckResult]:
    results = []
    for config, err in CONFIG_ERRORS:
        res = CheckResult(driver.name, "config_error", f"config {config}", "-", "pass")
        _expect_error(res, err, next(iter(config)), lambda: driver.make(config), where="config")
        res.status = "fail" if res.messages else "pass"
        results.append(res)
    return results


def run_call_error(driver, case: dict, execution: Execution = DEFAULT_EXECUTION,
                   state: dict | None = None) -> CheckResult:
    """One call-error case: the spec's error class, a message naming the argument, and the
    state (``state``, or one that is not the initial state) unchanged by the failed call."""
    res = CheckResult(driver.name, "call_error", case["name"], case["dtype"] if isinstance(case["dtype"], str)
                      else "mixed", "pass", execution=execution.name)
    if execution.unavailable:
        res.status, res.messages = "skip", [f"not run ({execution.unavailable})"]
        return res
    dtypes = case["dtype"].values() if isinstance(case["dtype"], dict) else [case["dtype"]]
    if not has_complex(driver) and any(d.startswith("complex") for d in dtypes):
        res.status, res.messages = "skip", [f"{driver.name} has no complex dtype (spec section 1)"]
        return res
    layer = driver.make(case["config"])
    driver.set_state(layer, state or _DIRTY_STATE)
    before = copy.deepcopy(driver.get_state(layer))
    if _expect_error(res, case["error"], case["argument"], lambda: driver.call(
            layer, case["mode"], case["x"], case["y"], case["x_norm"], None, case["dtype"])):
        after = driver.get_state(layer)
        if {k: float(v) for k, v in after.items()} != {k: float(v) for k, v in before.items()}:
            res.messages.append(f"{_must('failed call state')} state changed by a failed call: {before} -> {after}")
    res.status = "fail" if res.messages else "pass"
    return res


def run_call_errors(driver, execution: Execution = DEFAULT_EXECUTION) -> list[CheckResult]:
    """Every call-error case of :func:`~aion_conformance.spec.cases.call_error_cases`."""
    return [run_call_error(driver, case, execution) for case in call_error_cases()]


def run_portable_loads(driver) -> list[CheckResult]:
    """Section 9's loader rules through the driver's optional ``load_portable`` (none without it):
    each refused load raises and leaves the state as it was; each accepted one gives its state."""
    load = getattr(driver, "load_portable", None)
    if load is None:
        return []
    results = []
    for name, entries, error, want in portable_loads():
        res = CheckResult(driver.name, "portable", name, "-", "pass")
        layer = driver.make({})
        driver.set_state(layer, _DIRTY_STATE)
        before = {k: float(v) for k, v in driver.get_state(layer).items()}
        try:
            load(layer, copy.deepcopy(entries))
        except Exception as e:  # noqa: BLE001 - a refusal of any class refuses; the class is a SHOULD
            if error is None:
                res.messages.append(f"{_must('portable')} refused a valid load: {type(e).__name__}: {str(e)[:200]}")
            else:
                after = {k: float(v) for k, v in driver.get_state(layer).items()}
                if after != before:
                    res.messages.append(f"{_must('portable')} a refused load changed the state: {before} -> {after}")
        else:
            if error is not None:
                res.messages.append(f"{_must('portable')} loaded {name}, which section 9 refuses ({error})")
            else:
                got = {k: float(v) for k, v in driver.get_state(layer).items()}
                if got != {k: float(v) for k, v in want.items()}:
                    res.messages.append(f"{_must('portable')} state after the load {got}, expected {want}")
        res.status = "fail" if res.messages else "pass"
        results.append(res)
    return results


def run_driver(driver) -> list[CheckResult]:
    """Every vector case under every execution of ``driver``, the error cases (the call errors
    under each execution that asks for them), the driver's own ``extra_checks()``, then
    trajectory parity and checkpoints if it has a ``trajectory`` hook."""
    results = run_config_errors(driver)
    cases = load_all()
    for execution in executions(driver):
        driver.execution = execution
        results += [run_vector(driver, c, execution) for c in cases if runs_under(c, execution)]
        if execution.errors:
            results += run_call_errors(driver, execution)
    driver.execution = executions(driver)[0]
    return results + run_portable_loads(driver) + extra_checks(driver) + hook_checks(driver)


def run_spec(spec: str) -> dict:
    """Load a driver (a registry name or ``module:Class``) and run it: the JSON-ready run."""
    from aion_conformance.registry import load_driver

    driver = load_driver(spec)
    note = spec_version_note(driver, SPEC_VERSION)
    return {"driver": driver.name, "versions": driver.versions(), "spec_version": SPEC_VERSION,
            "protocol_version": PROTOCOL_VERSION, "notes": [note] if note else [],
            "results": [asdict(r) for r in run_driver(driver)]}


def failed(run: dict) -> bool:
    """Whether a run (as from :func:`run_spec`) has a failing check."""
    return any(r["status"] == "fail" for r in run["results"])
