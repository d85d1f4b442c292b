"""The current Keras backend against the golden vectors and against aion_torch's trajectory.

Run by ``test_backends.py`` under each ``KERAS_BACKEND``.
"""

from __future__ import annotations

import pytest

from conformance.drivers.keras_driver import KerasDriver
from conformance.runner import run_driver
from conformance.trajectory import make_problem, run_torch
from conformance.trajectory_keras import run_keras
from conformance.trajectory_report import deviation as max_deviation

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

#: 20 SGD steps through 3 blocks in float32 on both sides: a few float32 ulps (2**-23 each)
#: of accumulated rounding, measured ~2e-7; 1e-6 is ~8 ulps.
TRAJECTORY_RTOL = 1e-6


def test_conformance_vectors_and_errors():
    results = run_driver(KerasDriver())
    assert len(results) > 20
    failures = [r for r in results if r.status != "pass"]
    assert not failures, "\n".join(f"{r.case} [{r.dtype}]: {r.messages}" for r in failures)


def test_trajectory_matches_torch():
    problem = make_problem(seed=0, blocks=3, dim=16, batch=8)
    got, want = run_keras(problem, steps=20), run_torch(problem, steps=20)
    assert len(got["loss"]) == 20 and len(got["alpha"][0]) == 3
    deviation = max_deviation(got, want)
    print(f"max relative deviation from torch: {deviation}")
    assert deviation["loss"] <= TRAJECTORY_RTOL and deviation["alpha"] <= TRAJECTORY_RTOL
    assert got["loss"][-1] < got["loss"][0]  # the run actually trains


def test_portable_checkpoint_moves_between_torch_and_keras():
    from conformance.trajectory import resume, run_reference
    from conformance.trajectory_report import load_checkpoint, save_checkpoint

    import tempfile
    from pathlib import Path

    problem = make_problem()
    full = run_reference(problem, 10)
    want = {"loss": full["loss"][5:], "alpha": full["alpha"][5:]}
    with tempfile.TemporaryDirectory() as tmp:
        for first, then in ((run_torch, run_keras), (run_keras, run_torch)):
            path = Path(tmp) / "ckpt.npz"
            save_checkpoint(first(problem, 5)["checkpoint"], path)
            resumed = then(resume(problem, load_checkpoint(path)), 5)
            assert max(max_deviation(resumed, want).values()) <= TRAJECTORY_RTOL
