"""The package as a user installs it: our wheel in fresh virtual environments.

One wheel is built per session from a copy of the tree (so no build/ or egg-info lands in
the checkout, and no stale build/ is packed). Each environment is `python -m venv
--without-pip` in a temp dir, filled by this environment's pip through `pip --python`
(pip >= 22.3): that skips ensurepip, and `--no-compile` skips writing torch's .pyc files,
most of its install time. Downloads come from pip's cache and the local wheel store.
Subprocesses run in a temp cwd without PYTHONPATH, so the checkout is never importable.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TIMEOUT = 600
# The shared environment's pins, so that installs hit pip's cache; torch must stay pinned
# (an unpinned torch is a multi-GB CUDA download).
PINS = dict(line.strip().split("==") for line in (ROOT / "requirements" / "test.txt").read_text().splitlines()
            if "==" in line and not line.lstrip().startswith("#"))
BASE = [f"numpy=={PINS['numpy']}", f"array-api-compat=={PINS['array-api-compat']}"]
# pip says this when two distributions write one path, or a resolve breaks a requirement.
CLASH = re.compile(r"overwrit|clobber|conflict|already exists|not installed", re.I)


def _run(cmd, cwd, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env={**env, "PYTHONNOUSERSITE": "1", **extra},
                          capture_output=True, text=True, timeout=TIMEOUT)


def _pip(py, *args):
    """This environment's pip acting on the venv of ``py``; its output, for CLASH."""
    proc = _run([sys.executable, "-m", "pip", "--python", py, *args], cwd=py.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _install(py, *reqs):
    return _pip(py, "install", "-q", "--no-compile", *reqs)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, tmp / "src", ignore=shutil.ignore_patterns(
        ".*", "build", "*.egg-info", "__pycache__", "reports", "tests", "docs"))
    # Build isolation on: setuptools comes from the index, as for any user's `pip install`.
    proc = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist", tmp / "src"], tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = (tmp / "dist").glob("aion_residual-*.whl")
    return whl


@pytest.fixture
def venv(tmp_path_factory):
    """Makes fresh venvs (``name -> python``); removed afterwards: a torch venv is ~1 GB."""
    made = []

    def make(name):
        path = tmp_path_factory.mktemp(name)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True, timeout=TIMEOUT)
        made.append(path)
        return path / "bin" / "python"

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


# Imports each of PRESENT and trains one SGD step of its AionResidual; each of ABSENT must not import.
TRAIN = """
import importlib, sys, torch
present, absent = sys.argv[1].split(), sys.argv[2].split()
for name in present:
    mod = importlib.import_module(name)
    layer = mod.AionResidual()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    loss = layer(torch.randn(4, 5, 16), torch.randn(4, 5, 16)).square().mean()
    loss.backward(); opt.step()
    assert torch.isfinite(loss), name
    print(name, mod.__file__)
for name in absent:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        continue
    sys.exit(f"{name} is still importable")
"""


def test_coexists_with_aion_torch_1_0_2(wheel, venv, tmp_path):
    t0 = time.perf_counter()
    py = venv("venv-torch")
    log = _install(py, f"torch=={PINS['torch']}", *BASE)
    # Both --no-deps: aion-torch's own `torch>=2.0` must not move the pinned torch.
    log += _install(py, "--no-deps", wheel, "aion-torch==1.0.2")
    print(f"\n[install] torch venv set up in {time.perf_counter() - t0:.1f} s")

    def train(present, absent=""):
        # Let the first run write torch's .pyc (not written at install, nor under
        # PYTHONDONTWRITEBYTECODE=1): an uncached `import torch` costs ~3 s more each time.
        proc = _run([py, "-c", TRAIN, present, absent], cwd=tmp_path, PYTHONDONTWRITEBYTECODE="")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return dict(line.split(" ", 1) for line in proc.stdout.splitlines())

    # (a) both in one process, each from its own folder, no file owned by both, torch unmoved.
    files = train("aion_pytorch aion_torch")
    assert Path(files["aion_pytorch"]).parent != Path(files["aion_torch"]).parent
    shared = _run([py, "-c", "from importlib.metadata import files, version; print(version('torch'));"
                   "print(sorted({str(f) for f in files('aion-residual')} & {str(f) for f in files('aion-torch')}))"],
                  cwd=tmp_path)
    torch_version, both_own = shared.stdout.splitlines()
    assert torch_version.startswith(PINS["torch"]) and both_own == "[]", shared.stdout + shared.stderr
    # (b) removing the original leaves ours working, and it removes all of its own.
    log += _pip(py, "uninstall", "-y", "aion-torch")
    train("aion_pytorch", "aion_torch")
    # (c) and the other way round.
    log += _install(py, "--no-deps", "aion-torch==1.0.2") + _pip(py, "uninstall", "-y", "aion-residual")
    train("aion_torch", "aion_pytorch aion_core aion_conformance")
    assert not CLASH.search(log), log


def test_outside_driver_runs_in_a_lean_environment(wheel, venv, tmp_path):
    t0 = time.perf_counter()
    py = venv("venv-lean")
    _install(py, "--no-deps", wheel, *BASE)  # numpy and array-api-compat have no deps of their own
    print(f"\n[install] lean venv set up in {time.perf_counter() - t0:.1f} s")
    # No framework, no plotting: the suite must not need them for an outside numpy driver.
    probe = _run([py, "-c", """
import importlib, sys, aion_conformance
assert aion_conformance.__file__.startswith(sys.prefix), aion_conformance.__file__  # the installed copy
for name in ("matplotlib", "torch", "jax", "tensorflow", "keras", "flax"):
    try:
        importlib.import_module(name)
    except ImportError:
        continue
    sys.exit(f"{name} imports in the lean venv")
"""], cwd=tmp_path)
    assert probe.returncode == 0, probe.stdout + probe.stderr

    def conformance(name, spec, out):
        return _run([py, "-m", "aion_conformance", "--only", name, "--driver", spec, "--out", out],
                    cwd=tmp_path, PYTHONPATH=str(FIXTURES))

    proc = conformance("outside-numpy", "outside_driver:OutsideDriver", tmp_path / "good")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "good" / "conformance.md").is_file()
    report = json.loads((tmp_path / "good" / "conformance.json").read_text())
    assert [run["driver"] for run in report["runs"]] == ["outside-numpy"]
    results = report["runs"][0]["results"]
    assert results and {r["status"] for r in results} == {"pass"}, [r for r in results if r["status"] != "pass"]

    # A wrong outside implementation fails on its numbers (not by crashing: that says FAILED too).
    proc = conformance("wrong-external", "wrong_driver:WrongDriver", tmp_path / "wrong")
    assert proc.returncode == 1 and "FAIL" in proc.stdout, proc.stdout + proc.stderr
    assert "out: max abs error" in proc.stdout and "CRASHED" not in proc.stdout, proc.stdout
