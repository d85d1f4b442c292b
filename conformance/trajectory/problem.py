"""A small pre-norm AION network trained a few SGD steps: the cross-framework trajectory problem.

Model: ``h = x``; per block ``xn = LayerNorm(h)``, ``y = tanh(xn @ w + b)``,
``h = AionResidual(h, y, x_norm=xn)``; loss ``mean((h - target)**2)``; plain SGD with
``lr`` on every parameter (alpha0, beta, LayerNorm scale/bias, w, b). Every framework
starts from the same numpy weights, so losses and per-block alphas can be compared
step by step.

A run can start from a *network checkpoint*: the portable layout of spec section 9
(:mod:`aion_core.portable`) with one path per block, ``"blocks.<i>.<name>"``, ``<name>``
one of :data:`WEIGHT_KEYS` (float32, ``w`` as [in, out]) or an AION entry. Every model
returns the checkpoint of its final weights, so training can move between frameworks.
"""

from __future__ import annotations

import numpy as np

from aion_core import STATE_SPEC, portable
from aion_conformance.spec.tolerance import RTOL, compare

WEIGHT_KEYS = ("ln_scale", "ln_bias", "w", "b")
#: The LayerNorm epsilon of the problem, the one AionBlock builds in (spec).
LN_EPS = 1e-5
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
