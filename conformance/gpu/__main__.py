"""``python -m aion_conformance.gpu``: the GPU check, one command on a 1-GPU machine (about 8 minutes).

    python -m aion_conformance.gpu                            # on CUDA: reports/gpu.md, reports/gpu.json
    python -m aion_conformance.gpu --device cpu --dry-run     # every stage at toy sizes, in seconds

Stages, each a process of its own with a time limit (one failing does not stop the others):

* ``matrix``: the torch execution matrix on CUDA (eager, compiled, autocast bfloat16/float16
  with GradScaler, ``.half()``/``.bfloat16()``, checkpointing) and the conformance vectors
  (``python -m aion_conformance --only torch --device cuda``);
* ``bench``: the overhead benchmark on CUDA, D=64/128: eager (``aion``; on CUDA the layer
  runs its op path, there is no CUDA kernel), ``aion-ops``, ``aion-floor``, aion-torch 1.0.2,
  and ``torch.compile`` of each model (``python -m aion_conformance.bench --device cuda``);
* ``original``: aion-torch 1.0.2's own benchmark (``bench --original``: D=512, B=8, T=128);
* ``memory``: peak CUDA memory of one training step of the bench model, AION vs plain vs
  aion-torch 1.0.2, and the bytes each saves for its backward pass;
* ``cuda-graph``: a training step captured in a CUDA graph and replayed (tests/torch/test_cuda.py);
* ``stability``: a short subset of ``stability --full`` (torch, 100 layers, one seed).

The stages' own reports go to ``OUT/gpu/``; the summary to ``OUT/gpu.md`` and ``OUT/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: A dry run's limit per stage: toy sizes, but a first run may build the C++ kernel (up to 2 minutes on 2 busy cores).
DRY_LIMIT = 300


def _stages(device: str, dry: bool, sub: Path) -> list[tuple[str, list[str], float]]:
    """(name, command, time limit in seconds) of every stage."""
    py = sys.executable
    bench = ["--backends", "torch", "--device", device, "--out", str(sub / "bench")]
    graph_test = ROOT / "tests" / "torch" / "test_cuda.py"
    if dry:
        return [
            ("matrix", [py, "-m", "aion_conformance", "--only", "numpy", "--no-bench", "--device", device,
                        "--out", str(sub / "conformance")], DRY_LIMIT),
            ("bench", [py, "-m", "aion_conformance.bench", *bench, "--widths", "8", "--batch", "2", "--seq", "4",
                       "--seconds", "0.05", "--warmup", "1", "--no-compile"], DRY_LIMIT),
            ("original", [py, "-m", "aion_conformance.bench", "--original", "--device", device, "--seconds", "0.05",
                          "--warmup", "1", "--no-compile", "--widths", "8", "--batch", "2", "--seq", "4",
                          "--out", str(sub / "original")], DRY_LIMIT),
            ("memory", [py, "-m", "aion_conformance.gpu.memory", "--device", device, "--width", "8", "--batch", "2",
                        "--seq", "4", "--out", str(sub / "memory.json")], DRY_LIMIT),
            ("cuda-graph", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(graph_test)], DRY_LIMIT),
            ("stability", [py, "-m", "aion_conformance.stability", "--backends", "torch", "--depths", "4",
                           "--seeds", "1", "--steps", "3", "--variants", "aion", "--device", device,
                           "--out", str(sub / "stability")], DRY_LIMIT),
        ]
    return [
        ("matrix", [py, "-m", "aion_conformance", "--only", "torch", "--no-bench", "--device", device,
                    "--out", str(sub / "conformance")], 150),
        ("bench", [py, "-m", "aion_conformance.bench", *bench, "--widths", "64", "128", "--seconds", "8",
                   "--variants", "aion", "aion-ops", "aion-torch-1.0.2", "aion-floor"], 150),
        ("original", [py, "-m", "aion_conformance.bench", "--original", "--device", device, "--seconds", "8",
                      "--out", str(sub / "original")], 60),
        ("memory", [py, "-m", "aion_conformance.gpu.memory", "--device", device, "--width", "512",
                    "--out", str(sub / "memory.json")], 30),
        ("cuda-graph", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(graph_test)], 60),
        ("stability", [py, "-m", "aion_conformance.stability", "--full", "--backends", "torch", "--depths", "100",
                       "--seeds", "1", "--device", device, "--out", str(sub / "stability")], 90),
    ]


def _run(name: str, command: list[str], limit: float) -> dict:
    print(f"  gpu [{name}] {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, cwd=ROOT)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        code = None
    seconds = time.perf_counter() - start
    status = "timeout" if code is None else "pass" if code == 0 else "fail"
    if status == "pass" and name == "cuda-graph" and " skipped" in output and " passed" not in output:
        status = "skipped"
    print(f"    {status} in {seconds:.1f} s", flush=True)
    return {"stage": name, "command": command[1:], "status": status, "exit_code": code, "seconds": round(seconds, 1),
            "output_tail": output[-4000:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m aion_conformance.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--dry-run", action="store_true", help="every stage at toy sizes (seconds), e.g. on the CPU")
    p.add_argument("--only", nargs="+", help="these stages only")
    p.add_argument("--out", type=Path, default=Path("reports"))
    args = p.parse_args(argv)
    sub = args.out / "gpu"
    sub.mkdir(parents=True, exist_ok=True)
    stages = [s for s in _stages(args.device, args.dry_run, sub) if not args.only or s[0] in args.only]
    env_info = _environment(args.device)
    where = env_info.get("cuda", "the CPU (no CUDA device)")
    print(f"GPU check on {where} ({'dry run' if args.dry_run else 'full'}), {len(stages)} stages", flush=True)
    results = [_run(*stage) for stage in stages]
    memory = sub / "memory.json"
    report = {"environment": env_info, "dry_run": args.dry_run, "stages": results,
              "memory": json.loads(memory.read_text()) if memory.exists() else None}
    (args.out / "gpu.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu.md").write_text(_markdown(report, sub))
    print(f"wrote {args.out / 'gpu.md'}, gpu.json")
    return 0 if all(r["status"] in ("pass", "skipped") for r in results) else 1


def _environment(device: str) -> dict:
    # torch's versions and device, asked of the torch kit in a process of its own (this one imports no framework).
    from aion_conformance import registry

    try:
        versions = registry.call("aion_conformance.frameworks.torch.arrays:versions", backend="torch")
    except registry.BackendError as e:
        versions = {"error": str(e)[-500:]}
    return {**versions, "requested": device, "python": sys.version.split()[0], "host": os.uname().nodename}


def _markdown(report: dict, sub: Path) -> str:
    env = report["environment"]
    lines = ["# GPU check" + (" (dry run: toy sizes, not figures)" if report["dry_run"] else ""), "",
             f"{env.get('cuda', 'no CUDA device')}, torch {env.get('torch', '?')}, Python {env['python']}.", "",
             "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {r['seconds']} |" for r in report["stages"]]
    for name, path in (("Execution matrix", sub / "conformance" / "conformance.md"),
                       ("Benchmark", sub / "bench" / "bench.md"), ("aion-torch 1.0.2's benchmark",
                                                                   sub / "original" / "bench.md")):
        if path.exists():
            lines += ["", f"## {name}", "", path.read_text().split("\n", 1)[-1].strip()]
    if report["memory"]:
        lines += ["", "## Memory (one training step)", "", "| variant | peak MB | saved for backward MB |",
                  "|---|---|---|"]
        lines += [f"| {v} | {m['peak_mb']} | {m['saved_mb']} |" for v, m in report["memory"]["variants"].items()]
    for r in report["stages"]:
        if r["status"] not in ("pass", "skipped"):
            lines += ["", f"## {r['stage']}: {r['status']}", "", "```", r["output_tail"][-2000:], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
