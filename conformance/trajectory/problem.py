"""A small pre-norm AION network trained a few SGD steps: the cross-framework trajectory problem.

Model: ``h = x``; per block an AionBlock: ``xn = LayerNorm(h)``, ``y = tanh(xn @ w + b)``,
``h = AionResidual(h, y, x_norm=xn)``; loss ``mean((h - target)**2)``; plain SGD with
``lr`` on every parameter (alpha0, beta, LayerNorm scale/bias, w, b). Every framework
builds it from the same numpy weights (:func:`to_net`) with its kit and trains it with
:func:`run`, so losses and per-block alphas can be compared step by step.

A run can start from a *network checkpoint*: the portable layout of spec section 9
(:mod:`aion_core.portable`) with one path per block, ``"blocks.<i>.<name>"``, ``<name>``
one of :data:`WEIGHT_KEYS` (float32, ``w`` as [in, out]) or an AION entry. Every model
returns the checkpoint of its final weights, so training can move between frameworks.
"""

from __future__ import annotations

import numpy as np

from aion_conformance.frameworks import net
from aion_conformance.frameworks.net import LN_EPS
from aion_conformance.frameworks.optimizers import Sgd
from aion_conformance.spec.tolerance import RTOL, compare
from aion_core import STATE_SPEC, portable

WEIGHT_KEYS = ("ln_scale", "ln_bias", "w", "b")
#: A trained float32 run passes when it stays this close to the float64 reference.
TOLERANCE = RTOL["float32"]


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
        "alpha0": 0.1, "beta": 0.5, "lr": 0.02, "ln_eps": LN_EPS,
    }


def block_aion(problem: dict, block: dict) -> dict[str, np.ndarray]:
    """The AION entries a block starts from (fresh unless resumed), in portable dtypes."""
    fresh = {"alpha0": problem["alpha0"], "beta": problem["beta"],
             **{name: spec[2] for name, spec in STATE_SPEC.items()}}
    return portable.layer_entries({**fresh, **{k: v for k, v in block.items() if k not in WEIGHT_KEYS}})


def to_net(problem: dict) -> net.Net:
    """The problem's network: one AionBlock with a ``tanh`` dense branch per block."""
    blocks = []
    for p in problem["blocks"]:
        aion = block_aion(problem, p)
        blocks.append(net.Block(
            "aion-block", "pre", (net.Dense(p["w"], p["b"], "tanh"),), net.Norm(p["ln_scale"], p["ln_bias"],
                                                                                 problem["ln_eps"]),
            net.Aion(float(aion.pop("alpha0")), float(aion.pop("beta")), state=aion)))
    return net.Net(tuple(blocks))


def blocks_of(spec: net.Net) -> list[dict]:
    """Per-block weights and AION entries of a trained :func:`to_net` network."""
    return [{"ln_scale": b.ln.scale, "ln_bias": b.ln.bias, "w": b.branch[0].w, "b": b.branch[0].b,
             "alpha0": b.aion.alpha0, "beta": b.aion.beta, **b.aion.state} for b in spec.blocks]


def run(kit, problem: dict, steps: int = 20) -> dict:
    """Train on ``kit``; loss and per-block alpha of every step's forward, and the final checkpoint."""
    model = kit.build(to_net(problem))
    train = kit.trainer(model, Sgd(problem["lr"]))
    x, target = (kit.from_numpy(problem[k], "float32") for k in ("x", "target"))
    losses, alphas = [], []
    for _ in range(steps):
        step = train(x, target)
        losses.append(step.loss)
        alphas.append(step.scales)
    return {"loss": losses, "alpha": alphas, "checkpoint": to_checkpoint(blocks_of(kit.read(model)))}


def to_checkpoint(blocks: list[dict]) -> dict:
    """Per-block weights and AION entries (any arrays) -> the flat portable dict, JSON-ready."""
    flat = portable.flatten({f"blocks.{i}": {k: np.asarray(v, np.float32) if k in WEIGHT_KEYS else v
                                             for k, v in blk.items()} for i, blk in enumerate(blocks)})
    return {k: v.tolist() for k, v in flat.items()}


def resume(problem: dict, checkpoint: dict) -> dict:
    """``problem`` with its blocks replaced by those of a flat network ``checkpoint``."""
    layers = portable.unflatten(checkpoint)
    blocks = []
    for i in range(len(problem["blocks"])):
        entries = layers[f"blocks.{i}"]
        weights = {k: np.asarray(entries[k], np.float32) for k in WEIGHT_KEYS}
        blocks.append({**weights, **portable.layer_entries({k: v for k, v in entries.items()
                                                            if k not in WEIGHT_KEYS})})
    return {**problem, "blocks": blocks}


def save_checkpoint(checkpoint: dict, path) -> None:
    """A network checkpoint as ``.npz`` in the portable dtypes (float32 weights)."""
    portable.save_npz(path, portable.flatten(portable.unflatten(
        {k: np.asarray(v, np.float32) if k.rsplit(".", 1)[1] in WEIGHT_KEYS else v
         for k, v in checkpoint.items()})))


def load_checkpoint(path) -> dict:
    return portable.load_npz(path)


def deviation(got: dict, ref: dict) -> dict[str, float]:
    """Worst relative deviation of loss and alpha from ``ref``: the largest ``max_rel`` of
    :func:`~aion_conformance.spec.tolerance.compare` over the steps, compared step by step.

    A run passes when both are within :data:`TOLERANCE` (float32's rtol).
    """
    return {key: max(compare(g, r, TOLERANCE)[2] for g, r in zip(
        np.asarray(got[key], np.float64), np.asarray(ref[key], np.float64), strict=True))
        for key in ("loss", "alpha")}
