"""The depth-stability problem: one fixed batch memorised by a deep residual stack.

The protocol of aion-torch 1.0.2's 600-layer "crash test", corrected: the data are drawn
*after* seeding, and every variant of a seed starts from the same weights. Model: token
and learned position embeddings (vocabulary :data:`VOCAB`), ``depth`` feed-forward blocks
(``Linear(D, 4D)``, exact GELU, ``Linear(4D, D)``), a final LayerNorm and ``Linear(D, D)``;
MSE to a random target; AdamW (lr 1e-3, betas 0.9/0.95, eps 1e-8, no weight decay),
gradient clipping at global norm 10, :data:`STEPS` steps.

Every framework draws nothing itself: weights and data come from :func:`make_problem`
(numpy, float32, ``[in, out]`` kernels), a variant's network from :func:`to_net`, and each
backend's kit builds and trains it (:func:`run`), so a backend process only needs
``(seed, depth)`` to rebuild the exact problem.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from aion_conformance.frameworks import net
from aion_conformance.frameworks.net import LN_EPS  # noqa: F401 - part of the protocol the report states
from aion_conformance.frameworks.optimizers import AdamW

DIM, SEQ, BATCH, VOCAB = 128, 64, 2, 1000
STEPS = 150
LR, BETAS, ADAM_EPS, CLIP_NORM = 1e-3, (0.9, 0.95), 1e-8, 10.0
#: The crash setting's learning rate: post-LN at 1e-2, where the plain residual stops learning.
CRASH_LR = 1e-2
#: A run failed when a loss is not finite or its last loss is above this fraction of its first.
FAILED_FRACTION = 0.5
#: The fixed scale, LayerScale's initial value and AION's alpha0 (the original's default).
SCALE = 0.1
#: AION's beta (the original's default).
AION_BETA = 0.05


@dataclass(frozen=True)
class Variant:
    """One way of wiring the residual stream, and its learning rate.

    ``norm``: where the block's LayerNorm sits: ``"pre"`` (``x + s * f(LN(x))``), ``"post"``
    (``LN(x + s * f(x))``) or ``"none"`` (``x + s * f(x)``). ``residual``: how the branch is
    added: ``"sum"`` (``x + y``), ``"fixed"`` (AION with ``beta = 0`` and both parameters
    frozen: ``x + 0.1 y``), ``"aion"`` (AionResidual, ratio on ``x``), ``"aion-block"``
    (AionBlock, ratio on ``LN(x)``), ``"layerscale"`` (``x + gamma * y``, gamma per channel,
    trained, from 0.1) or ``"deepnorm"`` (``LN(a x + y)``, branch weights scaled at init).
    """

    name: str
    norm: str
    residual: str
    lr: float = LR
    doc: str = ""

    @property
    def setting(self) -> str:
        """The group the variant is compared within (same normalisation and learning rate)."""
        return f"{self.norm}-LN lr {self.lr:g}" if self.norm != "none" else f"no norm lr {self.lr:g}"


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("standard", "pre", "sum", doc="pre-LN, x + f(LN(x))"),
    Variant("fixed", "pre", "fixed", doc="pre-LN, x + 0.1 f(LN(x)): AION with beta = 0, frozen"),
    Variant("aion", "pre", "aion", doc="pre-LN, AionResidual(x, f(LN(x))): ratio on x, as the original"),
    Variant("aion-block", "pre", "aion-block", doc="AionBlock: ratio on LN(x)"),
    Variant("layerscale", "pre", "layerscale", doc="pre-LN, x + gamma f(LN(x)), gamma per channel from 0.1"),
    Variant("post-standard", "post", "sum", CRASH_LR, doc="post-LN, LN(x + f(x))"),
    Variant("post-deepnorm", "post", "deepnorm", CRASH_LR, doc="DeepNorm: LN(a x + f(x)), a = (2N)^1/4, "
            "branch init x (8N)^-1/4"),
    Variant("post-fixed", "post", "fixed", CRASH_LR, doc="post-LN, LN(x + 0.1 f(x))"),
    Variant("post-aion", "post", "aion", CRASH_LR, doc="post-LN, LN(AionResidual(x, f(x)))"),
)}

#: Variants with a per-layer scale to record (alpha, or LayerScale's mean gamma).
SCALED = ("fixed", "aion", "aion-block", "layerscale")


def deepnorm_constants(depth: int) -> tuple[float, float]:
    """DeepNorm's ``(a, b)`` for an encoder of ``depth`` blocks: ``(2N)^1/4`` and ``(8N)^-1/4``."""
    return (2.0 * depth) ** 0.25, (8.0 * depth) ** -0.25


@lru_cache(maxsize=2)
def make_problem(seed: int, depth: int, dim: int = DIM, seq: int = SEQ, batch: int = BATCH,
                 vocab: int = VOCAB) -> dict:
    """Data and initial weights of one seed, float32 numpy, ``[in, out]`` kernels.

    The generator is seeded first and then draws, in order: tokens ``(batch, seq)``, target
    ``(batch, seq, dim)``, token embedding (N(0, 1), torch's default), position embedding
    (N(0, 0.02^2)), each block's ``w1, b1, w2, b2`` (torch's Linear default), the head's
    ``w, b``. LayerNorm scales start at 1 and biases at 0. A given ``(seed, depth)`` gives
    the same arrays in every process.

    Returns
    -------
    dict
        ``tokens`` (int32), ``target``, ``embed``, ``pos``, ``blocks`` (list of dicts with
        ``w1, b1, w2, b2``), ``head_w``, ``head_b``, and ``seed``, ``depth``.
    """
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (batch, seq)).astype(np.int32)
    target = rng.standard_normal((batch, seq, dim)).astype(np.float32)
    embed = rng.standard_normal((vocab, dim)).astype(np.float32)
    pos = (0.02 * rng.standard_normal((seq, dim))).astype(np.float32)
    hidden, blocks = 4 * dim, []
    for _ in range(depth):
        inner, outer = net.dense_init(rng, dim, hidden), net.dense_init(rng, hidden, dim)
        w1, b1, w2, b2 = inner.w, inner.b, outer.w, outer.b
        blocks.append({"w1": w1, "b1": b1, "w2": w2, "b2": b2})
    head = net.dense_init(rng, dim, dim)
    head_w, head_b = head.w, head.b
    return {"tokens": tokens, "target": target, "embed": embed, "pos": pos, "blocks": blocks,
            "head_w": head_w, "head_b": head_b, "seed": seed, "depth": depth}


def nudged(problem: dict) -> dict:
    """The problem with every block weight moved up by one float32 ulp: the reference's own
    sensitivity to rounding (the cross-backend check's twin run)."""
    blocks = [{k: np.nextafter(v, np.float32(np.inf)) for k, v in b.items()} for b in problem["blocks"]]
    return {**problem, "blocks": blocks}


def to_net(problem: dict, variant: Variant) -> net.Net:
    """The network of one variant, from the problem's weights (DeepNorm's branch scaled)."""
    depth = problem["depth"]
    skip_gain, gain = deepnorm_constants(depth) if variant.residual == "deepnorm" else (1.0, 1.0)
    blocks = []
    for w in problem["blocks"]:
        branch = (net.Dense(w["w1"] * np.float32(gain), w["b1"], "gelu"),
                  net.Dense(w["w2"] * np.float32(gain), w["b2"]))
        ln = None if variant.norm == "none" else net.Norm.fresh(w["w1"].shape[0])
        residual, aion = variant.residual, None
        if residual in ("fixed", "aion", "aion-block"):
            fixed = residual == "fixed"
            aion = net.Aion(SCALE, 0.0 if fixed else AION_BETA, trainable=not fixed)  # fixed: alpha = 0.1
            residual = "aion" if fixed else residual
        blocks.append(net.Block(residual, variant.norm, branch, ln, aion, gamma=SCALE, skip_gain=skip_gain))
    dim = problem["pos"].shape[-1]
    return net.Net(tuple(blocks), problem["embed"], problem["pos"], net.Norm.fresh(dim),
                   net.Dense(problem["head_w"], problem["head_b"]))


def run(kit, seed: int, depth: int, variant: str, steps: int, record_scale: bool = False,
        nudge: bool = False) -> dict:
    """Train one variant on ``kit``; per step the loss, the global gradient norm before
    clipping and, with ``record_scale``, every block's scale; ``nudge``: from :func:`nudged`.

    Stops at the first non-finite loss (the run has crashed; nothing after it is data).
    """
    problem = nudged(make_problem(seed, depth)) if nudge else make_problem(seed, depth)
    spec = VARIANTS[variant]
    model = kit.build(to_net(problem, spec))
    train = kit.trainer(model, AdamW(spec.lr, BETAS, ADAM_EPS), clip=CLIP_NORM)
    tokens, target = kit.from_numpy(problem["tokens"], "int32"), kit.from_numpy(problem["target"], "float32")
    record = record_scale and spec.residual in SCALED
    losses, norms, scales = [], [], []
    start = time.perf_counter()
    for _ in range(steps):
        step = train(tokens, target)
        losses.append(step.loss)
        norms.append(step.grad_norm)
        if record:
            scales.append(step.scales)
        if not math.isfinite(losses[-1]):
            break
    return {"loss": losses, "grad_norm": norms, "scale": scales if record else None,
            "seconds": time.perf_counter() - start, "device": train.label}


def failed(losses: list[float]) -> bool:
    """A run failed (diverged or stopped learning) when a loss is not finite or its last loss
    is above :data:`FAILED_FRACTION` of its first (healthy runs end near a thousandth of it)."""
    values = np.asarray(losses, np.float64)
    return bool(not np.all(np.isfinite(values)) or values[-1] > FAILED_FRACTION * values[0])
