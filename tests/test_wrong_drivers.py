"""The suite rejects a deliberately wrong implementation of each MUST, naming the MUST it breaks."""

import sys
from pathlib import Path

import pytest

from aion_conformance.drivers.reference_driver import ReferenceDriver
from aion_conformance.runner import run_driver

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import wrong_drivers  # noqa: E402


@pytest.mark.parametrize("fixture", wrong_drivers.ALL, ids=lambda cls: cls.name)
def test_each_wrong_driver_is_rejected_naming_the_must_it_breaks(fixture):
    failures = [r for r in run_driver(fixture()) if r.status == "fail"]
    assert failures, f"{fixture.name} passed every check"
    messages = [m for r in failures for m in r.messages]
    assert all(m.startswith("[spec ") for m in messages), [m for m in messages if not m.startswith("[spec ")]
    assert any(fixture.breaks in m for m in messages), (fixture.breaks, messages[:5])


def test_the_reference_driver_passes_every_check():
    results = run_driver(ReferenceDriver())
    assert results and all(r.status == "pass" for r in results)
