"""Every kit's language-model parts (causal attention, cross-entropy, bfloat16, AdamW's schedule
and matrix-only decay, ``evaluate``) on a tiny GPT built from the same numpy weights.

The torch kit is the reference: three AdamW steps of each other kit must take torch's losses and
weights. tests/keras/test_kit_lm.py runs the same checks for the Keras kit on each Keras backend,
with the helpers of this module.
"""

from __future__ import annotations

import functools
import importlib
import math

import numpy as np
import pytest

from aion_conformance import registry
from aion_conformance.frameworks import net
from aion_conformance.frameworks.optimizers import AdamW, Schedule, schedule_factor

V, T, D, HEADS, LAYERS, BATCH = 32, 8, 16, 2, 2, 4
#: Tokens the inputs never hold: their embedding rows get no gradient, so Adam leaves them
#: alone and weight decay alone moves them, by exactly the scheduled learning rate.
UNUSED = 24
STEPS = 3
OPTIMIZER = AdamW(lr=3e-3, weight_decay=0.1, decay_matrices_only=True, schedule=Schedule(warmup=2, total=4, final=0.1))
CLIP = 1.0
#: The two GPT wirings: pre-LN with AION's residual (and a final LayerNorm), post-LN plain.
CONFIGS = {"pre-aion": ("aion", "pre"), "post-sum": ("sum", "post")}

#: float32, each kit against torch over 3 steps. Measured (losses; weights), both wirings:
#: flax-nnx and flax-linen 7.2e-7; 5.2e-7, mlx 4.8e-7; 2.4e-7, keras-tensorflow 2.4e-7; 4.1e-7,
#: keras-jax 7.2e-7; 2.4e-7, keras-torch 7.2e-7; 3.3e-7 (the eval losses within the same).
LOSS_TOL32, WEIGHT_TOL32 = 5e-6, 2e-6
#: The attention's key bias is the exception: softmax ignores what a bias adds to every score
#: of a row, so its gradient is 0 up to rounding, and Adam scales that rounding noise up to a
#: step of the learning rate's order (measured up to 4.7e-4 between kits). It is held to the
#: largest move Adam can make (the sum of the scheduled rates, 7.5e-3), which a wrong update
#: exceeds.
KEY_BIAS_TOL = sum(OPTIMIZER.lr * schedule_factor(OPTIMIZER.schedule, t) for t in range(STEPS))
#: bfloat16 against the kit's own float32 run: the losses (measured up to 2.0e-3 on a loss of
#: 3.6; bfloat16's epsilon is 7.8e-3) and the weights' moves over the 3 steps, the norm of
#: their difference relative to float32's (measured up to 0.042). Single weights are no
#: measure here: Adam's first steps are about ``lr * sign(g)``, which bfloat16 flips for the
#: entries whose gradient is near 0.
LOSS_TOL16, MOVE_RTOL16 = 1e-2, 0.1


def gpt(residual: str = "aion", norm: str = "pre", seed: int = 0) -> net.Net:
    """The tiny causal GPT: per layer an attention block and an MLP block (D -> 4D gelu -> D)."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(LAYERS):
        for branch in ((net.attention_init(rng, D, HEADS),),
                       (net.dense_init(rng, D, 4 * D, "gelu"), net.dense_init(rng, 4 * D, D))):
            aion = net.Aion(0.1, 0.05) if residual.startswith("aion") else None
            blocks.append(net.Block(residual, norm, branch, net.Norm.fresh(D), aion))
    embed = (rng.standard_normal((V, D)) * 0.5).astype(np.float32)
    pos = (rng.standard_normal((T, D)) * 0.1).astype(np.float32)
    return net.Net(tuple(blocks), embed, pos, net.Norm.fresh(D) if norm == "pre" else None,
                   net.dense_init(rng, D, V))


def data(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Token inputs (below :data:`UNUSED`) and next-token targets, int32 ``[BATCH, T]``."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, UNUSED, (BATCH, T)).astype(np.int32),
            rng.integers(0, V, (BATCH, T)).astype(np.int32))


def weights(spec: net.Net) -> dict[str, np.ndarray]:
    """Every weight of a description by name (AION's alpha0 and beta included)."""
    out = {"embed": spec.embed, "pos": spec.pos, "head.w": spec.head.w, "head.b": spec.head.b}
    if spec.final_norm is not None:
        out.update({"norm.scale": spec.final_norm.scale, "norm.bias": spec.final_norm.bias})
    for i, block in enumerate(spec.blocks):
        att = block.attention
        denses = {"qkv": att.qkv, "proj": att.proj} if att is not None else dict(enumerate(block.branch))
        for name, d in denses.items():
            out[f"{i}.{name}.w"], out[f"{i}.{name}.b"] = d.w, d.b
        out[f"{i}.ln.scale"], out[f"{i}.ln.bias"] = block.ln.scale, block.ln.bias
        if block.aion is not None:
            out[f"{i}.alpha0"], out[f"{i}.beta"] = np.float32(block.aion.alpha0), np.float32(block.aion.beta)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def is_key_bias(name: str) -> bool:
    return name.endswith(".qkv.b")


def key_bias(a: np.ndarray) -> np.ndarray:
    return a[D:2 * D]


def aion_states(spec: net.Net) -> list[dict]:
    return [b.aion.state for b in spec.blocks if b.aion is not None]


def train(kit, spec: net.Net, precision: str | None = None) -> dict:
    """Three steps of ``kit`` on :func:`data`: the losses, the weights after, their eval loss
    (``evaluate`` checked to write no AION state)."""
    model = kit.build(spec)
    step = kit.trainer(model, OPTIMIZER, clip=CLIP, loss="ce", precision=precision)
    inputs, target = (kit.from_numpy(a, "int32") for a in data())
    losses = [step(inputs, target).loss for _ in range(STEPS)]
    trained = kit.read(model)
    evaluated = kit.evaluate(model, inputs, target, loss="ce", precision=precision)
    for before, after in zip(aion_states(trained), aion_states(kit.read(model)), strict=True):
        assert before["step_count"] == STEPS and all(np.array_equal(after[k], v) for k, v in before.items())
    return {"loss": losses, "weights": weights(trained), "eval": evaluated}


def deviations(got: dict, want: dict) -> dict[str, float]:
    """The largest differences of two runs: losses, weights (key biases apart), key biases."""
    weight = max(np.abs(got["weights"][k] - w).max() for k, w in want["weights"].items()
                 if not is_key_bias(k))
    key = max(np.abs(key_bias(got["weights"][k]) - key_bias(w)).max() for k, w in want["weights"].items()
              if is_key_bias(k))
    rest = max(np.abs(np.delete(got["weights"][k], np.s_[D:2 * D]) - np.delete(w, np.s_[D:2 * D])).max()
               for k, w in want["weights"].items() if is_key_bias(k))
    return {"loss": max(abs(a - b) for a, b in zip(got["loss"], want["loss"])), "eval": abs(got["eval"] - want["eval"]),
            "weights": max(weight, rest), "key_bias": key}


def check_against_torch(got: dict, want: dict) -> None:
    dev = deviations(got, want)
    assert dev["loss"] <= LOSS_TOL32 and dev["eval"] <= LOSS_TOL32, dev
    assert dev["weights"] <= WEIGHT_TOL32, dev
    assert dev["key_bias"] <= KEY_BIAS_TOL, dev


def check_bfloat16(half: dict, full: dict, start: dict[str, np.ndarray]) -> None:
    """bfloat16 against float32: losses within :data:`LOSS_TOL16`; the weights' moves from
    ``start`` (key biases apart: rounding noise in either run) within :data:`MOVE_RTOL16` of
    float32's, in norm over the whole network."""
    assert max(abs(a - b) for a, b in zip(half["loss"], full["loss"])) <= LOSS_TOL16
    assert abs(half["eval"] - full["eval"]) <= LOSS_TOL16
    names = [k for k in start if not is_key_bias(k)]
    moved = np.concatenate([(full["weights"][k] - start[k]).ravel() for k in names])
    apart = np.concatenate([(half["weights"][k] - full["weights"][k]).ravel() for k in names])
    assert np.linalg.norm(apart) <= MOVE_RTOL16 * np.linalg.norm(moved), np.linalg.norm(apart) / np.linalg.norm(moved)


def check_schedule(run: dict, start: dict[str, np.ndarray]) -> None:
    """The unused tokens' embedding rows, moved by the decoupled decay alone, shrank by
    ``1 - lr * schedule_factor(t) * weight_decay`` each step: the scheduled rate was applied."""
    shrink = math.prod(1 - OPTIMIZER.lr * schedule_factor(OPTIMIZER.schedule, t) * OPTIMIZER.weight_decay
                       for t in range(STEPS))
    np.testing.assert_allclose(run["weights"]["embed"][UNUSED:], start["embed"][UNUSED:] * shrink, rtol=2e-6)
    assert not np.allclose(run["weights"]["embed"][UNUSED:], start["embed"][UNUSED:], rtol=1e-5)


def logits_of(kit, model, tokens: np.ndarray) -> np.ndarray:
    """The eval-mode logits of ``model``, through whatever form the kit's model takes."""
    inputs = kit.from_numpy(tokens, "int32")
    if hasattr(model, "evaluate") and hasattr(model, "params"):  # the Flax kits' pure Model
        out = model.evaluate({**model.params, **model.rest}, inputs)[0]
    elif hasattr(model, "eval") and hasattr(model, "train"):  # torch, MLX
        was = model.training
        model.eval()
        try:
            out = model(inputs)[0]
        finally:
            model.train(was)
    else:  # Keras
        out = model(inputs, training=False)[0]
    return kit.to_numpy(out)


def check_causal(kit) -> None:
    model = kit.build(gpt())
    tokens = data()[0]
    later = tokens.copy()
    later[:, 5] = (later[:, 5] + 1) % UNUSED
    a, b = logits_of(kit, model, tokens), logits_of(kit, model, later)
    assert np.array_equal(a[:, :5], b[:, :5])
    assert not np.allclose(a[:, 5:], b[:, 5:])


def check_round_trip(kit) -> None:
    for residual, norm in (*CONFIGS.values(), ("aion-block", "pre")):
        spec = gpt(residual, norm)
        back = kit.read(kit.build(spec))
        assert back.blocks[0].attention.heads == HEADS
        want, got = weights(spec), weights(back)
        assert want.keys() == got.keys()
        for name in want:
            assert np.array_equal(got[name], want[name]), name


def reference_attention(att: net.Attention, x: np.ndarray) -> np.ndarray:
    """net.Attention as its docstring says it, in float64."""
    x = x.astype(np.float64)
    dh = x.shape[-1] // att.heads
    q, k, v = np.split(x @ att.qkv.w + att.qkv.b, 3, axis=-1)
    mask = np.triu(np.full((x.shape[1], x.shape[1]), -np.inf), 1)
    heads = []
    for h in range(att.heads):
        c = slice(h * dh, (h + 1) * dh)
        scores = q[..., c] @ np.swapaxes(k[..., c], -1, -2) / np.sqrt(dh) + mask
        a = np.exp(scores - scores.max(-1, keepdims=True))
        heads.append(a / a.sum(-1, keepdims=True) @ v[..., c])
    return np.concatenate(heads, -1) @ att.proj.w + att.proj.b


def check_attention(kit) -> None:
    """One attention block (``x + attention(x)``) against :func:`reference_attention`, by the
    kit's ``evaluate``: its MSE against the reference is the squared error."""
    att = net.attention_init(np.random.default_rng(3), D, HEADS)
    spec = net.Net((net.Block("sum", "none", (att,)),))
    x = np.random.default_rng(4).standard_normal((BATCH, T, D)).astype(np.float32)
    want = x + reference_attention(att, x)
    model = kit.build(spec)
    mse = kit.evaluate(model, kit.from_numpy(x, "float32"), kit.from_numpy(want, "float32"))
    # float32 rounding of values of order 1: an RMS error of 1e-6 at most (measured 2e-8).
    assert mse <= 1e-12, mse


# ---- the torch kit, then each other kit of this process against it ---------------------------

#: The kits of this process's backends (Keras': tests/keras/test_kit_lm.py).
BACKENDS = ["torch", "flax-nnx", "flax-linen", "mlx"]


def kit_of(backend: str):
    b = registry.BACKENDS[backend]
    for name in b.imports:
        pytest.importorskip(name)
    return importlib.import_module(b.kit)


@functools.cache
def _run(backend: str, config: str, precision: str | None) -> dict:
    return train(kit_of(backend), gpt(*CONFIGS[config]), precision)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_is_the_description(backend):
    check_attention(kit_of(backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_is_causal(backend):
    check_causal(kit_of(backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_returns_the_built_weights(backend):
    check_round_trip(kit_of(backend))


#: Flax compiles each run's step and evaluation (about 10 s of CPU for the two): left to the
#: slow run are its post-LN runs (their wiring is net.wire's, as in every kit) and Linen's
#: bfloat16 (NNX's and Linen's casts are one function, flax/train.py's ``cast``).
SLOW = {("flax-nnx", "post-sum", None), ("flax-linen", "post-sum", None), ("flax-nnx", "post-sum", "bfloat16"),
        ("flax-linen", "post-sum", "bfloat16"), ("flax-linen", "pre-aion", "bfloat16")}


def _cases(backends, precision):
    against = ("torch",) if precision is None else ()  # the float32 runs are checked against torch's
    return [pytest.param(b, c, id=f"{b}-{c}", marks=[pytest.mark.backends(*dict.fromkeys((*against, b))),
                                                      *([pytest.mark.slow] if (b, c, precision) in SLOW else [])])
            for b in backends for c in CONFIGS]


@pytest.mark.parametrize(("backend", "config"), _cases(BACKENDS[1:], None))
def test_three_adamw_steps_match_torch(backend, config):
    check_against_torch(_run(backend, config, None), _run("torch", config, None))


@pytest.mark.parametrize(("backend", "config"), _cases(BACKENDS, "bfloat16"))
def test_bfloat16_follows_float32(backend, config):
    check_bfloat16(_run(backend, config, "bfloat16"), _run(backend, config, None), weights(gpt(*CONFIGS[config])))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_scheduled_rate_is_applied(backend):
    check_schedule(_run(backend, "pre-aion", None), weights(gpt()))


def test_torch_decays_the_matrices_only():
    kit = kit_of("torch")
    step = kit.trainer(kit.build(gpt()), OPTIMIZER, loss="ce")
    decayed, kept = step.optimizer.param_groups
    assert decayed["weight_decay"] == OPTIMIZER.weight_decay and all(p.ndim >= 2 for p in decayed["params"])
    assert kept["weight_decay"] == 0.0 and all(p.ndim < 2 for p in kept["params"])
    assert len(decayed["params"]) + len(kept["params"]) == len(step.params)
