"""The depth-stability benchmark (``python -m aion_conformance.stability``): its harness and checks."""

import json
import math

import numpy as np
import pytest

import frameworks
from aion_conformance import registry
from aion_conformance.plotting import pyplot
from aion_conformance.stability import problem
from aion_conformance.stability.__main__ import main
from aion_conformance.stability.report import plot, summarize, table
from aion_conformance.stability.runner import cross_backend, train_group


def test_seeded_problem_is_reproducible_and_drawn_after_seeding():
    a, b = problem.make_problem.__wrapped__(0, 3), problem.make_problem.__wrapped__(0, 3)
    assert np.array_equal(a["tokens"], b["tokens"]) and np.array_equal(a["blocks"][2]["w2"], b["blocks"][2]["w2"])
    other = problem.make_problem.__wrapped__(1, 3)
    assert not np.array_equal(a["tokens"], other["tokens"])
    assert not np.array_equal(a["target"], other["target"])


def test_every_variant_of_a_seed_starts_from_the_same_weights():
    prob = problem.make_problem(0, 2)
    nets = {name: problem.to_net(prob, v) for name, v in problem.VARIANTS.items()}
    for name, net in nets.items():
        assert np.array_equal(net.embed, prob["embed"]) and np.array_equal(net.head.w, prob["head_w"]), name
        gain = problem.deepnorm_constants(2)[1] if name == "post-deepnorm" else 1.0
        want = (prob["blocks"][1]["w1"] * np.float32(gain)).astype(np.float32)
        assert np.array_equal(net.blocks[1].branch[0].w, want), name
    # The fixed scale trains nothing of AION's: alpha stays 0.1.
    assert not nets["fixed"].blocks[0].aion.trainable and nets["fixed"].blocks[0].aion.beta == 0.0


def test_failed_flags_crashed_and_stuck_runs_only():
    assert problem.failed([1.3, 0.5, math.nan])
    assert problem.failed([1.3, 1.0, 0.98])  # stopped learning: post-LN at lr 1e-2 looks like this
    assert not problem.failed([1.3, 0.1, 0.001])


@pytest.mark.backends(registry.SWEEPS)
def test_a_deliberately_diverging_setting_is_flagged(monkeypatch):
    kit = pytest.importorskip(registry.BACKENDS[registry.SWEEPS].kit)

    monkeypatch.setitem(problem.VARIANTS, "lr-1", problem.Variant("lr-1", "pre", "sum", lr=1.0))
    monkeypatch.setitem(problem.VARIANTS, "lr-1e-3", problem.Variant("lr-1e-3", "pre", "sum"))
    runs = [{"backend": registry.SWEEPS, "depth": 2, "seed": 0, "variant": v, **problem.run(kit, 0, 2, v, 30)}
            for v in ("lr-1", "lr-1e-3")]
    assert runs[0]["loss"][-1] > runs[0]["loss"][0] or not math.isfinite(runs[0]["loss"][-1])
    rows = {r["variant"]: r for r in summarize(runs, threshold=0.01)}
    assert rows["lr-1"]["failed"] == 1 and rows["lr-1e-3"]["failed"] == 0
    assert rows["lr-1"]["max_grad_norm"] > rows["lr-1e-3"]["max_grad_norm"]


def test_cross_backend_check_can_fail():
    ref = {"backend": "torch", "depth": 2, "seed": 0, "variant": "aion", "loss": [1.0, 0.5, 0.25],
           "grad_norm": [1.0, 1.0, 1.0], "scale": [[0.1, 0.1]] * 3}
    same = {**ref, "backend": "flax-nnx", "loss": [1.0, 0.5 * (1 + 1e-7), 0.25]}
    bent = {**ref, "backend": "keras-jax", "scale": [[0.1, 0.1], [0.1, 0.1001], [0.1, 0.1]]}
    rows = {r["backend"]: r for r in cross_backend([ref, same, bent])}
    assert rows["flax-nnx"]["passed"] and rows["flax-nnx"]["loss"] > 0
    assert not rows["keras-jax"]["passed"] and rows["keras-jax"]["scale"] > 1e-5


def test_the_twin_run_widens_the_bound_only_as_far_as_it_moved():
    ref = {"backend": "torch", "depth": 2, "seed": 0, "variant": "post-standard", "loss": [1.0, 0.5, 0.25],
           "grad_norm": [1.0, 2.0, 3.0], "scale": None}
    twin = {**ref, "grad_norm": [1.0, 2.0, 3.0 * (1 + 1e-5)], "nudged": True}
    near = {**ref, "backend": "flax-nnx", "grad_norm": [1.0, 2.0, 3.0 * (1 + 5e-5)]}
    far = {**ref, "backend": "keras-jax", "grad_norm": [1.0, 2.0, 3.0 * (1 + 5e-4)]}
    without = {r["backend"]: r for r in cross_backend([ref, near, far])}
    assert not without["flax-nnx"]["passed"] and not without["keras-jax"]["passed"]
    rows = {r["backend"]: r for r in cross_backend([ref, twin, near, far])}
    assert set(rows) == {"flax-nnx", "keras-jax"}  # the twin is no backend of its own
    assert rows["flax-nnx"]["passed"] and rows["flax-nnx"]["bound"] == pytest.approx(10 * 1e-5, rel=1e-6)
    assert not rows["keras-jax"]["passed"]


def _report(tmp_path, *args):
    code = main([*args, "--out", str(tmp_path)])
    return code, json.loads((tmp_path / "stability.json").read_text()), (tmp_path / "stability.md").read_text()


@pytest.mark.backends(registry.SWEEPS)
def test_tiny_sweep_reports_every_variant_and_seed(tmp_path):
    # In this process (no backend process to start): the table and plots of 3 seeds, 3 steps.
    pytest.importorskip(registry.BACKENDS[registry.SWEEPS].kit)
    runs = [r for seed in range(3) for r in train_group(registry.SWEEPS, seed, 2, list(problem.VARIANTS), 3,
                                                          seed == 0)]
    assert len(runs) == 3 * len(problem.VARIANTS)
    assert all(len(r["loss"]) == len(r["grad_norm"]) == 3 for r in runs)
    scaled = [r for r in runs if r["seed"] == 0 and r["variant"] in ("aion", "aion-block", "post-aion")]
    assert len(scaled) == 3 and all(np.shape(r["scale"]) == (3, 2) for r in scaled)
    assert all(r["scale"] is None for r in runs if r["seed"] > 0 or r["variant"] == "standard")
    rows = summarize(runs, threshold=0.01)
    assert {(r["depth"], r["variant"]) for r in rows} == {(2, v) for v in problem.VARIANTS}
    assert all(r["seeds"] == 3 and r["final_std"] > 0 and math.isfinite(r["final_mean"]) for r in rows)
    text = "\n".join(table(rows, 0.01))
    for variant in problem.VARIANTS:
        assert f"| 2 | {variant} |" in text
    if pyplot() is not None:
        assert {p.name for p in plot(runs, tmp_path)} == {
            "stability_loss.png", "stability_grad_norm.png", "stability_alpha.png"}


def _cross_check(tmp_path, depth, backends, variants):
    code, report, text = _report(tmp_path, "--depths", str(depth), "--seeds", "1", "--steps", "10",
                                 "--backends", registry.SWEEPS, *backends, "--variants", *variants)
    rows = {r["backend"]: r for r in report["cross_backend"]}
    assert set(rows) == set(backends), rows
    for row in rows.values():
        assert row["runs"] == len(variants) and row["passed"], row
        assert all(math.isfinite(row[k]) for k in ("loss", "grad_norm", "scale", "loss_all_steps")), row
    assert code == 0 and "| pass |" in text
    assert report["meta"]["wall_seconds"] > 0 and report["meta"]["seeds"] == [0]
    assert {r["variant"] for r in report["table"]} == set(variants)


#: The backends checked against the sweeping one (those AION_TEST_BACKENDS selects).
CHECKED = [b for b in registry.with_problem("stability")
           if b != registry.SWEEPS and (frameworks.selected() is None or b in frameworks.selected())]


@pytest.mark.backends(registry.SWEEPS, *CHECKED)
def test_every_kit_follows_the_sweeping_backend(tmp_path):
    # The kit-specific parts: AION's frozen parameters (fixed) and AionBlock.
    _cross_check(tmp_path, 2, CHECKED, ["fixed", "aion-block"])


@pytest.mark.slow
@pytest.mark.backends(registry.SWEEPS, *CHECKED)
def test_every_kit_follows_the_sweeping_backend_at_depth_8(tmp_path):
    _cross_check(tmp_path, 8, CHECKED, list(problem.VARIANTS))
