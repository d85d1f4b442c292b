"""``python -m aion_conformance.gpu.memory``: one training step's memory, AION vs plain vs aion-torch 1.0.2.

The benchmark's model (:mod:`aion_conformance.bench.problem`), eager, one warm step then one
measured (the torch kit's ``bench_layer.step_memory``): the peak memory the device allocates
during that step beyond what it held before (CUDA; None on the CPU), and the bytes autograd
saves for its backward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from aion_conformance import registry
from aion_conformance.bench.problem import data, make_net
from aion_conformance.frameworks.optimizers import AdamW


def measure(device: str, width: int, batch: int, seq: int) -> dict:
    os.environ[registry.DEVICE_ENV] = device
    kit = registry.kit("torch")
    from aion_conformance.frameworks.torch import bench_layer

    x, target = (kit.from_numpy(a, "float32") for a in data(batch, seq, width))
    out = {}
    for variant in ("plain", "aion", "aion-torch-1.0.2"):
        if variant in kit.EXTRA_RESIDUALS and kit.EXTRA_RESIDUALS[variant]() is None:
            continue
        train = kit.trainer(kit.build(make_net(width, variant)), AdamW(), compiled=False, observe=False)
        train(x, target)  # the optimizer's state allocated
        out[variant] = bench_layer.step_memory(train, x, target)
    return {"device": device, "versions": kit.versions(), "width": width, "batch": batch, "seq": seq,
            "variants": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m aion_conformance.gpu.memory", description=__doc__)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    result = measure(args.device, args.width, args.batch, args.seq)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
