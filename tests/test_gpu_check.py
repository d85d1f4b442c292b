"""`python -m aion_conformance.gpu --device cpu --dry-run`: every GPU-check stage at toy sizes (so it cannot rot)."""

import json

import pytest

from aion_conformance import registry

STAGES = ["matrix", "bench", "original", "memory", "cuda-graph", "stability"]


@pytest.mark.backends("torch")
def test_gpu_check_dry_run_runs_every_stage(tmp_path):
    proc = registry.spawn(["-m", "aion_conformance.gpu", "--device", "cpu", "--dry-run", "--out", str(tmp_path)],
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert [s["stage"] for s in report["stages"]] == STAGES
    statuses = {s["stage"]: s["status"] for s in report["stages"]}
    assert statuses.pop("cuda-graph") in ("skipped", "pass")  # skipped without CUDA
    assert set(statuses.values()) == {"pass"}, report
    assert set(report["memory"]["variants"]) >= {"plain", "aion"}
    bench = json.loads((tmp_path / "gpu" / "bench" / "bench.json").read_text())
    assert {"aion", "aion-ops", "aion-floor"} <= set(bench[0]["overhead"]) and bench[0]["saved_bytes"]
    text = (tmp_path / "gpu.md").read_text()
    assert text.startswith("# GPU check (dry run") and "| stability | pass |" in text
