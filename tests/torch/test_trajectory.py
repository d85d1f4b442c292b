"""The torch adapter trains the trajectory network like the float64 reference, step by step."""

from conformance.dtypes import RTOL
from conformance.trajectory import make_problem, run_reference, run_torch
from conformance.trajectory_report import deviation


def test_torch_trajectory_follows_float64_reference():
    problem = make_problem()
    ref, got = run_reference(problem, 20), run_torch(problem, 20)
    dev = deviation(got, ref)
    assert max(dev.values()) <= RTOL["float32"], dev  # measured: loss 1.1e-7, alpha 3.0e-7
    assert ref["alpha"][0] != ref["alpha"][-1]  # alpha really moves over the run


def test_deviation_detects_a_divergent_run():
    problem = make_problem()
    ref = run_reference(problem, 5)
    bent = {"loss": [v * (1 + 1e-4) for v in ref["loss"]], "alpha": ref["alpha"]}
    assert deviation(bent, ref)["loss"] > RTOL["float32"]
