"""DDP with 2 gloo processes on CPU: the batch ratio is the mean over ranks.

Each rank holds half the batch; the state, outputs and (DDP-averaged) gradients must
equal those of one process holding the whole batch.
"""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aion_pytorch import AionBlock

pytestmark = pytest.mark.distributed
STEPS = 3


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(AionBlock(torch.nn.Linear(8, 8), 8, beta=0.5),
                               AionBlock(torch.nn.Linear(8, 8), 8, beta=0.5))


def _data():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 8, generator=g) * (1 + i) for i in range(STEPS)]


def _train(model, batches):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x in batches:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank, port, out_path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(_model())
        final = _train(ddp, [x[2 * rank:2 * rank + 2] for x in _data()])
        torch.save({k.removeprefix("module."): v for k, v in final.items()}, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_equal_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "state")
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    single = _train(_model(), _data())
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    for k, v in single.items():
        torch.testing.assert_close(ranks[0][k], ranks[1][k], rtol=0, atol=0)  # ranks agree exactly
        torch.testing.assert_close(ranks[0][k], v, rtol=2e-6, atol=2e-6)  # and equal one process
    assert int(single["0.aion.step_count"]) == STEPS
    # the ratio really was global: a rank-local ratio would give a different EMA
    assert not torch.equal(ranks[0]["0.aion.ratio_ema"], torch.tensor(1.0))
