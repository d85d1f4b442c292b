"""DDP and FSDP2 (``fully_shard``) with 2 gloo processes on CPU: the batch ratio is the mean over ranks.

Each rank holds half the batch; the state, outputs and (averaged) gradients must equal
those of one process holding the whole batch. With ``sync_ratio=False`` each rank keeps its
own batch ratio instead: a rank's forward is that of one process holding its shard alone,
and no collective is issued for the ratio.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import gloo_group
from aion_pytorch import AionBlock, fsdp_ignored_params

pytestmark = pytest.mark.distributed
STEPS = 3


class _RatioCollectives(TorchDispatchMode):
    """Counts the all-reduces of 0-d tensors: the batch ratio's and its gradient's.

    Every collective passes the dispatcher (the functional ``_c10d_functional.all_reduce``
    as the in-place ``c10d.allreduce_`` of ``dist.all_reduce``); DDP's own gradient
    all-reduce is of flat 1-D buckets and its buffer sync a broadcast, so they are not counted.
    """

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.__name__.replace("allreduce", "all_reduce")  # c10d.allreduce_, _c10d_functional.all_reduce
        if func.namespace in ("c10d", "_c10d_functional") and "all_reduce" in name:
            tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            if tensors and all(t.dim() == 0 for t in tensors):
                self.count += 1
        return func(*args, **kwargs)


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


def _worker(rank, out_path, wrapper):
    model = _wrap(_model(), wrapper)
    with _RatioCollectives() as collectives:
        final = _train(model, [x[2 * rank:2 * rank + 2] for x in _data()])
    final = {k.removeprefix("module."): _full(v) for k, v in final.items()}
    torch.save({"state": final, "ratio_collectives": collectives.count}, f"{out_path}.{rank}")


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2"])
def test_two_ranks_equal_single_process(tmp_path, wrapper):
    out = str(tmp_path / "state")
    gloo_group.spawn(_worker, 2, out, wrapper)
    single = _train(_model(), _data())
    saved = [torch.load(f"{out}.{r}") for r in range(2)]
    ranks = [s["state"] for s in saved]
    for k, v in single.items():
        torch.testing.assert_close(ranks[0][k], ranks[1][k], rtol=0, atol=0)  # ranks agree exactly
        torch.testing.assert_close(ranks[0][k], v, rtol=2e-6, atol=2e-6)  # and equal one process
    assert int(single["0.aion.step_count"]) == STEPS
    # the ratio really was global: a rank-local ratio would give a different EMA
    assert not torch.equal(ranks[0]["0.aion.ratio_ema"], torch.tensor(1.0))
    if wrapper == "ddp":  # (FSDP2's hook all-reduces the 0-d alpha0/beta gradients too)
        # sync_ratio=True: per step and layer one all-reduce of the ratio, one of its gradient
        assert [s["ratio_collectives"] for s in saved] == [STEPS * 2 * 2] * 2


# sync_ratio=False: a stack that returns every layer's stats, ema_gamma 0.5 so that a
# rank's own ratio moves its state well away from the whole batch's.
class _LocalStack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList(AionBlock(torch.nn.Linear(8, 8), 8, beta=0.5, ema_gamma=0.5,
                                                    sync_ratio=False) for _ in range(2))

    def forward(self, x):
        stats = []
        for block in self.blocks:
            x, s = block(x, return_stats=True)
            stats.append(s)
        return x, stats


def _shards(rank):
    return [x[2 * rank:2 * rank + 2] for x in _data()]


def _local_worker(rank, out_path):
    results = {}
    for sync_buffers in (False, True):  # DDP's forward_sync_buffers (broadcast_buffers before 2.13)
        model = torch.nn.parallel.DistributedDataParallel(_LocalStack(), forward_sync_buffers=sync_buffers)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        record = {"ratio_collectives": 0}
        for i, x in enumerate(_shards(rank)):
            opt.zero_grad()
            with _RatioCollectives() as collectives:
                out, stats = model(x)
                out.square().mean().backward()
            record["ratio_collectives"] += collectives.count
            if i == 0:
                record["out"], record["stats"] = out.detach(), stats
                record["grads"] = {n: p.grad.clone() for n, p in model.module.named_parameters()}
            opt.step()
        record["state"] = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
        results[sync_buffers] = record
    torch.save(results, f"{out_path}.{rank}")


def _replicas_in_one_process(sync_buffers):
    """Both ranks of the DDP run simulated: each replica its shard, gradients averaged;
    with ``sync_buffers`` replica 0's buffers copied to replica 1 before each forward."""
    replicas = [_LocalStack(), _LocalStack()]
    opts = [torch.optim.SGD(r.parameters(), lr=0.1) for r in replicas]
    for step in range(STEPS):
        if sync_buffers:
            with torch.no_grad():
                for mine, first in zip(replicas[1].buffers(), replicas[0].buffers()):
                    mine.copy_(first)
        for rank, (replica, opt) in enumerate(zip(replicas, opts)):
            opt.zero_grad()
            replica(_shards(rank)[step])[0].square().mean().backward()
        for params in zip(*(r.parameters() for r in replicas)):
            mean = (params[0].grad + params[1].grad) / 2
            for p in params:
                p.grad = mean.clone()
        for opt in opts:
            opt.step()
    return [{k: v.detach() for k, v in r.state_dict().items()} for r in replicas]


def test_sync_ratio_false_keeps_each_rank_its_own_ratio(tmp_path):
    out = str(tmp_path / "local")
    gloo_group.spawn(_local_worker, 2, out)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    close = {"rtol": 2e-6, "atol": 2e-6}
    # First step: each rank's outputs and stats are those of one process holding its shard alone ...
    single_grads = []
    for rank in range(2):
        model = _LocalStack()
        single_out, single_stats = model(_shards(rank)[0])
        single_out.square().mean().backward()
        single_grads.append({n: p.grad for n, p in model.named_parameters()})
        for sync_buffers in (False, True):
            got = ranks[rank][sync_buffers]
            torch.testing.assert_close(got["out"], single_out.detach(), **close)
            for got_stats, want_stats in zip(got["stats"], single_stats, strict=True):
                for name in ("alpha", "ratio", "ratio_ema"):
                    torch.testing.assert_close(got_stats[name], want_stats[name], **close)
    # ... and the parameter gradients DDP hands the optimizer are the mean over the shards.
    for sync_buffers in (False, True):
        for name, grad in ranks[0][sync_buffers]["grads"].items():
            want = (single_grads[0][name] + single_grads[1][name]) / 2
            for rank in range(2):
                torch.testing.assert_close(ranks[rank][sync_buffers]["grads"][name], want, **close)
    # No collective for the ratio, forward or backward (the default issues 2 per layer and step).
    assert [ranks[r][s]["ratio_collectives"] for r in range(2) for s in (False, True)] == [0] * 4
    # Three steps: each rank's state is its replica's in the simulation. Without DDP's buffer
    # sync every rank keeps its own running ratio; with it (DDP's default) each forward
    # starts from rank 0's, then applies the rank's own batch ratio.
    for sync_buffers in (False, True):
        replicas = _replicas_in_one_process(sync_buffers)
        for rank in range(2):
            for k, v in replicas[rank].items():
                torch.testing.assert_close(ranks[rank][sync_buffers]["state"][k], v, **close, msg=k)
    local = [ranks[r][False]["state"]["blocks.0.aion.ratio_ema"] for r in range(2)]
    assert abs(float(local[0] - local[1])) > 1e-3  # the ranks' ratios really differ
    # The whole batch's ratio would have given another state (positive control).
    whole = _LocalStack()
    whole(_data()[0])
    assert abs(float(whole.blocks[0].aion.ratio_ema - ranks[0][False]["stats"][0]["ratio_ema"])) > 1e-3


def _compiled_worker(rank, out_path):
    x = _shards(rank)[0]
    results = []
    for compiled in (False, True):
        model = _model()[0]  # one AionBlock, sync_ratio=True
        run = torch.compile(model, fullgraph=True) if compiled else model
        out = run(x)
        out.square().mean().backward()
        results.append({"out": out.detach(), "ratio_ema": model.aion.ratio_ema.clone(),
                        **{n: p.grad.clone() for n, p in model.named_parameters()}})
    torch.save(results, f"{out_path}.{rank}")


def test_compiled_layer_takes_the_cross_rank_mean(tmp_path):
    """torch.compile(fullgraph=True) traces the ratio's all-reduce (torch 2.13 refuses the
    deprecated torch.distributed.nn.functional.all_reduce under compile) and its gradient
    equals eager's, which equals one process holding the whole batch."""
    out = str(tmp_path / "compiled")
    gloo_group.spawn(_compiled_worker, 2, out)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    whole = _model()[0]
    whole_out = whole(_data()[0])
    whole_out.square().mean().backward()
    for rank, (eager, compiled) in enumerate(ranks):
        for k in eager:
            torch.testing.assert_close(compiled[k], eager[k], rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(eager["out"], whole_out.detach()[2 * rank:2 * rank + 2], rtol=2e-6, atol=2e-6)
        torch.testing.assert_close(eager["ratio_ema"], whole.aion.ratio_ema, rtol=2e-6, atol=2e-6)
    for name, p in whole.named_parameters():  # the mean over ranks of the per-shard-loss gradients
        for result in (0, 1):
            torch.testing.assert_close((ranks[0][result][name] + ranks[1][result][name]) / 2, p.grad,
                                       rtol=1e-5, atol=1e-6, msg=name)
