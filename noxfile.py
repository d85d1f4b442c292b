"""Sessions run in the one shared environment (scripts/install.sh makes it): no venv per session.

    nox -s tests         # the test suite (slow benchmark-like tests excluded)
    nox -s conformance   # every driver, the table, reports/conformance.{md,json}
    nox -s conformance -- --driver mypkg.mod:MyDriver   # an external implementation too
    nox -s bench         # throughput of AION vs the plain residual
    nox -s stability     # depth stability (the crash test), every backend; -- --full on a GPU
    nox -s fuzz          # differential fuzzing of every driver; -- --examples 2000 for a long run
    nox -s docs          # the documentation site in site/ (mkdocs build --strict, API reference)
"""

import sys

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"


@nox.session(venv_backend="none")
def tests(session):
    session.run(sys.executable, "-m", "pytest", *session.posargs)


@nox.session(venv_backend="none")
def conformance(session):
    session.run(sys.executable, "-m", "aion_conformance", *session.posargs)


@nox.session(venv_backend="none")
def bench(session):
    session.run(sys.executable, "-m", "aion_conformance.bench", *session.posargs)


@nox.session(venv_backend="none")
def stability(session):
    """Depth stability, the crash test on every backend: reports/stability.{md,json} and plots."""
    session.run(sys.executable, "-m", "aion_conformance.stability", *session.posargs)


@nox.session(venv_backend="none")
def fuzz(session):
    """Differential fuzzing of every driver (``-- --examples 2000``); disagreements saved in reports/fuzz."""
    session.run(sys.executable, "-m", "aion_conformance.fuzz", *session.posargs)


@nox.session(venv_backend="none")
def docs(session):
    """Build the site into site/ with ``mkdocs build --strict``: any warning fails it."""
    # The pinned docs tools, into the shared environment; the test set's pins constrain them.
    session.run(sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                "-r", "requirements/docs.txt", "-c", "requirements/test.txt")
    session.run(sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", "site",
                *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})  # (mkdocs-material's banner)
