"""Differential fuzzing: every driver on the same drawn cases agrees with the float64 reference.

A bounded number of examples per driver here; ``-m slow`` runs a long one, and
``python -m aion_conformance.fuzz --examples N`` (``nox -s fuzz -- --examples N``) any number.
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from aion_conformance import registry
from aion_conformance.drivers.reference_driver import ReferenceDriver
from aion_conformance.fuzz.runner import fuzz, load_found, replay
from aion_conformance.spec.musts import MUSTS

#: Examples per driver in the default run (the whole file about 2 minutes on 2 CPU cores,
#: the jitted drivers, Flax and Keras on JAX, the slowest at about 0.3 s an example) and in
#: the slow one.
CI_EXAMPLES, LONG_EXAMPLES = 80, 1000


FIXTURES = Path(__file__).parent / "fixtures"


def _fuzz_in_own_process(backend, examples, tmp_path):
    return registry.call("aion_conformance.fuzz.runner:fuzz", backend, examples, 0, str(tmp_path),
                         backend=backend, timeout=3000)


@pytest.mark.parametrize("backend", list(registry.BACKENDS))
def test_driver_agrees_with_the_reference_on_drawn_cases(backend, tmp_path):
    result = _fuzz_in_own_process(backend, CI_EXAMPLES, tmp_path)
    print(json.dumps(result))
    assert result["failure"] is None, result["failure"]
    assert result["examples"] == CI_EXAMPLES and all(n > 0 for n in result["counts"].values()), result["counts"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(registry.BACKENDS))
def test_driver_agrees_on_a_long_run(backend, tmp_path):
    result = _fuzz_in_own_process(backend, LONG_EXAMPLES, tmp_path)
    print(json.dumps(result))
    assert result["failure"] is None, result["failure"]
    assert result["examples"] == LONG_EXAMPLES


def _finite(*arrays) -> bool:
    return all(t is None or np.isfinite(t).all() for t in arrays)


class _DropsTheGuard(ReferenceDriver):
    """Stores NaN after a training call on non-finite data: no guard (spec 5)."""

    name = "fuzz-no-guard"

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        result = super().call(layer, mode, x, y, x_norm, cotangent, dtype)
        if mode == "train" and not _finite(x, y, x_norm):
            layer["state"]["ratio_ema"] = float("nan")
        return result


class _ScalesTheOutput(ReferenceDriver):
    """Returns ``out * (1 + 1e-3)``: within float16's and bfloat16's tolerance, not float32's (spec 4)."""

    name = "fuzz-scaled-output"

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        result = super().call(layer, mode, x, y, x_norm, cotangent, dtype)
        return {**result, "out": result["out"] * (1 + 1e-3)}


class _GuardsInFloat64(ReferenceDriver):
    """Guards the float64 ratio instead of ``float32(r)``: a float64 ratio beyond float32's range
    reaches the state as inf (spec 5). Only ratios beyond the compared region show it."""

    name = "fuzz-float64-guard"

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        before = dict(layer["state"])
        result = super().call(layer, mode, x, y, x_norm, cotangent, dtype)
        ratio, gamma = result["stats"]["ratio"], layer["config"].ema_gamma
        if mode == "train" and math.isfinite(ratio) and layer["state"]["nonfinite_count"] > before["nonfinite_count"]:
            with np.errstate(over="ignore"):
                ema = np.float32(ratio if gamma == 1.0 else gamma * before["ratio_ema"] + (1.0 - gamma) * ratio)
            layer["state"] = {**before, "ratio_ema": float(ema), "step_count": before["step_count"] + 1}
        return result


class _CountsFailedCalls(ReferenceDriver):
    """Counts a training call that raises as a step: a failed call changes the state (spec 5)."""

    name = "fuzz-counts-failed-calls"

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        try:
            return super().call(layer, mode, x, y, x_norm, cotangent, dtype)
        except (TypeError, ValueError):
            if mode == "train":
                layer["state"]["step_count"] += 1
            raise


#: Each wrong driver, the kinds of drawn case that may catch it and the MUST it breaks.
_WRONG = [(_DropsTheGuard, {"vector", "beyond"}, MUSTS["nonfinite state"]),
          (_ScalesTheOutput, {"vector"}, MUSTS["out"]),
          (_GuardsInFloat64, {"beyond"}, MUSTS["nonfinite state"]),
          (_CountsFailedCalls, {"invalid"}, MUSTS["failed call state"])]


@pytest.mark.parametrize("wrong, kinds, must", _WRONG, ids=[w.name for w, *_ in _WRONG])
def test_the_fuzzer_finds_a_wrong_driver_and_saves_a_case_that_reproduces_it(wrong, kinds, must, tmp_path):
    spec = f"{__name__}:{wrong.__name__}"
    failure = fuzz(spec, 300, 0, str(tmp_path))["failure"]
    assert failure is not None and failure["kind"] in kinds, failure
    assert any(must in m for m in failure["messages"]), failure["messages"]
    saved = load_found(failure["file"])
    assert ("error" in saved) == (failure["kind"] == "invalid")
    # The saved file reproduces it: the wrong driver fails it, the reference passes it.
    assert any(must in m for m in replay(spec, failure["file"]))
    assert replay("numpy", failure["file"]) == []


def _cli(tmp_path, *args):
    env = {"PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")])}
    return registry.spawn(["-m", "aion_conformance.fuzz", "--out", str(tmp_path), "--examples", "10", *args],
                          env=env, timeout=300)


def test_cli_selects_an_outside_driver_by_its_name_and_exits_as_the_suite_does(tmp_path):
    """As ``python -m aion_conformance``: --only takes an outside driver's name; exit 0 when it
    agrees, 1 when a driver disagrees or crashes, 2 for a name no driver has."""
    proc = _cli(tmp_path / "good", "--only", "outside-numpy", "--driver", "outside_driver:OutsideDriver")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["driver"] for r in json.loads((tmp_path / "good" / "fuzz.json").read_text())] == ["outside-numpy"]
    proc = _cli(tmp_path / "wrong", "--only", "wrong-external", "--driver", "wrong_driver:WrongDriver")
    assert proc.returncode == 1 and "DISAGREES" in proc.stdout, proc.stdout + proc.stderr
    proc = _cli(tmp_path / "crash", "--only", "numpy", "--driver", "no_such_module:Driver")
    assert proc.returncode == 1 and "crashed" in proc.stdout and "no_such_module" in proc.stdout, proc.stdout
    proc = _cli(tmp_path / "unknown", "--only", "no-such-driver")
    assert proc.returncode == 2 and "unknown driver no-such-driver" in proc.stderr, proc.stderr
