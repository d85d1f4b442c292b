"""The real-task benchmark (``python -m aion_conformance.evidence``): data, failure rule, harness."""

import json
import math

import numpy as np
import pytest

from aion_conformance import registry
from aion_conformance.evidence import data, problem, runner
from aion_conformance.evidence import __main__ as cli
from aion_conformance.evidence.report import annotate, best_rows, best_table, shared_table, summarize


def test_split_is_fixed_by_path_and_has_no_overlap():
    files = data.list_files()
    assert files == sorted(files) and len(files) > 100
    train, held = data.split(files)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(files)
    assert all(data.held_out(f) for f in held) and not any(data.held_out(f) for f in train)
    assert 0.05 < len(held) / len(files) < 0.2
    # The split is a function of the path alone: adding or removing files moves no other.
    train2, held2 = data.split(files[::2])
    assert set(held2) == set(held) & set(files[::2])
    assert not any(part in f.split("/")[:-1] for f in files for part in data.SKIPPED)


def test_corpus_and_batches_are_deterministic_and_disjoint():
    a, b = data.corpus.__wrapped__(20_000, 5_000), data.corpus.__wrapped__(20_000, 5_000)
    assert np.array_equal(a["train"], b["train"]) and np.array_equal(a["held_out"], b["held_out"])
    assert len(a["train"]) == 20_000 and len(a["held_out"]) == 5_000 and a["train"].max() < data.VOCAB
    assert set(a["train_files"]).isdisjoint(a["held_out_files"])
    assert a["python"] == data.python_version()
    x, y = data.train_batches(a["train"], 0, 3, 2, 16)
    x2, _ = data.train_batches(a["train"], 0, 3, 2, 16)
    assert x.shape == y.shape == (3, 2, 16) and np.array_equal(x, x2)
    assert np.array_equal(x[..., 1:], y[..., :-1])  # targets: the inputs shifted by one byte
    assert not np.array_equal(x, data.train_batches(a["train"], 1, 3, 2, 16)[0])
    vx, vy = data.val_set(a["held_out"], 16, 8)
    assert vx.shape == (8, 16) and np.array_equal(vx[:, 1:], vy[:, :-1])


def _run(vals, losses=(5.0, 3.0)):
    return {"loss": list(losses), "val": [[i + 1, v] for i, v in enumerate(vals)]}


def test_failure_rule_on_synthetic_curves():
    best = 2.0
    assert problem.failed(_run([3.0, 2.5, 2.1]), best) is None
    assert problem.failed(_run([3.0, 2.5, 2.1 + problem.DEGRADED]), best) == "degraded"
    assert problem.failed(_run([3.0, 2.2, 2.2 + problem.RISE + 0.01]), best) == "rising"
    assert problem.failed(_run([3.0, 2.2, 2.2 + problem.RISE - 0.01]), best) is None  # a small bump is fine
    assert problem.failed(_run([3.0, math.nan]), best) == "non-finite"
    assert problem.failed(_run([3.0, 2.1], losses=(5.0, math.inf)), best) == "non-finite"
    assert problem.failed(_run([]), best) == "non-finite"


def test_failures_are_judged_within_their_setting():
    runs = [{"depth": 2, "precision": None, "lr": lr, "variant": v, "seed": s, "seconds": 1.0,
             "final_scales": [], **_run([3.0, final])}
            for lr, finals in ((1e-3, {"standard": 2.0, "aion": 2.2}), (1e-2, {"standard": 2.9, "aion": 2.05}))
            for v, final in finals.items() for s in range(3)]
    runs.append({**runs[-1], "seed": 3, **_run([3.0, math.nan])})
    marked = {(r["lr"], r["variant"], r["seed"]): r["failure"] for r in annotate(runs)}
    assert marked[(1e-2, "standard", 0)] == "degraded" and marked[(1e-3, "aion", 0)] is None
    assert marked[(1e-2, "aion", 3)] == "non-finite"
    rows = {(r["lr"], r["variant"]): r for r in summarize(runs)}
    assert rows[(1e-2, "aion")]["failed"] == 1 and rows[(1e-2, "aion")]["finite"] == 3
    assert rows[(1e-2, "standard")]["failed"] == 3
    best = {r["variant"]: r for r in best_rows(list(rows.values()))}
    # aion's best lr has a diverged seed; its other lr has all seeds finite, so that one is picked.
    assert best["standard"]["lr"] == 1e-3 and best["aion"]["lr"] == 1e-3
    text = "\n".join(best_table(list(rows.values())) + shared_table(list(rows.values())))
    assert "**3/3 failed**" in text and "| aion |" in text


def test_every_variant_starts_from_the_same_weights():
    prob = problem.make_problem(0, 2)
    for name, variant in problem.VARIANTS.items():
        net = problem.to_net(prob, variant)
        assert len(net.blocks) == 4 and net.blocks[0].attention is not None, name
        assert np.array_equal(net.embed, prob["embed"]) and np.array_equal(net.head.w, prob["head"].w), name
        if name != "post-deepnorm":
            assert np.array_equal(net.blocks[1].branch[0].w, prob["layers"][0][1].w), name
    deep = problem.to_net(prob, problem.VARIANTS["post-deepnorm"]).blocks[0].attention
    q = prob["layers"][0][0].qkv.w
    assert np.array_equal(deep.qkv.w[:, :64], q[:, :64]) and not np.array_equal(deep.qkv.w[:, 128:], q[:, 128:])
    assert problem.to_net(prob, problem.VARIANTS["fixed-1/sqrt(2N)"]).blocks[0].aion.alpha0 == pytest.approx(0.5)


@pytest.mark.backends(registry.SWEEPS)
def test_tiny_run_end_to_end_writes_the_report(tmp_path, monkeypatch):
    # The CLI with its backend processes replaced by this process: 2 steps of a 1-layer model.
    pytest.importorskip(registry.BACKENDS[registry.SWEEPS].kit)
    monkeypatch.setattr(data, "TRAIN_CAP", 50_000)

    def in_process(groups, jobs, log=None, thread_env=True, run=True):
        done = []
        for g in groups:
            done += runner.train_group(g["backend"], g["seed"], g["depth"], g["specs"], g["steps"], g["batch"],
                                       g["eval_every"], g["train_cap"], str(log))
        return done

    monkeypatch.setattr(cli, "run_sweep", in_process)
    variants = ["aion", "aion-lagged", "post-deepnorm"]
    code = cli.main(["--depths", "1", "--lrs", "3e-3", "--seeds", "2", "--steps", "2", "--batch", "2",
                     "--variants", *variants, "--bf16-lrs", "3e-3", "--bf16-variants", "aion",
                     "--backends", "torch", "--train-cap", "50000", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "evidence.json").read_text())
    assert len(report["runs"]) == 2 * (len(variants) + 1)
    assert {(r["variant"], r["precision"]) for r in report["table"]} == {
        *((v, "float32") for v in variants), ("aion", "bfloat16")}
    assert all(r["val"][-1][0] == 2 for r in report["runs"])
    recorded = [r for r in report["runs"] if r["record"]]
    assert len(recorded) == 1 and np.shape(recorded[0]["scales"]) == (2, 2)
    text = (tmp_path / "evidence.md").read_text()
    assert "**depth 1, bfloat16**" in text and "| aion-lagged |" in text
    assert len(runner.read_log(tmp_path / "evidence_runs.jsonl")) == len(report["runs"])


@pytest.mark.backends(registry.SWEEPS)
def test_causal_controls_keep_aions_forward():
    # Stop-gradient AION has AION's forward; the lagged one differs only through alpha.
    kit = pytest.importorskip(registry.BACKENDS[registry.SWEEPS].kit)
    monkey = {v: problem.run(kit, 0, 1, v, 3e-3, 3, batch=2, train_cap=50_000)
              for v in ("aion", "aion-stopgrad", "aion-lagged")}
    assert monkey["aion"]["loss"][0] == pytest.approx(monkey["aion-stopgrad"]["loss"][0], rel=1e-6)
    assert monkey["aion"]["loss"][0] != monkey["aion-lagged"]["loss"][0]
    assert monkey["aion"]["loss"][0] == pytest.approx(monkey["aion-lagged"]["loss"][0], rel=1e-2)


def test_versus_table_words():
    from aion_conformance.evidence.report import versus, versus_table

    row = {"depth": 8, "precision": "float32", "lr": 1e-2, "mean": 2.40, "std": 0.005, "finite": 3, "seeds": 3,
           "failed": 0}
    assert versus(row, {**row, "mean": 2.38}) == "worse (+0.020)"
    assert versus(row, {**row, "mean": 2.42}) == "better (-0.020)"
    assert versus(row, {**row, "mean": 2.395}) == "level (+0.005)"
    assert versus(row, {**row, "failed": 3}) == "other fails 3/3" and versus({**row, "failed": 1}, row) == "fails 1/3"
    rows = [{**row, "variant": "aion"}, {**row, "variant": "fixed-0.1", "mean": 2.38}]
    text = "\n".join(versus_table(rows))
    assert "| 8 | float32 | 0.01 |  | worse (+0.020) |  |  |" in text
    assert "`aion-0.5` against" not in text  # no rows of it: no table
    half = [{**row, "variant": "aion-0.5"}, {**row, "variant": "fixed-0.5", "mean": 2.42}]
    text = "\n".join(versus_table(rows + half))
    assert "`aion-0.5` against" in text
    assert "| 8 | float32 | 0.01 |  | better (-0.020) | worse (+0.020) |  |  |" in text


@pytest.mark.backends(registry.SWEEPS)
def test_trained_scalars_start_as_the_fixed_scale_of_their_start():
    # scalar-0.5 / post-scalar-0.5 are fixed-0.5 / post-fixed-0.5 whose scale then trains: the
    # same first loss, different later ones; post-LN differs from pre-LN from the first step.
    kit = pytest.importorskip(registry.BACKENDS[registry.SWEEPS].kit)
    runs = {v: problem.run(kit, 0, 1, v, 1e-2, 3, batch=2, train_cap=50_000)
            for v in ("fixed-0.5", "scalar-0.5", "post-fixed-0.5", "post-scalar-0.5")}
    for norm in ("", "post-"):
        fixed, scalar = runs[f"{norm}fixed-0.5"], runs[f"{norm}scalar-0.5"]
        assert scalar["loss"][0] == pytest.approx(fixed["loss"][0], rel=1e-6), norm
        assert scalar["loss"][-1] != fixed["loss"][-1], norm
        assert scalar["final_scales"][0] != pytest.approx(0.5, abs=1e-6) and fixed["final_scales"][0] == 0.5, norm
    assert runs["post-scalar-0.5"]["loss"][0] != pytest.approx(runs["scalar-0.5"]["loss"][0], rel=1e-6)
