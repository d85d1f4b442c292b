"""``python -m aion_conformance.frameworks.torch.bench_ddp``: what the cross-replica ratio costs under DDP.

Each AION layer all-reduces its batch ratio in every training forward, and its gradient in
the backward (spec section 7): two small collectives per layer per step, on top of DDP's
bucketed gradient all-reduce. This times a deep model (64 pre-norm feed-forward blocks,
D=64, B=8 and T=128 per rank) on 2 gloo processes of one thread each, in interleaved
rounds: plain DDP, AION (``sync_ratio=True``, the default) and AION with the ratio kept
local to the rank (``sync_ratio=False``: no collective for the ratio).

    python -m aion_conformance.frameworks.torch.bench_ddp [--blocks 64] [--width 64] [--seconds 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aion_conformance.bench import problem
from aion_conformance.frameworks.torch import blocks as kit_blocks

VARIANTS = ("plain", "aion", problem.LOCAL_RATIO)


def _worker(rank: int, port: int, args: dict, out: str) -> None:
    import torch
    import torch.distributed as dist

    from aion_conformance.frameworks.optimizers import AdamW
    from aion_conformance.frameworks.torch import optim
    from aion_pytorch import AionResidual

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        steps = {}
        for variant in VARIANTS:
            net = kit_blocks.Net(problem.make_net(args["width"], "plain" if variant == "plain" else "aion",
                                                  args["blocks"]))
            if variant == problem.LOCAL_RATIO:  # each rank's own ratio: no collective for it
                for layer in net.modules():
                    if isinstance(layer, AionResidual):
                        layer.config = dataclasses.replace(layer.config, sync_ratio=False)
            model = torch.nn.parallel.DistributedDataParallel(net)
            opt = optim.make(AdamW(), model.parameters())
            gen = torch.Generator().manual_seed(rank)
            x, target = (torch.randn(args["batch"], args["seq"], args["width"], generator=gen) for _ in range(2))

            def step(model=model, opt=opt, x=x, target=target):
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.mse_loss(model(x)[0], target).backward()
                opt.step()

            steps[variant] = step
        times = {v: [] for v in VARIANTS}
        for _ in range(args["warmup"]):
            for step in steps.values():
                step()
        start, rounds = time.perf_counter(), 0
        # Both ranks must run the same number of rounds: rank 0 decides and broadcasts.
        while True:
            go = torch.tensor(float(rounds < 10 or time.perf_counter() - start < args["seconds"]))
            dist.broadcast(go, 0)
            if not go:
                break
            k = rounds % len(VARIANTS)
            for v in VARIANTS[k:] + VARIANTS[:k]:
                dist.barrier()
                t0 = time.perf_counter()
                steps[v]()
                times[v].append(time.perf_counter() - t0)
            rounds += 1
        if rank == 0:
            Path(out).write_text(json.dumps(times))
    finally:
        dist.destroy_process_group()


def measure(blocks: int = 64, width: int = 64, batch: int = 8, seq: int = 128, seconds: float = 30.0,
            warmup: int = 3) -> dict:
    """Median step time per variant and the median paired ratio to plain DDP ± half its IQR."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times.json")
        args = {"blocks": blocks, "width": width, "batch": batch, "seq": seq, "seconds": seconds, "warmup": warmup}
        mp.spawn(_worker, args=(port, args, out), nprocs=2, join=True)
        times = json.loads(Path(out).read_text())
    ratios = {v: [a / b for a, b in zip(times[v], times["plain"])] for v in VARIANTS[1:]}

    def half_iqr(r):
        q1, _, q3 = statistics.quantiles(r, n=4)
        return (q3 - q1) / 2

    return {"rounds": len(times["plain"]), "median_ms": {v: statistics.median(t) * 1e3 for v, t in times.items()},
            "overhead": {v: statistics.median(r) for v, r in ratios.items()},
            "spread": {v: half_iqr(r) for v, r in ratios.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m aion_conformance.frameworks.torch.bench_ddp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--seconds", type=float, default=30.0)
    a = p.parse_args(argv)
    r = measure(a.blocks, a.width, seconds=a.seconds)
    print(f"DDP, 2 gloo ranks x 1 thread, {a.blocks} blocks, D={a.width}, B=8 T=128 per rank, {r['rounds']} rounds")
    print("| variant | ms | / plain DDP |\n|---|---|---|")
    for v in VARIANTS:
        ratio = f"{r['overhead'][v]:.3f} ± {r['spread'][v]:.3f}" if v in r["overhead"] else "1"
        print(f"| {v} | {r['median_ms'][v]:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
