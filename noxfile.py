"""Sessions run in the one shared environment (scripts/install.sh makes it): no venv per session.

    nox -s tests         # everything CI runs: lint, typecheck, then every tier (slow tests excluded)
    nox -s conformance   # every driver, the table, reports/conformance.{md,json}
    nox -s conformance -- --driver mypkg.mod:MyDriver   # an external implementation too
    nox -s bench         # throughput of AION vs the plain residual
    nox -s stability     # depth stability (the crash test), every backend; -- --full on a GPU
    nox -s evidence      # a real task: byte-level GPT on the stdlib sources; -- --full on a GPU
    nox -s gpu           # the GPU check (1 GPU, ~8 min): reports/gpu.{md,json}; -- --device cpu --dry-run
    nox -s fuzz          # differential fuzzing of every driver; -- --examples 2000 for a long run
    nox -s docs          # the documentation site in site/ (mkdocs build --strict, API reference)

Parts of ``tests``, each alone (tests/conftest.py puts the markers on every test, from its path):

    nox -s lint          # ruff check (rules in pyproject.toml) of LINTED
    nox -s typecheck     # mypy (pyproject.toml's [tool.mypy]), then tests/test_typing.py
    nox -s unit          # tier: the tests that run in the pytest process, the doctests
    nox -s integration   # tier: the tests that start processes (conformance, fuzz, CLI, docs, distributed)
    nox -s packaging     # tier: sdist and wheel, fresh installs, mypy on a user's script
    nox -s torch         # one framework (tests/frameworks.py): its folder, its adapter's doctests and
    nox -s keras         #   every test of its registry backends, the unit and integration tiers;
    nox -s flax          #   AION_TEST_BACKENDS is set to its backends
    nox -s mlx

Arguments after ``--`` go to every pytest run of a session (``nox -s tests -- -m slow`` runs the
slow tests; a session's own tier or framework is kept: ``nox -s unit -- -m slow``, the slow unit
tests); paths go to the run they belong to. A framework whose backend is fixed per process
(Keras) has its folder, tests/keras, run once per backend, each a pytest process of its own with
that backend's environment (``KERAS_BACKEND``); the other tests run in one process.
``AION_TEST_BACKENDS=torch,numpy nox -s tests`` (registry names) narrows any session to those
backends: parametrised tests run for them only, other frameworks' folders are left out.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"

ROOT = Path(__file__).resolve().parent
#: What ``lint`` checks: all the Python of the repository.
LINTED = ["noxfile.py", "tests", "aion_core", "backends", "conformance"]
SELECT_ENV = "AION_TEST_BACKENDS"
#: pytest options that take a value (so that value is no path).
_VALUE_OPTIONS = {"-k", "-m", "-p", "-o", "-W", "-c", "--deselect", "--ignore", "--ignore-glob", "--basetemp",
                  "--junitxml", "--rootdir", "--maxfail", "--tb", "--durations", "--override-ini", "--confcutdir"}


@functools.cache
def _frameworks() -> ModuleType:
    """tests/frameworks.py, the table of frameworks (it imports none of them)."""
    spec = importlib.util.spec_from_file_location("frameworks", ROOT / "tests" / "frameworks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def _split(posargs: list[str]) -> tuple[str | None, list[str], list[Path]]:
    """``posargs`` -> (its ``-m`` expression, the other options, the paths)."""
    markexpr, options, paths = None, [], []
    args = iter(posargs)
    for arg in args:
        if arg == "-m":
            markexpr = next(args, "")
        elif arg.startswith("-m") and not arg.startswith("--"):
            markexpr = arg[2:].lstrip("=")
        elif arg in _VALUE_OPTIONS:
            options += [arg, next(args, "")]
        elif not arg.startswith("-") and (ROOT / arg.split("::")[0]).exists():
            paths.append(ROOT / arg)
        else:
            options.append(arg)
    return markexpr, options, paths


def _inside(path: Path, folder: Path) -> bool:
    return Path(str(path).split("::")[0]).resolve().is_relative_to(folder.resolve())


def _pytest(session: nox.Session, select: str | None = None, backends: tuple[str, ...] | None = None,
            empty_ok: bool = True) -> None:
    """pytest over the whole suite: one main run, then each per-backend folder once per backend.

    ``select``: the session's marker expression (the user's ``-m`` is and-ed to it; without
    either, pyproject's ``not slow``); ``backends``: registry names for AION_TEST_BACKENDS when
    the environment does not name some already. ``empty_ok``: a run that selects nothing passes.
    """
    fw = _frameworks()
    user_markexpr, options, paths = _split(session.posargs)
    if select and user_markexpr:
        markexpr: str | None = f"({select}) and ({user_markexpr})"
    else:
        markexpr = f"({select}) and not slow" if select else user_markexpr
    marks = ["-m", markexpr] if markexpr is not None else []
    chosen = os.environ.get(SELECT_ENV) or (",".join(backends) if backends else None)
    env = {SELECT_ENV: chosen} if chosen else {}
    selected = set(chosen.split(",")) if chosen else None
    codes = [0, 5] if empty_ok else [0]
    # The folders of frameworks whose backend is fixed per process (Keras): one run per backend.
    separate = [(f, ROOT / "tests" / f.name) for f in fw.FRAMEWORKS if f.process_env]
    main_paths = [p for p in paths if not any(_inside(p, folder) for _, folder in separate)]
    if main_paths or not paths:
        ignores = [f"--ignore={folder.relative_to(ROOT)}" for _, folder in separate]
        session.run(sys.executable, "-m", "pytest", *ignores, *marks, *options, *map(str, main_paths),
                    env=env, success_codes=codes)
    for framework, folder in separate:
        own = [p for p in paths if _inside(p, folder)]
        if paths and not own:
            continue
        for backend, backend_env in framework.process_env.items():
            if selected is not None and backend not in selected:
                continue
            session.log(f"{folder.relative_to(ROOT)} on {backend}")
            session.run(sys.executable, "-m", "pytest", *marks, *options, *map(str, own or [folder]),
                        env={**env, "TF_CPP_MIN_LOG_LEVEL": "2", **backend_env}, success_codes=codes)


def _lint(session: nox.Session) -> None:
    session.run(sys.executable, "-m", "ruff", "check", *LINTED)


def _mypy(session: nox.Session) -> None:
    session.run(sys.executable, "-m", "mypy")  # what and how: pyproject.toml's [tool.mypy]


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Everything: lint, typecheck, then the unit, integration and packaging tiers (the per-backend runs too)."""
    _lint(session)
    _mypy(session)  # (tests/test_typing.py runs in the packaging tier below)
    _pytest(session, empty_ok=bool(session.posargs))  # bare (CI): a run that selects nothing fails


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff check of LINTED; the rules are in pyproject.toml's [tool.ruff]."""
    _lint(session)


@nox.session(venv_backend="none")
def typecheck(session: nox.Session) -> None:
    """mypy on the files pyproject.toml's [tool.mypy] names, then the typing contract: a user's
    script type-checked against our packages (tests/test_typing.py)."""
    _mypy(session)
    session.run(sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_typing.py"), *session.posargs)


@nox.session(venv_backend="none")
def unit(session: nox.Session) -> None:
    """The unit tier: tests that run in the pytest process, and the doctests."""
    _pytest(session, "unit")


@nox.session(venv_backend="none")
def integration(session: nox.Session) -> None:
    """The integration tier: tests that start processes (conformance, fuzz, CLI, docs, distributed)."""
    _pytest(session, "integration")


@nox.session(venv_backend="none")
def packaging(session: nox.Session) -> None:
    """The packaging tier: sdist and wheel, fresh installs with each framework, typing of a user's script."""
    _pytest(session, "packaging")


def _framework(session: nox.Session, name: str) -> None:
    framework = next(f for f in _frameworks().FRAMEWORKS if f.name == name)
    _pytest(session, f"{name} and not packaging", framework.backends)


@nox.session(venv_backend="none")
def torch(session: nox.Session) -> None:
    """PyTorch: tests/torch, aion_pytorch's doctests, every test of the torch backend."""
    _framework(session, "torch")


@nox.session(venv_backend="none")
def keras(session: nox.Session) -> None:
    """Keras: tests/keras once per backend, aion_keras' doctests, every test of the keras-* backends."""
    _framework(session, "keras")


@nox.session(venv_backend="none")
def flax(session: nox.Session) -> None:
    """Flax: tests/flax, aion_flax's doctests, every test of the flax-* backends."""
    _framework(session, "flax")


@nox.session(venv_backend="none")
def mlx(session: nox.Session) -> None:
    """MLX: tests/mlx, aion_mlx's doctests, every test of the mlx backend."""
    _framework(session, "mlx")


@nox.session(venv_backend="none")
def conformance(session: nox.Session) -> None:
    session.run(sys.executable, "-m", "aion_conformance", *session.posargs)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    session.run(sys.executable, "-m", "aion_conformance.bench", *session.posargs)


@nox.session(venv_backend="none")
def stability(session: nox.Session) -> None:
    """Depth stability, the crash test on every backend: reports/stability.{md,json} and plots."""
    session.run(sys.executable, "-m", "aion_conformance.stability", *session.posargs)


@nox.session(venv_backend="none")
def evidence(session: nox.Session) -> None:
    """A real task, a byte-level GPT on the stdlib's sources: reports/evidence.{md,json} and plots."""
    session.run(sys.executable, "-m", "aion_conformance.evidence", *session.posargs)


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """The GPU check on a 1-GPU machine: matrix, bench, memory, CUDA graph, stability; reports/gpu.{md,json}."""
    session.run(sys.executable, "-m", "aion_conformance.gpu", *session.posargs)


@nox.session(venv_backend="none")
def fuzz(session: nox.Session) -> None:
    """Differential fuzzing of every driver (``-- --examples 2000``); disagreements saved in reports/fuzz."""
    session.run(sys.executable, "-m", "aion_conformance.fuzz", *session.posargs)


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """Build the site into site/ with ``mkdocs build --strict``: any warning fails it."""
    # The pinned docs tools, into the shared environment; the test set's pins constrain them.
    session.run(sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                "-r", "requirements/docs.txt", "-c", "requirements/test.txt")
    session.run(sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", "site",
                *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})  # (mkdocs-material's banner)
