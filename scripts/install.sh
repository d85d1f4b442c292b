#!/usr/bin/env bash
# Create .venv (once) and install the pinned test environment, the project (editable)
# and the aion-torch 1.0.2 oracle (into .oracle/, apart: it shares our import name).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements/test.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
[ -f .oracle/aion_torch/__init__.py ] || \
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --target .oracle -r requirements/oracle.txt
echo "environment ready: .venv ($(.venv/bin/python --version))"
