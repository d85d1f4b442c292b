"""Every backend of the registry through the same conformance cases, trajectory and checkpoints.

Each backend runs in its own process (:func:`aion_conformance.registry.call`), as
``python -m aion_conformance`` runs it.
"""

import pytest

from aion_conformance import registry
from aion_conformance.spec.cases import CONFIG_ERRORS, call_error_cases
from aion_conformance.spec.golden import load_all
from aion_conformance.trajectory import reference
from aion_conformance.trajectory.parity import RESUME_AT, STEPS
from aion_conformance.trajectory.problem import (TOLERANCE, deviation, load_checkpoint, make_problem,
                                                 resume, save_checkpoint)

TRAINED = registry.with_problem("trajectory")


@pytest.mark.parametrize("backend", list(registry.BACKENDS))
def test_driver_passes_every_case(backend):
    run = registry.call("aion_conformance.runner:run_spec", backend, backend=backend, timeout=600)
    assert run["driver"] == backend and run["versions"]
    by_check, vectors, errors = {}, {}, {}
    for r in run["results"]:
        by_check.setdefault(r["check"], []).append(r)
        if r["check"] in ("vector", "call_error"):
            ({"vector": vectors, "call_error": errors}[r["check"]]).setdefault(r["execution"], []).append(r)
    # The first execution (the driver's default) runs every vector and every call error; the
    # others (the execution matrix) run the vectors of their dtypes, some also the errors.
    default = next(iter(vectors))
    assert sorted(r["case"] for r in vectors[default]) == sorted(c["name"] for c in load_all())
    assert all(len(results) == len(call_error_cases()) for results in errors.values()) and default in errors
    assert len(by_check["config_error"]) == len(CONFIG_ERRORS)
    failures = [f"{r['check']} {r['case']} [{r['dtype']}, {r['execution']}]: {r['messages']}"
                for r in run["results"] if r["status"] == "fail"]
    assert not failures, "\n".join(failures)
    # A cell may be skipped only for a stated reason (an unsupported dtype, no CUDA here).
    assert all(r["messages"] for r in run["results"] if r["status"] == "skip")
    ran = {e for e, results in vectors.items() if any(r["status"] == "pass" for r in results)}
    print(f"{backend}: executions run {sorted(ran)}; not run {sorted(set(vectors) - ran)}")
    assert default in ran


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """The float64 reference's run and its checkpoint after RESUME_AT steps."""
    path = tmp_path_factory.mktemp("reference") / "reference.npz"
    problem = make_problem()
    save_checkpoint(reference.run(problem, RESUME_AT)["checkpoint"], path)
    return reference.run(problem, STEPS), path


@pytest.mark.parametrize("backend", TRAINED)
def test_trajectory_and_checkpoints_follow_the_reference(backend, reference_runs, tmp_path):
    """20 SGD steps track the float64 reference; the backend's checkpoint and the
    reference's both resume on it and on the reference, on the uninterrupted trajectory."""
    ref, ref_ckpt = reference_runs
    own = tmp_path / f"{backend}.npz"
    run = registry.call("aion_conformance.trajectory.parity:train", backend, str(own), [],
                        backend=backend, timeout=600)
    dev = deviation(run, ref)
    print(f"{backend}: max rel deviation {dev}")
    assert max(dev.values()) <= TOLERANCE, dev
    assert run["loss"][-1] < run["loss"][0]  # it trains

    want = {"loss": ref["loss"][RESUME_AT:], "alpha": ref["alpha"][RESUME_AT:]}
    resumed = registry.call("aion_conformance.trajectory.parity:train", backend, None,
                            [str(own), str(ref_ckpt)], backend=backend, timeout=600)
    assert sorted(resumed) == sorted([backend, "reference"])
    resumed[f"{backend} on reference"] = reference.run(resume(make_problem(), load_checkpoint(own)),
                                                       STEPS - RESUME_AT)
    for name, got in resumed.items():
        assert max(deviation(got, want).values()) <= TOLERANCE, (name, deviation(got, want))


def test_outside_driver_trajectory_hook():
    """An outside driver's ``trajectory`` runs parity and both checkpoint directions, and can fail."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from trajectory_drivers import StateDroppingDriver, TorchTrajectoryDriver

    from aion_conformance.trajectory.parity import hook_checks

    good = hook_checks(TorchTrajectoryDriver())
    assert [r.check for r in good] == ["trajectory", "checkpoint", "checkpoint"]
    assert all(r.status == "pass" for r in good), [r.messages for r in good]
    assert 0 < max(r.max_rel for r in good) <= TOLERANCE
    bad = {r.case: r for r in hook_checks(StateDroppingDriver())}
    resumed_here = bad["the reference's checkpoint resumed here"]
    assert resumed_here.status == "fail" and "[spec 9: portable checkpoint]" in resumed_here.messages[0]
    assert bad["this checkpoint resumed on the reference"].status == "pass"  # its export is fine
