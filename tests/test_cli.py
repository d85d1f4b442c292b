"""`python -m conformance` end to end: the report, and an external driver that is wrong."""

import json
import os
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def _run(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "conformance", "--out", str(tmp_path), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_wrong_external_driver_is_caught_readably(tmp_path):
    proc = _run(tmp_path, "--only", "numpy", "--driver", "wrong_driver:WrongDriver")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "wrong-external" in proc.stdout and "FAIL" in proc.stdout
    assert "out: max abs error" in proc.stdout  # says which quantity and by how much
    report = json.loads((tmp_path / "conformance.json").read_text())
    assert [r["driver"] for r in report["runs"]] == ["numpy", "wrong-external"]
    assert "numpy" in report["versions"] and (tmp_path / "conformance.md").read_text().startswith("# AION")


def test_bad_driver_spec_is_reported(tmp_path):
    proc = _run(tmp_path, "--only", "numpy", "--driver", "no_such_module:Driver")
    assert proc.returncode == 1 and "crashed" in proc.stdout
