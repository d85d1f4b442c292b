"""Portable network checkpoints move between the reference, torch, Flax NNX and Flax Linen.

(The Keras backends, one per process, are covered in tests/keras and by `nox -s conformance`.)
"""

import numpy as np
import pytest

from conformance.dtypes import RTOL
from conformance.trajectory import make_problem, resume, run_reference, run_torch
from conformance.trajectory_flax import run_linen, run_nnx
from conformance.trajectory_report import deviation, load_checkpoint, save_checkpoint

RUNNERS = {"reference": run_reference, "torch": run_torch, "flax-nnx": run_nnx, "flax-linen": run_linen}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    problem = make_problem()
    paths = {}
    for name, run in RUNNERS.items():
        paths[name] = tmp_path_factory.mktemp(name) / "ckpt.npz"
        save_checkpoint(run(problem, 5)["checkpoint"], paths[name])
    return problem, paths


@pytest.mark.parametrize("dst", RUNNERS)
def test_every_checkpoint_resumes_on(dst, exported):
    problem, paths = exported
    full = run_reference(problem, 10)
    want = {"loss": full["loss"][5:], "alpha": full["alpha"][5:]}
    for src, path in paths.items():
        ckpt = load_checkpoint(path)
        assert ckpt["blocks.0.ratio_ema"].dtype == np.float32 and ckpt["blocks.0.step_count"] == 5
        dev = deviation(RUNNERS[dst](resume(problem, ckpt), 5), want)
        assert max(dev.values()) <= RTOL["float32"], (src, dev)


def test_resuming_from_a_fresh_state_is_caught(exported):
    # Dropping the running state (as a weights-only export would) shows up in the alphas.
    problem, paths = exported
    ckpt = load_checkpoint(paths["torch"])
    for i in range(3):
        ckpt[f"blocks.{i}.ratio_ema"] = np.float32(1.0)
    full = run_reference(problem, 10)
    dev = deviation(run_torch(resume(problem, ckpt), 5), {"loss": full["loss"][5:], "alpha": full["alpha"][5:]})
    assert dev["alpha"] > RTOL["float32"]
