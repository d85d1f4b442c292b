"""DDP and FSDP2 (``fully_shard``) with 2 gloo processes on CPU: the batch ratio is the mean over ranks.

Each rank holds half the batch; the state, outputs and (averaged) gradients must equal
those of one process holding the whole batch.
"""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aion_pytorch import AionBlock, fsdp_ignored_params

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
    return {k: v.detach().clone() if not hasattr(v, "full_tensor") else v.detach() for k, v in model.state_dict().items()}


def _wrap(model, wrapper):
    if wrapper == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2,))
    scalars = fsdp_ignored_params(model)  # FSDP2 refuses 0-d parameters
    for block in model:
        fully_shard(block, mesh=mesh, ignored_params=scalars)  # per block, then the root: the usual layout
    return fully_shard(model, mesh=mesh, ignored_params=scalars)


def _full(value):
    # FSDP2 parameters are DTensors sharded over the ranks: gather the whole tensor.
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def _worker(rank, port, out_path, wrapper):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = _wrap(_model(), wrapper)
        final = _train(model, [x[2 * rank:2 * rank + 2] for x in _data()])
        torch.save({k.removeprefix("module."): _full(v) for k, v in final.items()}, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2"])
def test_two_ranks_equal_single_process(tmp_path, wrapper):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "state")
    mp.spawn(_worker, args=(port, out, wrapper), nprocs=2, join=True)
    single = _train(_model(), _data())
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    for k, v in single.items():
        torch.testing.assert_close(ranks[0][k], ranks[1][k], rtol=0, atol=0)  # ranks agree exactly
        torch.testing.assert_close(ranks[0][k], v, rtol=2e-6, atol=2e-6)  # and equal one process
    assert int(single["0.aion.step_count"]) == STEPS
    # the ratio really was global: a rank-local ratio would give a different EMA
    assert not torch.equal(ranks[0]["0.aion.ratio_ema"], torch.tensor(1.0))
