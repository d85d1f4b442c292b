"""`python -m aion_conformance` end to end: outside drivers, selection, exit codes, the report."""

import json
import os
from pathlib import Path

from aion_conformance import registry
from aion_conformance.report import write_report

FIXTURES = Path(__file__).parent / "fixtures"


def _run(tmp_path, *args):
    env = {"PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")])}
    return registry.spawn(["-m", "aion_conformance", "--out", str(tmp_path), *args], env=env, timeout=300)


def test_wrong_outside_driver_is_caught_readably(tmp_path):
    proc = _run(tmp_path, "--only", "numpy", "wrong-external", "--driver", "wrong_driver:WrongDriver")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "wrong-external" in proc.stdout and "FAIL" in proc.stdout
    assert "out: max abs error" in proc.stdout  # says which quantity and by how much
    report = json.loads((tmp_path / "conformance.json").read_text())
    assert [r["driver"] for r in report["runs"]] == ["numpy", "wrong-external"]
    assert "numpy" in report["versions"] and (tmp_path / "conformance.md").read_text().startswith("# AION")


def test_outside_driver_runs_alone_by_its_name(tmp_path):
    proc = _run(tmp_path, "--only", "wrong-external", "--driver", "wrong_driver:WrongDriver")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "conformance.json").read_text())
    assert [r["driver"] for r in report["runs"]] == ["wrong-external"]
    assert "trajectories" not in proc.stdout and "throughput" not in proc.stdout


def test_unknown_name_in_only_is_refused(tmp_path):
    proc = _run(tmp_path, "--only", "no-such-driver")
    assert proc.returncode == 2 and "unknown driver no-such-driver" in proc.stderr


def test_builtins_not_installed_are_left_out_with_a_note_unless_named(monkeypatch):
    """Both CLIs select through registry.select: without --only, a built-in whose framework is
    missing is skipped with a one-line note; named in --only, it runs (and its crash is reported)."""
    monkeypatch.setattr(registry, "missing", lambda name: [] if name == "numpy" else ["fw"])
    selected, notes = registry.select(None, [])
    assert selected == [("numpy", "numpy")]
    assert notes[0] == "skipped array-api-strict: not installed (no module fw)"
    assert len(notes) == len(registry.BACKENDS) - 1
    assert registry.select(["torch"], []) == ([("torch", "torch")], [])


def test_bad_driver_spec_is_reported(tmp_path):
    proc = _run(tmp_path, "--only", "numpy", "--driver", "no_such_module:Driver")
    assert proc.returncode == 1 and "crashed" in proc.stdout and "no_such_module" in proc.stdout


def test_a_skipped_comparison_reads_skipped_never_a_number(tmp_path):
    """A driver's own check (its extra_checks: torch's against aion-torch 1.0.2) shows beside the vectors."""
    own = "another implementation"
    skipped = {"driver": "mine", "check": own, "case": "c", "dtype": "float32", "status": "skip",
               "max_abs": 0.0, "max_rel": 0.0, "messages": ["not installed"]}
    ran = {**skipped, "driver": "theirs", "status": "pass", "max_rel": 3e-7, "messages": []}
    assert write_report([{"driver": d["driver"], "versions": {}, "results": [d]} for d in (skipped, ran)], tmp_path)
    rows = {line.split(" | ")[0][2:]: line for line in (tmp_path / "conformance.md").read_text().splitlines()
            if line.startswith(("| mine", "| theirs"))}
    assert f"vs {own}: skipped" in rows["mine"] and "0.0e+00" not in rows["mine"]
    assert f"vs {own}: 3.0e-07" in rows["theirs"]
