"""Run a test's body on each rank of a gloo group of CPU processes (``torch.multiprocessing.spawn``)."""

from __future__ import annotations

import socket

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_group(rank, world_size, port, body, args):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        body(rank, *args)
        # body's tensors and pending collectives are gone once it returns, and the barrier has
        # every rank done with every collective before any destroys the group: a rank that
        # tears gloo down while another still holds its work can abort (SIGABRT, "terminate
        # called without an active exception", seen once in CI).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn(body, world_size: int, *args) -> None:
    """``body(rank, *args)`` on ``world_size`` processes in one gloo group; raises if any rank fails.

    ``body`` must be a module-level function (the processes are spawned, not forked).
    """
    mp.spawn(_in_group, args=(world_size, free_port(), body, args), nprocs=world_size, join=True)
