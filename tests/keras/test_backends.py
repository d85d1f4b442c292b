"""Run the per-backend Keras test modules, each under its own ``KERAS_BACKEND``.

Every module listed here is a full pytest module; a failure shows the inner pytest
output, naming the failing inner test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent

#: Modules run on every backend, together in one process per backend.
COMMON = ["backend_layer.py", "backend_training.py", "backend_parity.py"]


def run_backend_modules(backend: str, modules: list[str], extra_env: dict | None = None):
    env = {**os.environ, "KERAS_BACKEND": backend, "AION_KERAS_BACKEND_RUN": "1",
           "TF_CPP_MIN_LOG_LEVEL": "2", **(extra_env or {})}
    backends_dir = str(ROOT / "backends")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (backends_dir, str(ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
           *(str(HERE / m) for m in modules)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{backend}: {' '.join(modules)} failed\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"
    assert " passed" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_common_modules(backend):
    run_backend_modules(backend, COMMON)


@pytest.mark.distributed
def test_tf_mirrored_strategy():
    run_backend_modules("tensorflow", ["backend_mirrored.py"])


@pytest.mark.distributed
def test_jax_data_parallel():
    run_backend_modules("jax", ["backend_data_parallel.py"],
                        {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
