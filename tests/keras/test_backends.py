"""Run the per-backend Keras test modules, each under its own ``KERAS_BACKEND``.

Every module listed here is a full pytest module; a failure shows the inner pytest
output, naming the failing inner test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aion_conformance import registry

HERE = Path(__file__).parent

#: Modules run on every backend, together in one process per backend.
COMMON = ["backend_layer.py", "backend_training.py", "backend_zoo.py", "backend_export.py"]


def run_backend_modules(backend: str, modules: list[str], **env: str):
    proc = registry.spawn(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *(str(HERE / m) for m in modules)],
                          backend=f"keras-{backend}", env={"AION_KERAS_BACKEND_RUN": "1", **env},
                          timeout=900, cwd=HERE.parent.parent)
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
    run_backend_modules("jax", ["backend_data_parallel.py"], XLA_FLAGS="--xla_force_host_platform_device_count=2")
