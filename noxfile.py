"""Sessions run in the one shared environment (scripts/install.sh makes it): no venv per session.

    nox -s tests         # the test suite (slow benchmark-like tests excluded)
    nox -s conformance   # every driver, the table, reports/conformance.{md,json}
    nox -s conformance -- --driver mypkg.mod:MyDriver   # an external implementation too
    nox -s bench         # throughput of AION vs the plain residual
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
