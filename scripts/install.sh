#!/usr/bin/env bash
# Create .venv (once) and install the pinned test environment, this project (editable)
# and aion-torch 1.0.2, the original, beside it (import name aion_torch; ours is aion_pytorch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements/test.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
# --no-deps: its own torch requirement must not move the pinned torch.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements/original.txt
# aion-torch 1.0.2's own test suite, from its sdist (MIT; downloaded here, never committed), into
# the ignored .original/ (cached): tests/torch/test_original_suite.py runs it against aion_pytorch.
if [ ! -d .original/aion_torch-1.0.2/tests ]; then
  [ -f .original/aion_torch-1.0.2.tar.gz ] || .venv/bin/python -m pip download -q --disable-pip-version-check \
    --no-deps --no-binary :all: aion-torch==1.0.2 -d .original
  tar -xzf .original/aion_torch-1.0.2.tar.gz -C .original aion_torch-1.0.2/LICENSE aion_torch-1.0.2/tests
fi
echo "environment ready: .venv ($(.venv/bin/python --version))"
