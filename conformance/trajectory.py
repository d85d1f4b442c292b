"""A small pre-norm AION network trained a few SGD steps: the cross-framework trajectory problem.

Model: ``h = x``; per block ``xn = LayerNorm(h)``, ``y = tanh(xn @ w + b)``,
``h = AionResidual(h, y, x_norm=xn)``; loss ``mean((h - target)**2)``; plain SGD with
``lr`` on every parameter (alpha0, beta, LayerNorm scale/bias, w, b). Every framework
starts from the same numpy weights, so losses and per-block alphas can be compared
step by step.

A run can start from a *network checkpoint* (the portable format of spec section 9 applied
to this network): a flat dict ``"blocks.<i>.<name>"`` -> array, ``<name>`` one of
``ln_scale``, ``ln_bias``, ``w`` ([in, out]), ``b`` and the AION entries ``alpha0``, ``beta``,
``ratio_ema``, ``step_count``, ``nonfinite_count``. Every runner returns the checkpoint
of its final weights, so training can move between frameworks.
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


WEIGHT_KEYS = ("ln_scale", "ln_bias", "w", "b")
AION_DTYPES = {"alpha0": np.float32, "beta": np.float32, "ratio_ema": np.float32,
               "step_count": np.int32, "nonfinite_count": np.int32}


def block_aion(problem: dict, block: dict) -> dict:
    """The AION parameters and state a block starts from (fresh unless resumed)."""
    fresh = {"alpha0": problem["alpha0"], "beta": problem["beta"], "ratio_ema": 1.0,
             "step_count": 0, "nonfinite_count": 0}
    return {k: np.asarray(block.get(k, v), dtype) for (k, v), dtype in
            zip(fresh.items(), AION_DTYPES.values())}


def to_checkpoint(blocks: list[dict]) -> dict:
    """Per-block weights and AION entries -> the flat portable dict (JSON-ready lists)."""
    flat = {}
    for i, blk in enumerate(blocks):
        for k in WEIGHT_KEYS:
            flat[f"blocks.{i}.{k}"] = np.asarray(blk[k], np.float32).tolist()
        for k, dtype in AION_DTYPES.items():
            flat[f"blocks.{i}.{k}"] = np.asarray(blk[k], dtype).item()
    return flat


def resume(problem: dict, checkpoint: dict) -> dict:
    """``problem`` with its blocks replaced by those of a portable ``checkpoint``."""
    n = len(problem["blocks"])
    blocks = [{k: np.asarray(checkpoint[f"blocks.{i}.{k}"], AION_DTYPES.get(k, np.float32))
               for k in (*WEIGHT_KEYS, *AION_DTYPES)} for i in range(n)]
    return {**problem, "blocks": blocks}


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
        aion = AionResidual(problem["alpha0"], problem["beta"])
        aion.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in block_aion(problem, p).items()})
        blocks.append(torch.nn.ModuleDict({"norm": norm, "lin": lin, "aion": aion}))
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
    final = [{"ln_scale": b["norm"].weight, "ln_bias": b["norm"].bias, "w": b["lin"].weight.T,
              "b": b["lin"].bias, **b["aion"].state_dict()} for b in model]
    final = [{k: v.detach().numpy() for k, v in blk.items()} for blk in final]
    return {"loss": losses, "alpha": alphas, "checkpoint": to_checkpoint(final)}


def run_reference(problem: dict, steps: int = 20) -> dict:
    """The float64 reference trajectory: ``aion_core`` on numpy, backpropagated by hand.

    AION's forward and gradients come from :func:`conformance.reference.reference_call`;
    LayerNorm, the dense layer and tanh are differentiated here.
    """
    import aion_core
    from conformance.reference import reference_call

    config = aion_core.AionConfig(problem["alpha0"], problem["beta"])
    eps = problem["ln_eps"]
    params, states = [], []
    for block in problem["blocks"]:
        aion = block_aion(problem, block)
        params.append({**{k: np.asarray(block[k], np.float64) for k in WEIGHT_KEYS},
                       "alpha0": float(aion["alpha0"]), "beta": float(aion["beta"])})
        states.append({"ratio_ema": float(aion["ratio_ema"]), "step_count": int(aion["step_count"]),
                       "nonfinite_count": int(aion["nonfinite_count"])})
    x, target = np.asarray(problem["x"], np.float64), np.asarray(problem["target"], np.float64)
    losses, alphas = [], []
    for _ in range(steps):
        h, tape, step_alphas = x, [], []
        for p, i in zip(params, range(len(params))):
            mu = h.mean(-1, keepdims=True)
            inv = 1.0 / np.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + eps)
            xhat = (h - mu) * inv
            xn = xhat * p["ln_scale"] + p["ln_bias"]
            y = np.tanh(xn @ p["w"] + p["b"])
            before = states[i]
            res, states[i] = reference_call(config, p["alpha0"], p["beta"], before, "train", h, y, xn)
            tape.append((h, inv, xhat, xn, y, before))
            step_alphas.append(res["stats"]["alpha"])
            h = res["out"]
        losses.append(float(np.mean((h - target) ** 2)))
        alphas.append(step_alphas)
        dh = 2.0 * (h - target) / h.size
        for p, (h_in, inv, xhat, xn, y, before) in reversed(list(zip(params, tape))):
            res, _ = reference_call(config, p["alpha0"], p["beta"], before, "train", h_in, y, xn, dh)
            g = res["grads"]
            dz = g["y"] * (1.0 - y * y)
            dxn = g["x_norm"] + dz @ p["w"].T
            dxhat = dxn * p["ln_scale"]
            grads = {"alpha0": g["alpha0"], "beta": g["beta"], "w": xn.T @ dz, "b": dz.sum(0),
                     "ln_scale": (dxn * xhat).sum(0), "ln_bias": dxn.sum(0)}
            dh = g["x"] + inv * (dxhat - dxhat.mean(-1, keepdims=True)
                                 - xhat * (dxhat * xhat).mean(-1, keepdims=True))
            for k, v in grads.items():
                p[k] = p[k] - problem["lr"] * v
    final = [{**p, **st} for p, st in zip(params, states)]
    return {"loss": losses, "alpha": alphas, "checkpoint": to_checkpoint(final)}
