"""Differential fuzzing: every driver on the same drawn cases agrees with the float64 reference.

A bounded number of examples per driver here; ``-m slow`` runs a long one, and
``python -m aion_conformance.fuzz --examples N`` any number.
"""

import json

import pytest

from aion_conformance import registry
from aion_conformance.drivers.reference_driver import ReferenceDriver
from aion_conformance.fuzz.runner import fuzz, load_found
from aion_conformance.runner import run_vector

#: Examples per driver in the default run (about 15 s for a jitted driver) and in the slow one.
CI_EXAMPLES, LONG_EXAMPLES = 40, 1000


def _fuzz_in_own_process(backend, examples, tmp_path):
    return registry.call("aion_conformance.fuzz.runner:fuzz", backend, examples, 0, str(tmp_path),
                         backend=backend, timeout=3000)


@pytest.mark.parametrize("backend", list(registry.BACKENDS))
def test_driver_agrees_with_the_reference_on_drawn_cases(backend, tmp_path):
    result = _fuzz_in_own_process(backend, CI_EXAMPLES, tmp_path)
    print(json.dumps(result))
    assert result["examples"] == CI_EXAMPLES and result["invalid"] > 0
    assert result["failure"] is None, result["failure"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(registry.BACKENDS))
def test_driver_agrees_on_a_long_run(backend, tmp_path):
    result = _fuzz_in_own_process(backend, LONG_EXAMPLES, tmp_path)
    print(json.dumps(result))
    assert result["failure"] is None, result["failure"]


class _DropsTheGuard(ReferenceDriver):
    """Stores a non-finite ratio: what the fuzzer must find."""

    name = "fuzz-no-guard"

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        result = super().call(layer, mode, x, y, x_norm, cotangent, dtype)
        if mode == "train" and not all(t is None or (t == t).all() and abs(t).max() < float("inf")
                                       for t in (x, y, x_norm)):
            layer["state"]["ratio_ema"] = float("nan")
        return result


def test_the_fuzzer_finds_a_wrong_driver_and_saves_a_case_that_reproduces_it(tmp_path):
    result = fuzz(f"{__name__}:_DropsTheGuard", 200, 0, str(tmp_path))
    assert result["failure"] is not None
    assert any("non-finite data never reaches the state" in m for m in result["failure"]["messages"])
    case = load_found(result["failure"]["file"])  # a vector file: the wrong driver fails it, the reference passes
    assert run_vector(_DropsTheGuard(), case).status == "fail"
    assert run_vector(ReferenceDriver(), case).status == "pass"
