"""A small pre-norm AION network trained a few SGD steps: the cross-framework trajectory problem.

Model: ``h = x``; per block ``xn = LayerNorm(h)``, ``y = tanh(xn @ w + b)``,
``h = AionResidual(h, y, x_norm=xn)``; loss ``mean((h - target)**2)``; plain SGD with
``lr`` on every parameter (alpha0, beta, LayerNorm scale/bias, w, b). Every framework
starts from the same numpy weights, so losses and per-block alphas can be compared
step by step.
"""

from __future__ import annotations

import numpy as np


def make_problem(seed: int = 0, blocks: int = 3, dim: int = 16, batch: int = 8) -> dict:
    """Initial weights and data as float32-representable numpy arrays."""
    rng = np.random.default_rng(seed)

    def f32(a):
        return np.asarray(a, np.float32)

    return {
        "x": f32(rng.standard_normal((batch, dim))),
        "target": f32(rng.standard_normal((batch, dim))),
        "blocks": [{"ln_scale": f32(1.0 + 0.1 * rng.standard_normal(dim)),
                    "ln_bias": f32(0.1 * rng.standard_normal(dim)),
                    "w": f32(rng.standard_normal((dim, dim)) / np.sqrt(dim)),
                    "b": f32(0.1 * rng.standard_normal(dim))} for _ in range(blocks)],
        "alpha0": 0.1, "beta": 0.5, "lr": 0.02, "ln_eps": 1e-5,
    }


def run_torch(problem: dict, steps: int = 20) -> dict:
    """Train with :mod:`aion_torch`; loss and per-block alpha of every step's forward."""
    import torch

    from aion_torch import AionResidual

    blocks = []
    for p in problem["blocks"]:
        dim = p["w"].shape[0]
        norm = torch.nn.LayerNorm(dim, eps=problem["ln_eps"])
        lin = torch.nn.Linear(dim, dim)
        with torch.no_grad():
            norm.weight.copy_(torch.from_numpy(p["ln_scale"]))
            norm.bias.copy_(torch.from_numpy(p["ln_bias"]))
            lin.weight.copy_(torch.from_numpy(p["w"].T.copy()))
            lin.bias.copy_(torch.from_numpy(p["b"]))
        blocks.append(torch.nn.ModuleDict({"norm": norm, "lin": lin,
                                           "aion": AionResidual(problem["alpha0"], problem["beta"])}))
    model = torch.nn.ModuleList(blocks)
    opt = torch.optim.SGD(model.parameters(), lr=problem["lr"])
    x, target = torch.from_numpy(problem["x"]), torch.from_numpy(problem["target"])
    losses, alphas = [], []
    for _ in range(steps):
        h, step_alphas = x, []
        for blk in model:
            xn = blk["norm"](h)
            h, stats = blk["aion"](h, torch.tanh(blk["lin"](xn)), x_norm=xn, return_stats=True)
            step_alphas.append(stats["alpha"])
        loss = torch.mean((h - target) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        alphas.append([float(a) for a in step_alphas])
    return {"loss": losses, "alpha": alphas}
