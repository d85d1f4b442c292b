"""The trajectory problem (:mod:`~aion_conformance.trajectory.problem`) trained with :mod:`aion_pytorch`."""

from __future__ import annotations

import torch

from aion_conformance.frameworks import torch as fw
from aion_conformance.trajectory.problem import block_aion, to_checkpoint
from aion_pytorch import AionResidual


def _blocks(problem: dict) -> torch.nn.ModuleList:
    blocks = []
    for p in problem["blocks"]:
        dim = p["w"].shape[0]
        norm = torch.nn.LayerNorm(dim, eps=problem["ln_eps"])
        lin = torch.nn.Linear(dim, dim)
        with torch.no_grad():
            for param, value in ((norm.weight, p["ln_scale"]), (norm.bias, p["ln_bias"]),
                                 (lin.weight, p["w"].T), (lin.bias, p["b"])):
                param.copy_(fw.from_numpy(value, "float32"))
        aion = AionResidual(problem["alpha0"], problem["beta"])
        aion.load_state_dict({k: torch.from_numpy(v) for k, v in block_aion(problem, p).items()})
        blocks.append(torch.nn.ModuleDict({"norm": norm, "lin": lin, "aion": aion}))
    return torch.nn.ModuleList(blocks)


def run(problem: dict, steps: int = 20) -> dict:
    """Train; loss and per-block alpha of every step's forward, and the final checkpoint."""
    model = _blocks(problem)
    params = list(model.parameters())
    x, target = (fw.from_numpy(problem[k], "float32") for k in ("x", "target"))

    def loss_fn():
        h, alphas = x, []
        for blk in model:
            xn = blk["norm"](h)
            h, stats = blk["aion"](h, torch.tanh(blk["lin"](xn)), x_norm=xn, return_stats=True)
            alphas.append(stats["alpha"])
        return torch.mean((h - target) ** 2), alphas

    losses, alphas = [], []
    for _ in range(steps):
        loss, step_alphas, _, grads = fw.value_and_grad(loss_fn, [], params)
        fw.sgd(params, grads, problem["lr"])
        losses.append(loss.item())
        alphas.append([a.item() for a in step_alphas])
    final = [{"ln_scale": b["norm"].weight, "ln_bias": b["norm"].bias, "w": b["lin"].weight.T,
              "b": b["lin"].bias, **b["aion"].state_dict()} for b in model]
    return {"loss": losses, "alpha": alphas,
            "checkpoint": to_checkpoint([{k: v.detach().numpy() for k, v in blk.items()} for blk in final])}
