"""The package as a user gets it: our sdist and wheel, installed into fresh virtual environments.

One sdist and one wheel are built per session by `python -m build` from a clean copy of the
tree (the wheel from the sdist, as pip builds it for a user who has only the sdist; no build/
or egg-info lands in the checkout). Their file lists, their metadata and the build's whole
output (no warning in it) are checked. Each environment is `python -m venv --without-pip`,
filled through `pip --python` by the pip of a small tools venv (pinned in TOOLS: it resolves
the tensorflow set in a third of pip 23's time) with `--no-compile`, which skips writing .pyc
files, most of torch's install time. Every version is pinned, so downloads come from pip's
cache and the local wheel store: the frameworks by requirements/test.txt, everything they pull
in by a constraints file of this environment's own versions. The venvs live in /dev/shm when it
has room: making and deleting the 1.4 GB tensorflow venv takes seconds there, up to a minute on
disk. Subprocesses run in a temp cwd without PYTHONPATH, so the checkout is never importable.
"""

import email.parser
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import pytest

from frameworks import FRAMEWORKS, INSTALLS, PACKAGES, framework_of, params

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TIMEOUT = 600
# The shared environment's pins, so that installs hit pip's cache; torch must stay pinned
# (an unpinned torch is a multi-GB CUDA download).
PINS = dict(line.strip().split("==") for line in (ROOT / "requirements" / "test.txt").read_text().splitlines()
            if "==" in line and not line.lstrip().startswith("#"))
BASE = [f"numpy=={PINS['numpy']}", f"array-api-compat=={PINS['array-api-compat']}"]
# Build and check tools, for the tools venv only (the shared environment does not need them).
TOOLS = ["pip==26.2.1", "build==1.6.1", "trove-classifiers==2026.9.21.13"]
# pip says this when two distributions write one path, or a resolve breaks a requirement.
CLASH = re.compile(r"overwrit|clobber|conflict|already exists|not installed", re.I)
# A line of the build's output that must not be there.
WARNING = re.compile(r"warn|deprecat|!!|\berror\b", re.I)
VERSION = re.search(r'^__version__ = "([^"]+)"', (ROOT / "aion_core" / "__init__.py").read_text(), re.M)[1]
REPOSITORY = "https://github.com/aion-residual/aion-residual"
# The frameworks' import names; PACKAGES (from tests/frameworks.py): import name -> folder in the tree.
IMPORTS = [name for fw in FRAMEWORKS for name in fw.imports]
# Our extras: the frameworks' (tests/frameworks.py), the plots' and the fuzzer's (`all` is every one).
EXTRAS = {"report": {"matplotlib"}, "conformance": {"hypothesis"},
          **{extra: set(dists) for fw in FRAMEWORKS for extra, dists in fw.extras.items()}}
SCRATCH_PREFIX = "aion-test-install-"


def _run(cmd, cwd, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env={**env, "PYTHONNOUSERSITE": "1", **extra},
                          capture_output=True, text=True, timeout=TIMEOUT)


class Pip:
    """The tools venv's pip acting on other venvs; each call returns its output, for CLASH."""

    def __init__(self, python, constraints):
        self.python, self.constraints = python, constraints

    def __call__(self, py, *args):
        proc = _run([self.python, "-m", "pip", "--python", py, *args], cwd=py.parent)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    def install(self, py, *reqs):
        return self(py, "install", "-q", "--no-compile", "-c", self.constraints, *reqs)


def _new_venv(root, name):
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True, timeout=TIMEOUT)
    return path


def _mem_available():
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return 0
    found = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.M)
    return int(found[1]) * 1024 if found else 0


def _reap(shm):
    """Removes the scratch folders of test sessions that died before their teardown (RAM)."""
    for path in shm.glob(f"{SCRATCH_PREFIX}*"):
        try:
            os.kill(int(path.name[len(SCRATCH_PREFIX):].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, OSError):
            continue


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    """Where the venvs go: /dev/shm when it and the RAM have room, else pytest's temp dir."""
    shm = Path("/dev/shm")
    if (shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 4 * 2**30
            and _mem_available() > 8 * 2**30):
        _reap(shm)
        root = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=shm))
    else:
        root = tmp_path_factory.mktemp("venvs")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pip(scratch, tmp_path_factory):
    t0 = time.perf_counter()
    tools = _new_venv(scratch, "tools") / "bin" / "python"
    proc = _run([sys.executable, "-m", "pip", "--python", tools, "install", "-q", "--no-compile", *TOOLS],
                cwd=scratch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # This environment's versions (the tested set), less our own: the frameworks' dependencies
    # resolve to them. Local labels dropped: `torch==2.13.0` still takes the +cpu wheel.
    # The first of each name on sys.path, the one imported: a package may put more on it
    # (setuptools, which torch's extension builder imports, adds its vendored packaging, zipp, ...).
    ours = {"aion-residual", "aion-torch"}
    versions: dict[str, str] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name and name not in ours:
            versions.setdefault(name, dist.version.split("+")[0])
    constraints = tmp_path_factory.mktemp("pip") / "constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in sorted(versions.items())))
    print(f"\n[install] tools venv set up in {time.perf_counter() - t0:.1f} s")
    return Pip(tools, constraints)


def _copy_ignore(folder, names):
    top = Path(folder) == ROOT
    return [n for n in names if n.startswith(".") or n == "__pycache__" or n.endswith((".pyc", ".egg-info"))
            or (top and n in ("build", "dist", "reports", "site"))]


class Dists(NamedTuple):
    src: Path
    sdist: Path
    wheel: Path
    log: str


@pytest.fixture(scope="session")
def dists(pip, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dists")
    shutil.copytree(ROOT, tmp / "src", ignore=_copy_ignore)
    t0 = time.perf_counter()
    # Build isolation on: setuptools comes from the index, as for any user's build. Bytecode
    # writing on, as a user has it (else setuptools warns that byte-compiling is disabled).
    proc = _run([pip.python, "-m", "build", "--outdir", tmp / "dist", tmp / "src"], tmp, PYTHONDONTWRITEBYTECODE="")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"\n[build] sdist and wheel built in {time.perf_counter() - t0:.1f} s")
    (sdist,) = (tmp / "dist").glob("aion_residual-*.tar.gz")
    (whl,) = (tmp / "dist").glob("aion_residual-*.whl")
    return Dists(tmp / "src", sdist, whl, proc.stdout + proc.stderr)


@pytest.fixture(scope="session")
def wheel(dists):
    return dists.wheel


@pytest.fixture
def venv(scratch):
    """Makes fresh venvs (``name -> python``); removed afterwards: a tensorflow venv is 1.4 GB."""
    made = []

    def make(name):
        made.append(_new_venv(scratch, name))
        return made[-1] / "bin" / "python"

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def torch_venv(scratch, pip, wheel):
    """Our wheel with torch, made once for the two tests that use it (torch is the largest
    install after tensorflow); the second leaves it as it found it. Removed afterwards."""
    t0 = time.perf_counter()
    path = _new_venv(scratch, "venv-torch")
    py = path / "bin" / "python"
    log = pip.install(py, f"{wheel}[torch]", f"torch=={PINS['torch']}")
    assert not CLASH.search(log), log
    print(f"\n[install] torch venv set up in {time.perf_counter() - t0:.1f} s")
    yield py
    shutil.rmtree(path, ignore_errors=True)


def test_build_output_has_no_warning(dists):
    assert "Successfully built" in dists.log, dists.log
    warnings = [line for line in dists.log.splitlines() if WARNING.search(line)]
    assert not warnings, "\n".join(warnings) + "\n\nthe whole output:\n" + dists.log


def _files(folder):
    return {path for path in folder.rglob("*") if path.is_file()}


def test_wheel_holds_the_packages_their_data_and_markers(dists, pip):
    with zipfile.ZipFile(dists.wheel) as whl:
        names = set(whl.namelist())
        dist_info = f"aion_residual-{VERSION}.dist-info"
        meta = email.parser.Parser().parsestr(whl.read(f"{dist_info}/METADATA").decode())
    # Every file of every package folder, under its import name, and nothing else.
    expected = {f"{name}/{path.relative_to(dists.src / folder).as_posix()}"
                for name, folder in PACKAGES.items() for path in _files(dists.src / folder)}
    expected |= {f"{dist_info}/{name}" for name in ("METADATA", "WHEEL", "top_level.txt", "RECORD", "licenses/LICENSE")}
    assert names == expected, f"not expected: {sorted(names - expected)}, missing: {sorted(expected - names)}"
    assert {f"{name}/py.typed" for name in PACKAGES} <= names
    vectors = {n for n in names if n.startswith("aion_conformance/vectors/") and n.endswith(".json")}
    assert len(vectors) == len(list((ROOT / "conformance" / "vectors").glob("*.json"))) > 0

    assert (meta["Name"], meta["Version"], meta["Requires-Python"]) == ("aion-residual", VERSION, ">=3.10")
    assert (meta["License-Expression"], meta.get_all("License-File")) == ("MIT", ["LICENSE"])
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL"))
    assert {"Homepage", "Documentation", "Issues"} <= set(urls) and all(u.startswith(REPOSITORY) for u in urls.values())
    extras = {}
    for req in meta.get_all("Requires-Dist"):
        found = re.fullmatch(r'([A-Za-z0-9_.-]+)(\[[^]]*\])?[^;]*(?:; extra == "([^"]+)")?', req)
        extras.setdefault(found[3], set()).add(found[1] + (found[2] or ""))
    assert set(meta.get_all("Provides-Extra")) == set(extras) - {None}
    assert extras[None] == {"numpy", "array-api-compat"}
    assert {extra: extras[extra] for extra in EXTRAS} == EXTRAS
    assert extras["all"] == {f"aion-residual[{','.join(sorted(EXTRAS))}]"}
    assert {"pytest", "hypothesis", "array-api-strict", "mypy"} <= extras["test"]
    classifiers = meta.get_all("Classifier")
    assert {"Operating System :: OS Independent", "Typing :: Typed",
            "Topic :: Scientific/Engineering :: Artificial Intelligence",
            *(f"Programming Language :: Python :: 3.{minor}" for minor in (10, 11, 12))} <= set(classifiers)
    # PyPI refuses an upload with a classifier it does not know.
    proc = _run([pip.python, "-c", "import sys, trove_classifiers as t;"
                 "sys.exit(str([c for c in sys.argv[1:] if c not in t.classifiers])"
                 " if set(sys.argv[1:]) - t.classifiers else 0)",
                 *classifiers], cwd=dists.src)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sdist_holds_the_tree(dists):
    top = f"aion_residual-{VERSION}/"
    with tarfile.open(dists.sdist) as sdist:
        members = [m.name for m in sdist.getmembers() if m.isfile()]
    assert all(name.startswith(top) for name in members), members
    names = {name[len(top):] for name in members}
    expected = {path.relative_to(dists.src).as_posix()
                for folder in ("aion_core", "backends", "conformance", "docs", "tests", "requirements", "scripts")
                for path in _files(dists.src / folder)}
    expected |= {"LICENSE", "MANIFEST.in", "README.md", "CHANGELOG.md", "CONTRIBUTING.md", "noxfile.py", "mkdocs.yml",
                 "pyproject.toml", "PKG-INFO", "setup.cfg"}
    egg_info = {name for name in names if name.startswith("aion_residual.egg-info/")}
    assert egg_info, names
    assert names - egg_info == expected, (f"not expected: {sorted(names - egg_info - expected)}, "
                                          f"missing: {sorted(expected - names)}")
    for folder in ("docs", "tests/fixtures", *(f"tests/{fw.name}" for fw in FRAMEWORKS), "conformance/vectors"):
        assert any(name.startswith(folder + "/") for name in names), folder


# One venv each: our wheel and one framework (tests/frameworks.py lists them). The torch one
# last, so that its venv (torch_venv) is made right before the test after this one uses it
# again; this run writes torch's .pyc for that test's three (else ~3 s more each import).
SETUPS = sorted(INSTALLS.values(), key=lambda setup: setup.name == "torch")

# Trains 3 optimizer steps of a tiny model around the adapter's AionBlock; prints the losses
# and the block's step_count as JSON. argv: adapter, frameworks present, frameworks absent.
# Between head and tail, the framework's own training (tests/frameworks.py) sets `losses`, `steps`.
TRAIN_HEAD = """
import importlib, importlib.metadata, importlib.util, json, os, sys
import numpy as np

adapter, present, absent = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
missing = [name for name in present if importlib.util.find_spec(name) is None]
leaked = [name for name in absent if importlib.util.find_spec(name) is not None]
assert not missing and not leaked, f"missing: {missing}; importable, should not be: {leaked}"
module = importlib.import_module(adapter)
assert module.__file__.startswith(sys.prefix), module.__file__  # the installed copy
assert module.__version__ == importlib.metadata.version("aion-residual"), module.__version__
rng = np.random.default_rng(0)
x, y = (rng.standard_normal((32, 16), dtype=np.float32) for _ in range(2))
"""
TRAIN_TAIL = """
print(json.dumps({"losses": [float(v) for v in losses], "step_count": steps}))
"""


@pytest.mark.parametrize("name", params(SETUPS))
def test_trains_with_its_framework_alone(name, request, pip, wheel, venv, tmp_path):
    setup = INSTALLS[name]
    framework = framework_of(setup)
    t0 = time.perf_counter()
    if name == "torch":
        py = request.getfixturevalue("torch_venv")
    else:
        py = venv(f"venv-{name}")
        log = pip.install(py, f"{wheel}[{setup.extra}]", *(f"{dist}=={PINS[dist]}" for dist in setup.pins))
        assert not CLASH.search(log), log
    t1 = time.perf_counter()
    absent = [framework_import for framework_import in IMPORTS if framework_import not in setup.present]
    script = TRAIN_HEAD + framework.train + TRAIN_TAIL
    proc = _run([py, "-c", script, framework.package, " ".join(setup.present), " ".join(absent)],
                cwd=tmp_path, **{"PYTHONDONTWRITEBYTECODE": "1", **setup.env})
    print(f"\n[{name}] venv set up in {t1 - t0:.1f} s, 3 steps trained in {time.perf_counter() - t1:.1f} s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert len(result["losses"]) == 3 and all(map(math.isfinite, result["losses"])), result
    assert result["step_count"] == 3, result


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


@pytest.mark.backends("torch")
def test_coexists_with_aion_torch_1_0_2(torch_venv, pip, wheel, tmp_path):
    py = torch_venv
    # --no-deps: aion-torch's own `torch>=2.0` must not move the pinned torch.
    log = pip.install(py, "--no-deps", "aion-torch==1.0.2")

    def train(present, absent=""):
        # Writes .pyc (an uncached `import torch` costs ~3 s more each time).
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
    # (b) removing ours leaves the original working, and it removes all of its own.
    log += pip(py, "uninstall", "-y", "aion-residual")
    train("aion_torch", "aion_pytorch aion_core aion_conformance")
    # (c) and the other way round, which leaves the venv as the fixture made it.
    log += pip.install(py, "--no-deps", wheel) + pip(py, "uninstall", "-y", "aion-torch")
    train("aion_pytorch", "aion_torch")
    assert not CLASH.search(log), log


def test_outside_driver_runs_in_a_lean_environment(pip, wheel, venv, tmp_path):
    t0 = time.perf_counter()
    py = venv("venv-lean")
    pip.install(py, "--no-deps", wheel, *BASE)  # numpy and array-api-compat have no deps of their own
    print(f"\n[install] lean venv set up in {time.perf_counter() - t0:.1f} s")
    # No framework, no plotting: the suite must not need them for an outside numpy driver.
    probe = _run([py, "-c", """
import importlib, importlib.metadata, sys, aion_conformance, aion_core
assert aion_conformance.__file__.startswith(sys.prefix), aion_conformance.__file__  # the installed copy
assert aion_core.__version__ == aion_conformance.__version__ == importlib.metadata.version("aion-residual")
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError:
        continue
    sys.exit(f"{name} imports in the lean venv")
""", "matplotlib", *IMPORTS], cwd=tmp_path)
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
