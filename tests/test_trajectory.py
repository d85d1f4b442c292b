"""The trajectory harness itself: its checks can fail."""

import numpy as np

from aion_conformance.trajectory import reference
from aion_conformance.trajectory.problem import (TOLERANCE, deviation, load_checkpoint, make_problem,
                                                 resume, save_checkpoint)


def test_deviation_detects_a_divergent_run():
    ref = reference.run(make_problem(), 5)
    bent = {"loss": [v * (1 + 1e-4) for v in ref["loss"]], "alpha": ref["alpha"]}
    assert deviation(bent, ref)["loss"] > TOLERANCE
    assert ref["alpha"][0] != ref["alpha"][-1]  # alpha really moves over the run


def test_resuming_from_a_fresh_state_is_caught(tmp_path):
    # Dropping the running state (as a weights-only export would) shows up in the alphas.
    problem = make_problem()
    save_checkpoint(reference.run(problem, 5)["checkpoint"], tmp_path / "c.npz")
    ckpt = load_checkpoint(tmp_path / "c.npz")
    assert ckpt["blocks.0.ratio_ema"].dtype == np.float32 and ckpt["blocks.0.step_count"] == 5
    full = reference.run(problem, 10)
    want = {"loss": full["loss"][5:], "alpha": full["alpha"][5:]}
    assert max(deviation(reference.run(resume(problem, ckpt), 5), want).values()) <= TOLERANCE
    for i in range(3):
        ckpt[f"blocks.{i}.ratio_ema"] = np.float32(1.0)
    assert deviation(reference.run(resume(problem, ckpt), 5), want)["alpha"] > TOLERANCE
