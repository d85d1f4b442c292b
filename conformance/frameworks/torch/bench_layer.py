"""One residual layer's eager forward + backward on torch: where AION's eager time goes.

    python -m aion_conformance.frameworks.torch.bench_layer                   # D=64 and 128, B=8, T=128
    python -m aion_conformance.frameworks.torch.bench_layer --widths 512 --seconds 10

Times, per call of ``out = layer(x, y, x_norm); out.backward(dout)`` on the same tensors:

* ``x + y``: the plain residual;
* ``empty autograd.Function``: a Python ``torch.autograd.Function`` whose forward and
  backward each run one op (the price of any Python-level autograd node, before any math);
* ``aion-floor``: AION's update step in the fewest ops one such node can take
  (:mod:`aion_conformance.frameworks.torch.floor`);
* ``aion``: ``aion_pytorch.AionResidual`` (its one closed-form node, the checks and the state),
  on the CPU its C++ kernel each way (:mod:`aion_pytorch.kernels`);
* ``aion (op path)``: the same layer with ``AION_TORCH_KERNELS=ops`` (the node made of torch ops);
* ``aion-torch-1.0.2``: the original's ``AionResidual``, when installed.

Variants run one call each in rounds of rotating order; the table gives the median time per
call and its difference from ``x + y``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from aion_conformance.frameworks.torch import original
from aion_conformance.frameworks.torch.floor import FloorResidual


class _OneOpEachWay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):
        return x + y

    @staticmethod
    def backward(ctx, dout):
        return dout, dout


def variants(original_module=None) -> dict:
    """name -> ``f(x, y, x_norm)``, each a residual layer called in training mode."""
    from aion_pytorch import AionResidual, kernels

    floor, aion, aion_ops = FloorResidual(), AionResidual(), AionResidual()
    mode = kernels.kernels_mode()

    def op_path(x, y, xn):
        kernels.set_kernels("ops")
        try:
            return aion_ops(x, y, x_norm=xn)
        finally:
            kernels.set_kernels(mode)

    made = {
        "x + y": lambda x, y, xn: x + y,
        "empty autograd.Function": lambda x, y, xn: _OneOpEachWay.apply(x, y),
        "aion-floor": floor,
        "aion": lambda x, y, xn: aion(x, y, x_norm=xn),
        "aion (op path)": op_path,
    }
    if original_module is not None:
        theirs = original_module.AionResidual()
        made["aion-torch-1.0.2"] = lambda x, y, xn: theirs(x, y)
    return made


def saved_bytes(step) -> int:
    """Bytes of the distinct storages autograd saves for the backward pass while ``step()`` runs.

    Every tensor saved during the forward passes through ``torch.autograd.graph.saved_tensors_hooks``;
    each storage is counted once (``LayerNorm(x)``, saved by AION and by the branch's first
    ``Linear``, is one allocation), views at their whole storage, parameters included (a
    ``Linear`` saves its weight).
    """
    seen: dict[tuple[str, int], int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if t.device.type != "meta" and storage.data_ptr() != 0:
            seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def op_path(step):
    """``step`` run with aion_pytorch's op path (``AION_TORCH_KERNELS=ops``) instead of its C++ kernel."""
    from aion_pytorch import kernels

    def run():
        mode = kernels.kernels_mode()
        kernels.set_kernels("ops")
        try:
            return step()
        finally:
            kernels.set_kernels(mode)

    return run


def step_memory(train, x, target) -> dict:
    """One training step's peak device memory above what was allocated before it (MB; None on the
    CPU) and the bytes it saves for its backward pass (MB). ``train`` has taken a step already."""
    peak = None
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        train(x, target)
        torch.cuda.synchronize()
        peak = round((torch.cuda.max_memory_allocated() - base) / 2**20, 2)
    return {"peak_mb": peak, "saved_mb": round(saved_bytes(lambda: train(x, target)) / 2**20, 2)}


def time_layers(width: int, batch: int, seq: int, seconds: float, warmup: int = 20) -> dict[str, float]:
    """Median seconds per forward + backward call, per variant."""
    torch.manual_seed(0)
    x, y, x_norm, dout = (torch.randn(batch, seq, width) for _ in range(4))
    inputs = [t.requires_grad_() for t in (x, y, x_norm)]
    made = variants(original.load())

    def call(f):
        f(*inputs).backward(dout)
        for t in inputs:
            t.grad = None

    names = list(made)
    for _ in range(warmup):
        for name in names:
            call(made[name])
    times = {name: [] for name in names}
    start, rounds = time.perf_counter(), 0
    while rounds < 20 or time.perf_counter() - start < seconds:
        k = rounds % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            call(made[name])
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m aion_conformance.frameworks.torch.bench_layer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", nargs="+", type=int, default=[64, 128])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--seconds", type=float, default=5.0, help="timing budget per width")
    args = p.parse_args(argv)
    print("| D | layer | us per forward + backward | minus x + y |")
    print("|---|---|---|---|")
    for width in args.widths:
        medians = time_layers(width, args.batch, args.seq, args.seconds)
        base = medians["x + y"]
        for name, t in medians.items():
            print(f"| {width} | {name} | {t * 1e6:.0f} | {(t - base) * 1e6:+.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
