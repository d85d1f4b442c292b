"""aion-torch 1.0.2's own test suite, run against aion_pytorch with only the import lines rewritten.

``scripts/install.sh`` downloads the original's sdist and unpacks its ``tests/`` into the ignored
``.original/`` (the original's code is never committed here). This module copies those files to a
temporary folder, rewrites each import line (``from aion_torch[.module] import X`` becomes
``from aion_pytorch import X``; nothing else changes), runs them once with pytest in a subprocess
and turns each of the original's tests into one test here: it passes when the original's test
passed. The tests that contradict a deliberate difference (docs/migrating.md) are listed,
each with its difference, in ``original_suite_xfails.txt`` and marked ``xfail(strict=True)``, so
a listed test that starts passing fails the run.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from aion_conformance.registry import spawn

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / ".original" / "aion_torch-1.0.2" / "tests"
XFAILS = Path(__file__).with_name("original_suite_xfails.txt")
DIFFERENCES = ROOT / "docs" / "migrating.md"
#: How many tests aion-torch 1.0.2's sdist holds (on a machine without CUDA one skips itself: test_device_placement).
ORIGINAL_TEST_COUNT = 74
MISSING = (f"aion-torch 1.0.2's test suite is not in {SUITE.relative_to(ROOT)}/: run scripts/install.sh "
           "(it downloads the sdist: pip download --no-deps --no-binary :all: aion-torch==1.0.2)")
needs_suite = pytest.mark.skipif(not SUITE.is_dir(), reason=MISSING)

_FROM_IMPORT = re.compile(r"^(\s*)from\s+aion_torch(?:\.\w+)*\s+import\s")
_IMPORT = re.compile(r"^(\s*)import\s+aion_torch\b")


def rewrite_imports(source: str) -> str:
    """``source`` with its import lines of ``aion_torch`` (or a submodule) made ``aion_pytorch``.

    aion_pytorch has no submodules named like the original's (``aion_adapter``, ``adapters``,
    ``alpha``, ``energy``): its public names are at the top, as in ``aion_torch``'s ``__all__``.

    Raises
    ------
    ValueError
        ``aion_torch`` appears on a line that is not an import (it would need more than the
        import lines rewritten).
    """
    lines = []
    for number, line in enumerate(source.splitlines(keepends=True), 1):
        if m := _FROM_IMPORT.match(line):
            line = f"{m.group(1)}from aion_pytorch import {line[m.end():]}"
        elif m := _IMPORT.match(line):
            line = f"{m.group(1)}import aion_pytorch{line[m.end():]}"
        elif "aion_torch" in line:
            raise ValueError(f"line {number} names aion_torch outside an import: {line.strip()!r}")
        lines.append(line)
    return "".join(lines)


def static_test_ids(folder: Path) -> list[str]:
    """The node ids pytest collects from ``folder``'s ``test_*.py`` (no parametrization there)."""
    ids = []
    for path in sorted(folder.glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
                ids.append(f"{path.name}::{node.name}")
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                ids += [f"{path.name}::{node.name}::{f.name}" for f in node.body
                        if isinstance(f, ast.FunctionDef) and f.name.startswith("test")]
    return ids


def read_xfails(path: Path = XFAILS) -> dict[str, tuple[int, str]]:
    """``{node id: (difference number, reason)}`` from the list's ``ID  # N: reason`` lines."""
    listed = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"(\S+)\s+#\s*(\d+):\s*(\S.*)", line.strip())
        if m is None:
            raise ValueError(f"{path.name}:{number}: expected 'ID  # N: reason', got {line!r}")
        if m.group(1) in listed:
            raise ValueError(f"{path.name}:{number}: {m.group(1)} is listed twice")
        listed[m.group(1)] = (int(m.group(2)), m.group(3))
    return listed


def spec_differences(path: Path = DIFFERENCES) -> set[int]:
    """The numbers of the rows of docs/migrating.md's table of differences."""
    text = path.read_text()
    section = text[text.index("## Every behavioural difference"):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    return {int(n) for n in re.findall(r"^\|\s*(\d+)\s*\|", section, flags=re.M)}


XFAIL = read_xfails()
_PLUGIN = '''
import json, os

_outcomes = {}


def pytest_runtest_logreport(report):
    rec = _outcomes.setdefault(report.nodeid, {"outcome": None, "message": ""})
    if report.failed:
        if rec["outcome"] not in ("failed", "error"):
            rec["outcome"] = "failed" if report.when == "call" else "error"
            rec["message"] = report.longreprtext[-3000:]
    elif report.skipped:
        rec["outcome"] = "skipped"
        rec["message"] = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    elif report.when == "call" and rec["outcome"] is None:
        rec["outcome"] = "passed"


def pytest_sessionfinish(session):
    with open(os.environ["AION_ORIGINAL_OUTCOMES"], "w") as f:
        json.dump(_outcomes, f, indent=1)
'''


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    """Run the rewritten suite once; ``{node id: {"outcome", "message"}}``."""
    tmp = tmp_path_factory.mktemp("aion-torch-1.0.2-tests")
    for path in SUITE.glob("*.py"):
        (tmp / path.name).write_text(rewrite_imports(path.read_text()))
    (tmp / "pytest.ini").write_text("[pytest]\n")  # rootdir here; none of our own settings
    plugin = tmp_path_factory.mktemp("plugin")
    (plugin / "aion_outcomes_plugin.py").write_text(_PLUGIN)
    result = tmp / "outcomes.json"
    path = os.pathsep.join(filter(None, [str(plugin), os.environ.get("PYTHONPATH")]))
    proc = spawn(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "aion_outcomes_plugin",
                  "-c", str(tmp / "pytest.ini"), str(tmp)],
                 env={"PYTHONPATH": path, "AION_ORIGINAL_OUTCOMES": str(result)}, timeout=600, cwd=tmp)
    # pytest exits 1 when a test failed (the listed ones do); anything else is a broken run.
    assert proc.returncode in (0, 1) and result.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    shutil.rmtree(plugin, ignore_errors=True)
    return json.loads(result.read_text())


def _params():
    if not SUITE.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=MISSING), id="suite-missing")]
    return [pytest.param(test_id, id=test_id, marks=[pytest.mark.xfail(
                strict=True, raises=AssertionError,
                reason=f"difference {XFAIL[test_id][0]} (docs/migrating.md): {XFAIL[test_id][1]}")]
                if test_id in XFAIL else [])
            for test_id in static_test_ids(SUITE)]


@pytest.mark.parametrize("test_id", _params())
def test_original(test_id, outcomes):
    """One of aion-torch 1.0.2's tests, run against aion_pytorch: it must pass (or be listed)."""
    got = outcomes.get(test_id)
    assert got is not None, f"{test_id} did not run"
    if got["outcome"] == "skipped":
        pytest.skip(f"the original's test skipped itself: {got['message']}")
    assert got["outcome"] == "passed", f"{test_id} {got['outcome']}:\n{got['message']}"


@needs_suite
def test_every_original_test_is_run_and_accounted_for(outcomes):
    ids = static_test_ids(SUITE)
    assert len(ids) == ORIGINAL_TEST_COUNT
    assert sorted(outcomes) == sorted(ids)  # what the run collected is what we parametrized
    assert set(XFAIL) <= set(ids), sorted(set(XFAIL) - set(ids))


@needs_suite
def test_only_import_lines_are_rewritten():
    for path in SUITE.glob("*.py"):
        before = path.read_text().splitlines()
        after = rewrite_imports(path.read_text()).splitlines()
        assert len(after) == len(before)
        changed = [(b, a) for b, a in zip(before, after) if a != b]
        assert changed and all(re.match(r"\s*(from|import)\s+aion_torch\b", b) for b, _ in changed), changed
        assert "aion_torch" not in "\n".join(after)


def test_xfail_list_cites_differences_of_the_spec():
    assert XFAIL, "the list is empty: remove the xfail machinery or fill it"
    documented = spec_differences()
    for test_id, (difference, reason) in XFAIL.items():
        assert difference in documented, f"{test_id}: difference {difference} is not in docs/migrating.md"
        assert re.fullmatch(r"test_\w+\.py::(\w+::)?test_\w+", test_id) and reason


def test_rewrite_imports():
    src = "from aion_torch.aion_adapter import AionResidual  # type: ignore\nimport aion_torch\nx = 1\n"
    assert rewrite_imports(src) == ("from aion_pytorch import AionResidual  # type: ignore\n"
                                    "import aion_pytorch\nx = 1\n")
    with pytest.raises(ValueError, match="outside an import"):
        rewrite_imports('patch("aion_torch.energy")\n')
