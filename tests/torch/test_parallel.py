"""Parallel layouts beyond data parallelism, with gloo processes on CPU, against one process.

- Sequence / tensor parallel: AION's inputs are ``DTensor``s sharded over a mesh; with the
  default ``sync_ratio=True`` the ratio is the whole tensor's, as in one process.
- Pipeline stages x data parallel (4 ranks, a 2 x 2 mesh): each stage's layer averages its
  ratio over its own data-parallel group (``process_group``) and equals one process holding
  that stage's whole batch; the default group would mix the stages' ratios.
"""

from __future__ import annotations

import pytest
import torch

import gloo_group
from aion_pytorch import AionBlock, AionResidual, set_process_group

pytestmark = pytest.mark.distributed
B, T, D = 4, 6, 8


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(B, T, D, generator=g), 3 * torch.randn(B, T, D, generator=g)
    return x, y, torch.nn.functional.layer_norm(x, (D,))


def _residual_step(layer, x, y, x_norm):
    """Two training forwards and one backward: output, gradients of every input and parameter, state."""
    leaves = [t.detach().requires_grad_() for t in (x, y, x_norm)]
    layer(*leaves)
    out = layer(*leaves)
    (out.float() ** 2).sum().backward()
    return {"out": out, "x": leaves[0].grad, "y": leaves[1].grad, "x_norm": leaves[2].grad,
            "alpha0": layer.alpha0.grad, "beta": layer.beta.grad, "ratio_ema": layer.ratio_ema,
            "step_count": layer.step_count}


def _sharded_inputs_worker(rank, path, dim):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (2,))
    sharded = [distribute_tensor(t, mesh, [Shard(dim)]) for t in _inputs()]
    result = _residual_step(AionResidual(beta=0.5), *sharded)
    result = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in result.items()}
    torch.save({k: v.detach() for k, v in result.items()}, f"{path}.{rank}")


@pytest.mark.parametrize("dim", [1, 2], ids=["sequence", "features"])
def test_sharded_dtensor_inputs_equal_one_process(tmp_path, dim):
    """Sequence parallel splits the sequence axis, tensor parallel (a column-parallel
    branch's output) the feature axis, over which AION takes its energies."""
    path = str(tmp_path / "sharded")
    gloo_group.spawn(_sharded_inputs_worker, 2, path, dim)
    want = _residual_step(AionResidual(beta=0.5), *_inputs())
    for rank in range(2):
        got = torch.load(f"{path}.{rank}")
        for name in want:
            torch.testing.assert_close(got[name], want[name].detach(), rtol=1e-6, atol=1e-6, msg=name)


def _stage_model(stage: int) -> AionBlock:
    torch.manual_seed(10 + stage)
    return AionBlock(torch.nn.Linear(D, D), D, beta=0.5)


def _stage_batch(stage: int) -> torch.Tensor:
    return (1 + 3 * stage) * torch.randn(B, T, D, generator=torch.Generator().manual_seed(20 + stage))


def _train(block, x, steps=2):
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        block(x).square().mean().backward()
        grads = {n: p.grad.clone() for n, p in block.named_parameters()}
        opt.step()
    return grads, {n: b.clone() for n, b in block.named_buffers()}


def _pipeline_worker(rank, path, use_dp_group):
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("pp", "dp"))
    stage, replica = rank // 2, rank % 2
    block = _stage_model(stage)
    if use_dp_group:
        assert set_process_group(block, mesh["dp"].get_group()) == 1
    # Each stage is data parallel over its own replicas (DDP averages their gradients).
    ddp = torch.nn.parallel.DistributedDataParallel(block, process_group=mesh["dp"].get_group())
    half = _stage_batch(stage)[2 * replica:2 * replica + 2]
    grads, state = _train(ddp, half)
    torch.save(({k.removeprefix("module."): v for k, v in grads.items()},
                {k.removeprefix("module."): v for k, v in state.items()}), f"{path}.{rank}")


@pytest.mark.parametrize("use_dp_group", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_pipeline_stages_average_over_their_own_data_parallel_group(tmp_path, use_dp_group):
    path = str(tmp_path / "pp")
    gloo_group.spawn(_pipeline_worker, 4, path, use_dp_group)
    for stage in range(2):
        want_grads, want_state = _train(_stage_model(stage), _stage_batch(stage))
        ranks = [torch.load(f"{path}.{2 * stage + r}") for r in range(2)]
        same = all(torch.allclose(rank[1]["aion.ratio_ema"], want_state["aion.ratio_ema"], rtol=1e-6, atol=0)
                   for rank in ranks)
        if not use_dp_group:  # the default group averages both stages' ratios: not this stage's ratio
            assert not same
            continue
        assert same
        for rank in ranks:  # DDP averaged the gradients over the stage's replicas
            for name, grad in want_grads.items():
                torch.testing.assert_close(rank[0][name], grad, rtol=1e-5, atol=1e-6, msg=name)
            for name, value in want_state.items():
                torch.testing.assert_close(rank[1][name], value, rtol=1e-6, atol=0, msg=name)


def _hsdp_worker(rank, path):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from aion_pytorch import fsdp_ignored_params

    # HSDP: replicated over one mesh dimension, sharded over the other; all 4 ranks hold a batch share.
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    model = torch.nn.Sequential(_stage_model(0), _stage_model(1))
    scalars = fsdp_ignored_params(model)
    for block in model:
        fully_shard(block, mesh=mesh, ignored_params=scalars)
    fully_shard(model, mesh=mesh, ignored_params=scalars)
    x = _stage_batch(0)[rank:rank + 1]
    _train(model, x)
    state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v.clone()
             for k, v in model.state_dict().items()}
    torch.save(state, f"{path}.{rank}")


def test_hsdp_on_a_2d_mesh_equals_one_process(tmp_path):
    """The default process group is right for HSDP: every rank holds the layers and a share."""
    path = str(tmp_path / "hsdp")
    gloo_group.spawn(_hsdp_worker, 4, path)
    model = torch.nn.Sequential(_stage_model(0), _stage_model(1))
    _train(model, _stage_batch(0))
    want = model.state_dict()
    for rank in range(4):
        got = torch.load(f"{path}.{rank}")
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, rtol=2e-6, atol=2e-6, msg=name)
