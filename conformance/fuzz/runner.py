"""Run drawn cases through one driver, in its own process, and save what disagrees.

Every driver gets the same examples (hypothesis with a fixed seed and no example database;
drivers of the same dtypes draw the same cases), so running them all is a differential
test: each is held to the float64 reference (:func:`aion_conformance.runner.run_vector`) on
the cases of the compared region, with the spec's tolerances; to the invariants of
:mod:`aion_conformance.fuzz.invariants` beyond it (no NaN or inf in the state, the guard
where the ratio is not finite in float32, ...); and to the reference's error class, a
message naming the argument and an unchanged state on invalid calls
(:func:`aion_conformance.runner.run_call_error`). The state must never hold a NaN or inf
(checked on every call of every kind). A failing example is shrunk and written to
``save_dir`` as a vector file (``found_<hash>.json``, the golden format); see
``docs/conformance.md`` for how it becomes a fixed case of the suite.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from aion_conformance.drivers.protocol import FLOAT_DTYPES, executions
from aion_conformance.fuzz.invariants import check_invariants
from aion_conformance.fuzz.strategies import beyond_cases, error_cases, vector_cases
from aion_conformance.registry import load_driver
from aion_conformance.runner import run_call_error, run_vector, runs_under
from aion_conformance.spec.golden import _dumps, expected_case
from aion_conformance.spec.json_numbers import decode, encode

#: Progress lines (with ``progress``) about this many times a run, at most every 10 examples.
_PROGRESS_LINES = 20


def kind(case: dict) -> str:
    """``"invalid"`` (a call error case), ``"beyond"`` (invariants only) or ``"vector"``."""
    return "invalid" if "error" in case else case.get("region", "vector")


def cases(dtypes):
    """Every kind of drawn case, for a driver of these dtypes."""
    return st.one_of(vector_cases(dtypes), beyond_cases(dtypes), error_cases(dtypes))


def check(driver, case: dict, every_execution: bool = False) -> list[str]:
    """The failure messages of one case on ``driver`` (empty: it agrees).

    Under the driver's first execution (its default), or every one it lists.
    """
    chosen = executions(driver) if every_execution else executions(driver)[:1]
    messages = []
    try:
        for execution in chosen:
            driver.execution = execution
            name = f"<{execution.name}> " if every_execution else ""
            if kind(case) == "invalid":
                if execution.errors:
                    result = run_call_error(driver, case, execution, state=case["state"])
                    messages += [name + m for m in result.messages] if result.status == "fail" else []
            elif kind(case) == "beyond":
                messages += [name + m for m in check_invariants(driver, case, execution)]
            elif runs_under(case, execution):
                with np.errstate(all="ignore"):
                    result = run_vector(driver, expected_case(case), execution)
                messages += [name + m for m in result.messages] if result.status == "fail" else []
    finally:
        driver.execution = executions(driver)[0]
    return messages


def fuzz(spec: str, examples: int, seed_value: int = 0, save_dir: str | None = None,
         every_execution: bool = False, progress: bool = False) -> dict:
    """``examples`` drawn cases through the driver ``spec`` (a registry name or ``module:Class``).

    Returns ``{"driver", "examples", "counts" (by :func:`kind`), "invalid", "seconds",
    "failure"}``; ``failure`` is None or ``{"messages", "file", "kind"}`` for the shrunk
    failing example.
    """
    driver = load_driver(spec)
    dtypes = tuple(d for d in FLOAT_DTYPES if d in driver.dtypes)
    counts, failed, start = dict.fromkeys(("vector", "beyond", "invalid"), 0), {}, time.perf_counter()

    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @seed(seed_value)
    @given(cases(dtypes))
    def one(case):
        if not failed:  # the generation phase (shrinking replays are not counted)
            counts[kind(case)] += 1
            ran = sum(counts.values())
            if progress and ran % max(10, examples // _PROGRESS_LINES) == 0:
                print(f"    {driver.name}: {ran}/{examples} examples, {time.perf_counter() - start:.0f} s",
                      file=sys.stderr, flush=True)  # stderr: registry.call(echo=True) shows it as it comes
        messages = check(driver, case, every_execution)
        if messages:
            failed.update(case=case, messages=messages)  # the last one raised is the shrunk one
            raise AssertionError(messages[0])

    failure = None
    try:
        one()
    except AssertionError:
        failure = {"messages": failed["messages"][:10], "kind": kind(failed["case"]),
                   "file": save(failed["case"], save_dir)}
    return {"driver": driver.name, "examples": sum(counts.values()), "counts": counts,
            "invalid": counts["invalid"], "seconds": round(time.perf_counter() - start, 1), "failure": failure}


def save(case: dict, save_dir: str | None) -> str | None:
    """Write a drawn case as ``save_dir/found_<hash>.json``; its path (None without ``save_dir``).

    A vector case is written with the reference's answers (the golden format, as
    ``conformance/vectors/``); a beyond case too, with ``"region": "beyond"`` (its answers
    are the reference's, which it is not held to); an invalid call as in ``errors.json``
    (the inputs' shapes, their dtypes in ``dtype``).
    """
    if save_dir is None:
        return None
    if kind(case) == "invalid":
        body = {**case, **{k: None if case[k] is None else list(np.shape(case[k])) for k in ("x", "y", "x_norm")}}
    else:
        with np.errstate(all="ignore"):
            body = expected_case(case)
        body = {**body, "region": "beyond"} if kind(case) == "beyond" else body
    text = _dumps(encode(body)) + "\n"
    path = Path(save_dir) / f"found_{hashlib.sha1(text.encode()).hexdigest()[:10]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def load_found(path) -> dict:
    """A saved case back (for a regression test, a replay or ``conformance/spec/found/``)."""
    case = decode(json.loads(Path(path).read_text()))
    if "error" not in case:
        return case
    dtype = case["dtype"]
    for k in ("x", "y", "x_norm"):
        name = dtype.get(k) if isinstance(dtype, dict) else dtype
        if case[k] is not None:
            shape = tuple(int(n) for n in case[k])
            case[k] = np.ones(shape, np.float64 if name in FLOAT_DTYPES else name)
    return case


def replay(spec: str, path: str, every_execution: bool = False) -> list[str]:
    """The failure messages of a saved case on the driver ``spec`` (empty: it agrees now)."""
    case = load_found(path)
    if "calls" in case:  # drop the stored answers: the reference gives them anew
        case = {**case, "calls": [{k: v for k, v in call.items() if k != "expected"} for call in case["calls"]]}
    return check(load_driver(spec), case, every_execution)
