"""Run drawn cases through one driver, in its own process, and save what disagrees.

Every driver gets the same examples (hypothesis with a fixed seed and no example database),
so running them all is a differential test: each is held to the float64 reference
(:func:`aion_conformance.runner.run_vector`) on valid cases, with the spec's tolerances,
and to the reference's error class, a message naming the argument and an unchanged state on
invalid ones (:func:`aion_conformance.runner.run_call_error`). The state must never hold a
NaN or inf (the runner checks it on every call). A failing example is shrunk and written to
``save_dir`` as a vector file (``found_<hash>.json``, the golden format), to be added to
``conformance/spec/cases.py`` as a fixed case once its cause is understood.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from aion_conformance.drivers.protocol import executions
from aion_conformance.fuzz.strategies import error_cases, vector_cases
from aion_conformance.registry import load_driver
from aion_conformance.runner import run_call_error, run_vector, runs_under
from aion_conformance.spec.golden import _dumps, encode, expected_case


def _check(driver, case: dict, every_execution: bool) -> list[str]:
    """The failure messages of one drawn case on ``driver`` (empty: it agrees)."""
    chosen = executions(driver) if every_execution else executions(driver)[:1]
    messages = []
    for execution in chosen:
        driver.execution = execution
        if "error" in case:
            if execution.errors:
                messages += run_call_error(driver, case, execution).messages
            continue
        if runs_under(case, execution) and execution.compute_dtype is None:
            result = run_vector(driver, expected_case(case), execution)
            messages += result.messages if result.status == "fail" else []
    driver.execution = executions(driver)[0]
    return messages


def fuzz(spec: str, examples: int, seed_value: int = 0, save_dir: str | None = None,
         every_execution: bool = False, progress: bool = False) -> dict:
    """``examples`` drawn cases through the driver ``spec`` (a registry name or ``module:Class``).

    Returns ``{"driver", "examples", "invalid", "seconds", "failure"}``; ``failure`` is None or
    ``{"messages", "file"}`` for the shrunk failing example.
    """
    driver = load_driver(spec)
    dtypes = tuple(driver.dtypes)
    ran, invalid, failed, start = [0], [0], {}, time.perf_counter()

    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @seed(seed_value)
    @given(st.one_of(vector_cases(dtypes), error_cases(dtypes)) if examples else vector_cases(dtypes))
    def check(case):
        ran[0] += 1
        invalid[0] += "error" in case
        if progress and ran[0] % 25 == 0:
            print(f"    {driver.name}: {ran[0]} examples, {time.perf_counter() - start:.0f} s", flush=True)
        messages = _check(driver, case, every_execution)
        if messages:
            failed.update(case=case, messages=messages)  # the last one raised is the shrunk one
            raise AssertionError(messages[0])

    failure = None
    try:
        check()
    except AssertionError:
        failure = {"messages": failed["messages"][:10], "file": _save(failed["case"], save_dir)}
    return {"driver": driver.name, "examples": ran[0], "invalid": invalid[0],
            "seconds": round(time.perf_counter() - start, 1), "failure": failure}


def _save(case: dict, save_dir: str | None) -> str | None:
    if save_dir is None:
        return None
    body = case if "error" in case else expected_case(case)
    text = _dumps(encode(body)) + "\n"
    path = Path(save_dir) / f"found_{hashlib.sha1(text.encode()).hexdigest()[:10]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def load_found(path) -> dict:
    """A saved example back as a case (for a regression test or cases.py)."""
    from aion_conformance.spec.golden import decode

    return decode(json.loads(Path(path).read_text()))


def replay(spec: str, path: str) -> list[str]:
    """The failure messages of a saved case on the driver ``spec`` (empty: it agrees now)."""
    case = load_found(path)
    case = {k: v for k, v in case.items() if k != "calls"} | {
        "calls": [{k: v for k, v in call.items() if k != "expected"} for call in case["calls"]]}
    return _check(load_driver(spec), case, every_execution=False)
