"""The suite rejects a deliberately wrong implementation of each MUST, naming the MUST it breaks.

Each fixture of ``tests/fixtures/wrong_drivers.py`` breaks one MUST; run through the whole
suite (``run_driver``, in-process: numpy drivers take well under a second each), the checks
written for that MUST (``caught_by``) must fail and carry that MUST's label (other checks it
fails may name a consequence, as a wrong ratio also makes wrong gradients).
"""

import re
import sys
from pathlib import Path

import pytest

from aion_conformance.drivers.reference_driver import ReferenceDriver
from aion_conformance.runner import run_driver
from aion_conformance.spec.musts import MUSTS
from aion_conformance.spec.cases import CASE_MUSTS

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import wrong_drivers  # noqa: E402

#: ``[label]`` or ``[label; <vector> targets <its must>]`` at the start of every failure message.
_LABEL = re.compile(r"\[(spec [^;\]]+)(?:; (\S+) targets ([^\]]+))?\] ")


def labels(message: str) -> set[str]:
    """The MUSTs a failure message names: the runner's label and what its vector targets."""
    match = _LABEL.match(message)
    assert match, f"a failure message names no MUST: {message!r}"
    return {match[1], match[3]} - {None}


@pytest.mark.parametrize("fixture", wrong_drivers.ALL, ids=lambda cls: cls.name)
def test_each_wrong_driver_is_rejected_naming_the_must_it_breaks(fixture):
    assert fixture.breaks in set(MUSTS.values()) | set(CASE_MUSTS.values()), fixture.breaks
    failures = [r for r in run_driver(fixture()) if r.status == "fail"]
    assert failures, f"{fixture.name} passed every check"
    named = {r.case: set().union(*map(labels, r.messages)) for r in failures}
    assert any(fixture.breaks in n for n in named.values()), (fixture.name, failures[0].messages[:3])
    missed = set(fixture.caught_by) - set(named)
    assert not missed, f"{fixture.name} passes {sorted(missed)}, written for the MUST it breaks"
    # The checks written for that MUST name it (others it fails may name a consequence too).
    unnamed = [case for case in fixture.caught_by if fixture.breaks not in named[case]]
    assert not unnamed, (fixture.name, unnamed)


def test_the_fixtures_are_distinct_and_each_documents_its_must():
    assert len({cls.name for cls in wrong_drivers.ALL}) == len(wrong_drivers.ALL)
    assert all(cls.__doc__ and "spec" in cls.__doc__ for cls in wrong_drivers.ALL)


def test_the_reference_driver_passes_every_check():
    results = run_driver(ReferenceDriver())
    assert results and all(r.status == "pass" for r in results), [r.messages for r in results if r.status != "pass"]
