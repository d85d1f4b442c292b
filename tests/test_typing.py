"""mypy on a user's script sees our types: every package ships a ``py.typed`` marker (PEP 561).

mypy cannot look through setuptools' editable finder (the shared .venv has this project
editable; mypy says "Cannot find implementation or library stub"), and MYPYPATH would make
our packages sources, for which no marker is needed. So the packages are laid out as the wheel
lays them out, as links (import name -> folder, pyproject's package-dir) in a folder put on
PYTHONPATH of the interpreter that mypy takes its search path from (``--python-executable``,
this one): mypy treats the entries of that path as installed packages, which need the marker,
as in site-packages; the frameworks' own types come from this environment's site-packages.
tests/test_install.py checks that the wheel holds the same markers.

The mypy cache is kept in pytest's cache folder: cold, analysing torch, jax and flax takes
about a minute on 2 cores; warm, seconds.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from frameworks import APIS, PACKAGES

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "aion_core.config.AionConfig"

# A user's script: the core's part here, each adapter's from tests/frameworks.py.
HEADER = """\
import numpy as np

import aion_conformance
import aion_core
""" + "".join(api.script for api in APIS.values())

# reveal_type(expression) -> what mypy must say it is.
REVEALS = {
    "aion_core.__version__": "str",
    "aion_conformance.__version__": "str",
    "aion_core.AionConfig(alpha0=0.1, beta=0.05)": CONFIG,
    "aion_core.initial_state(np)": "tuple[object, object, object, fallback=aion_core.state.AionState]",
    **{expression: kind for api in APIS.values() for expression, kind in api.reveals.items()},
}
MISSING_MARKER = re.compile(r"missing library stubs or py\.typed marker|Cannot find implementation or library stub")


@pytest.fixture(scope="module")
def mypy_cache(request, tmp_path_factory):
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    return cache.mkdir("mypy") if cache is not None else tmp_path_factory.mktemp("mypy-cache")


def _mypy(script, site, cache, cwd):
    cwd.mkdir()
    (cwd / "user.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV", "MYPYPATH")}
    proc = subprocess.run([sys.executable, "-m", "mypy", "--python-executable", sys.executable, "--cache-dir", cache,
                           "--no-color-output", "--no-error-summary", "user.py"],
                          cwd=cwd, env={**env, "PYTHONPATH": str(site)}, capture_output=True, text=True,
                          timeout=600)
    assert "No module named mypy" not in proc.stderr, "mypy is missing: pip install -r requirements/test.txt"
    return proc


def _link(site, name, folder):
    site.mkdir(exist_ok=True)
    (site / name).symlink_to(folder, target_is_directory=True)


def test_mypy_sees_every_adapters_types(mypy_cache, tmp_path):
    site = tmp_path / "site"
    for name, folder in PACKAGES.items():
        _link(site, name, ROOT / folder)
    first = HEADER.count("\n") + 1
    script = HEADER + "".join(f"reveal_type({expression})\n" for expression in REVEALS)
    proc = _mypy(script, site, mypy_cache, tmp_path / "run")
    output = proc.stdout + proc.stderr
    assert not MISSING_MARKER.search(output), output
    revealed = {int(line): kind for line, kind in re.findall(r'^user\.py:(\d+): note: Revealed type is "(.*)"$',
                                                             output, re.M)}
    got = {expression: revealed.get(first + i) for i, expression in enumerate(REVEALS)}
    wrong = {expression: (got[expression], want) for expression, want in REVEALS.items() if got[expression] != want}
    assert not wrong, f"{wrong}\n{output}"  # expression: (revealed, expected)
    assert proc.returncode == 0, output  # and no error in the user's script


def test_a_package_without_marker_is_reported(mypy_cache, tmp_path):
    """The check above can fail: a copy of aion_core without its marker is refused."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copytree(ROOT / "aion_core", site / "aion_core", ignore=shutil.ignore_patterns("py.typed", "__pycache__"))
    proc = _mypy("import aion_core\nreveal_type(aion_core.AionConfig())\n", site, mypy_cache, tmp_path / "run")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and 'Skipping analyzing "aion_core"' in output, output
    assert MISSING_MARKER.search(output) and 'Revealed type is "Any"' in output, output
