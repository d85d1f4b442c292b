"""The float64 reference trajectory: the spec's float64 reference on numpy, backpropagated by hand."""

from __future__ import annotations

import numpy as np

import aion_core
from aion_conformance.spec.reference import reference_call
from aion_conformance.trajectory.problem import WEIGHT_KEYS, block_aion, to_checkpoint

def run(problem: dict, steps: int = 20) -> dict:
    """The float64 reference trajectory, backpropagated by hand.

    AION's forward and gradients come from :func:`aion_conformance.spec.reference.reference_call`
    (written from the spec, without ``aion_core``);
    LayerNorm, the dense layer and tanh are differentiated here.
    """
    config = aion_core.AionConfig(problem["alpha0"], problem["beta"])
    eps = problem["ln_eps"]
    params, states = [], []
    for block in problem["blocks"]:
        aion = block_aion(problem, block)
        params.append({**{k: np.asarray(block[k], np.float64) for k in WEIGHT_KEYS},
                       "alpha0": float(aion["alpha0"]), "beta": float(aion["beta"])})
        states.append({k: v.item() for k, v in aion.items() if k in aion_core.STATE_SPEC})
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
