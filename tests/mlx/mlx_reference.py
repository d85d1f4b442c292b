"""What the tests of tests/mlx/ share: a small MLX model and its float64 numpy twin.

The model is ``nn.Sequential`` of AionBlocks (branch ``Linear`` then ``tanh``) and a
``Linear`` head, as an MLX user writes it. :func:`reference_step` computes its loss,
gradients and new AION state in float64 with numpy: AION's forward and gradients from the
conformance suite's reference (``aion_core`` on numpy, differentiated by hand), LayerNorm,
the dense layers and tanh differentiated here. The running state is float32 there too, as
the spec stores it. :func:`lockstep` trains data-parallel copies of the model, in one process
or (ring_equivalence.py) one per process, recording what each saw.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

import aion_core as core
from aion_conformance.spec.reference import reference_call
from aion_mlx import AionBlock

DIM, CLASSES = 16, 4
STATE_NAMES = tuple(core.STATE_SPEC)
LN_EPS = 1e-5


def make_model(seed: int = 0, k_updates=(1, 3), **aion) -> nn.Sequential:
    """``len(k_updates)`` AionBlocks (``beta=0.5, ema_gamma=0.5``: the ratio matters) and a head."""
    mx.random.seed(seed)
    options = {"beta": 0.5, "ema_gamma": 0.5, **aion}
    blocks = [AionBlock(nn.Sequential(nn.Linear(DIM, DIM), nn.Tanh()), DIM, alpha0=0.1 + 0.1 * i,
                        k_update=k, **options) for i, k in enumerate(k_updates)]
    return nn.Sequential(*blocks, nn.Linear(DIM, CLASSES))


def to_numpy(a) -> np.ndarray:
    """An mlx array as numpy (bfloat16, which numpy lacks, as float32: exact)."""
    return np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a)


def flat(tree) -> dict[str, np.ndarray]:
    """A parameter tree (``model.parameters()``, gradients, optimizer state) as flat numpy."""
    return {key: to_numpy(value) for key, value in tree_flatten(tree)}


def aion_entries(model: nn.Module) -> dict[str, np.ndarray]:
    """Every AION entry of ``model`` (parameters and state), flat."""
    return {k: v for k, v in flat(model.parameters()).items() if k.rpartition(".")[2] in core.portable.ENTRY_DTYPES}


def data(seed: int, steps: int, batch: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """``steps`` batches ``(x, target)``, float32, each of another scale (the ratio moves)."""
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((batch, DIM)) * (1.0 + 0.5 * i)).astype(np.float32),
             rng.standard_normal((batch, CLASSES)).astype(np.float32)) for i in range(steps)]


def mse(model, x, target):
    return ((model(x) - target) ** 2).mean()


def reference_step(p: dict, configs, x, target):
    """One training step of :func:`make_model`'s network in float64.

    Parameters
    ----------
    p : dict
        Flat parameters as :func:`flat` gives them (state entries included).
    configs : list of aion_core.AionConfig
        Each block's (its ``ema_gamma``, ``epsilon``, ``k_update``; ``alpha0`` and ``beta``
        are read from ``p``).

    Returns
    -------
    loss : float
    grads : dict
        The gradients of every trainable entry, keyed as ``p``.
    state : dict
        The new AION state entries, keyed as ``p``.
    """
    n = len(configs)
    h, tape, state = np.asarray(x, np.float64), [], {}
    for i, config in enumerate(configs):
        pre = f"layers.{i}."
        inv = 1.0 / np.sqrt(h.var(-1, keepdims=True) + LN_EPS)
        xhat = (h - h.mean(-1, keepdims=True)) * inv
        xn = xhat * p[pre + "norm.weight"] + p[pre + "norm.bias"]
        y = np.tanh(xn @ p[pre + "layer.layers.0.weight"].T + p[pre + "layer.layers.0.bias"])
        before = {name: p[pre + "aion." + name].item() for name in STATE_NAMES}
        res, after = reference_call(config, p[pre + "aion.alpha0"], p[pre + "aion.beta"], before, "train", h, y, xn)
        state.update({pre + "aion." + name: value for name, value in after.items()})
        tape.append((h, inv, xhat, xn, y, before))
        h = res["out"]
    head_w, head_b = p[f"layers.{n}.weight"], p[f"layers.{n}.bias"]
    out = h @ head_w.T + head_b
    loss = float(np.mean((out - target) ** 2))
    dout = 2.0 * (out - target) / out.size
    grads = {f"layers.{n}.weight": dout.T @ h, f"layers.{n}.bias": dout.sum(0)}
    dh = dout @ head_w
    for i in reversed(range(n)):
        pre = f"layers.{i}."
        h_in, inv, xhat, xn, y, before = tape[i]
        res, _ = reference_call(configs[i], p[pre + "aion.alpha0"], p[pre + "aion.beta"], before, "train",
                                h_in, y, xn, dh)
        g = res["grads"]
        dz = g["y"] * (1.0 - y * y)
        w = p[pre + "layer.layers.0.weight"]
        dxn = g["x_norm"] + dz @ w
        dxhat = dxn * p[pre + "norm.weight"]
        grads.update({pre + "aion.alpha0": np.float64(g["alpha0"]), pre + "aion.beta": np.float64(g["beta"]),
                      pre + "layer.layers.0.weight": dz.T @ xn, pre + "layer.layers.0.bias": dz.sum(0),
                      pre + "norm.weight": (dxn * xhat).sum(0), pre + "norm.bias": dxn.sum(0)})
        dh = g["x"] + inv * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return loss, grads, state


def reference_training(model: nn.Module, batches, lr: float, momentum: float):
    """``len(batches)`` steps of SGD with momentum (``mlx.optimizers.SGD``'s rule) in float64
    from ``model``'s current weights; returns the losses and the final flat parameters."""
    p = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in flat(model.parameters()).items()}
    configs = [block.config for block in model.layers[:-1]]
    velocity: dict[str, np.ndarray] = {}
    losses = []
    for x, target in batches:
        loss, grads, state = reference_step(p, configs, x, target)
        losses.append(loss)
        for key, g in grads.items():
            velocity[key] = momentum * velocity.get(key, 0.0) + g
            p[key] = p[key] - lr * velocity[key]
        p.update({key: np.asarray(value) for key, value in state.items()})
    return losses, p


# ---- data parallelism: test_mlx_distributed.py and ring_equivalence.py ------------------------

#: Steps of a data-parallel run, rows of its global batch, and how a rank's rows are chosen.
STEPS, GLOBAL_BATCH = 3, 8
PARALLEL_K_UPDATES = (1, 2)


def global_batches() -> list[tuple[np.ndarray, np.ndarray]]:
    return data(30, STEPS, batch=GLOBAL_BATCH)


def rank_rows(rank: int, size: int = 2) -> slice:
    share = GLOBAL_BATCH // size
    return slice(rank * share, (rank + 1) * share)


def _forward(model, x):
    """The model's output and each AionBlock's stats."""
    h, stats = x, []
    for block in model.layers[:-1]:
        h, block_stats = block(h, return_stats=True)
        stats.append(block_stats)
    return model.layers[-1](h), stats


def lockstep(models, batches, reduce, lr: float = 0.05):
    """SGD steps of data-parallel ``models``, each on its own batches, in lockstep.

    Each model's loss is the mean over its own rows; ``reduce`` maps the list of the models'
    gradient trees to the list of trees each model applies (the identity for one model
    alone; an average over the models; ``nn.average_gradients`` over processes). Returns,
    per model, one flat numpy dict per step: ``loss``, ``x_grad`` (its input rows),
    ``grad.<param>`` (its own gradients), ``applied.<param>``, ``block<i>.<stat or state
    entry>``; and the final parameters as ``final.<param>`` in the last step's dict.
    """
    optimizers = [optim.SGD(lr) for _ in models]
    records = [[] for _ in models]
    for step in range(len(batches[0])):
        grads, rows = [], []
        for model, own in zip(models, batches):
            def loss_fn(params, x, target, model=model):
                model.update(params)
                out, stats = _forward(model, x)
                return ((out - target) ** 2).mean(), stats
            x, target = own[step]
            (loss, stats), (g, x_grad) = mx.value_and_grad(loss_fn, argnums=(0, 1))(
                model.trainable_parameters(), mx.array(x), mx.array(target))
            record = {"loss": to_numpy(loss), "x_grad": to_numpy(x_grad),
                      **{f"grad.{k}": to_numpy(v) for k, v in tree_flatten(g)}}
            for i, (block, block_stats) in enumerate(zip(model.layers, stats)):
                record.update({f"block{i}.{k}": to_numpy(v) for k, v in block_stats.items() if k != "ratio_ema"})
                record.update({f"block{i}.{name}": to_numpy(block.aion[name]) for name in STATE_NAMES})
            grads.append(g)
            rows.append(record)
        for model, optimizer, applied, record in zip(models, optimizers, reduce(grads), rows):
            optimizer.update(model, applied)
            mx.eval(model.parameters())
            record.update({f"applied.{k}": to_numpy(v) for k, v in tree_flatten(applied)})
        for i, record in enumerate(rows):
            records[i].append(record)
    for model, model_records in zip(models, records):
        model_records[-1].update({f"final.{k}": v for k, v in flat(model.parameters()).items()})
    return records
