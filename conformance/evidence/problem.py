"""The evidence problem: a small GPT trained as a byte-level causal language model.

Model (:func:`to_net`): token embedding ``[256, D]`` (N(0, 1), torch's default) plus a
learned position embedding ``[T, D]`` (N(0, 0.02^2)); ``depth`` layers, each a causal
self-attention block (``heads`` heads; qkv ``[D, 3D]``, proj ``[D, D]``) and an MLP block
(``Linear(D, 4D)``, exact GELU, ``Linear(4D, D)``), both with the residual under test; a
final LayerNorm and ``Linear(D, 256)``. Linear layers are drawn as ``torch.nn.Linear``.

Training: AdamW (betas 0.9/0.95, eps 1e-8, weight decay :data:`WEIGHT_DECAY` on matrices
only), linear warm-up over the first tenth of the steps then cosine decay to a tenth of
the learning rate, global-norm clipping at :data:`CLIP_NORM`, mean cross-entropy over
every position (nats per byte); a held-out evaluation every :data:`EVAL_EVERY` steps and
at the end (eval mode: AION's alpha from its stored ratio).

Every framework draws nothing itself: the weights come from :func:`make_problem` and the
bytes from :mod:`.data`, so a backend process needs only ``(seed, depth)`` to rebuild
the exact run, and every variant of a seed starts from the same weights and sees the same
batches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from aion_conformance.evidence import data
from aion_conformance.frameworks import net
from aion_conformance.frameworks.optimizers import AdamW, Schedule

DIM, HEADS, SEQ, BATCH = 64, 4, 64, 8
STEPS = 200
BETAS, ADAM_EPS, WEIGHT_DECAY, CLIP_NORM = (0.9, 0.95), 1e-8, 0.1, 1.0
#: Warm-up steps are this fraction of the run; the cosine ends at FINAL_LR times the peak.
WARMUP_FRACTION, FINAL_LR = 0.1, 0.1
EVAL_EVERY = 40
#: A recorded run reads each AION block's stored ratio every RATIO_EVERY steps.
RATIO_EVERY = 5
#: AION's beta (aion-torch's default); its alpha0 is the variant's.
AION_BETA = 0.05
#: Failure rule (:func:`failed`): a run fails when a loss is not finite, when its final
#: held-out loss is more than RISE nats/byte above the lowest it reached, or more than
#: DEGRADED nats/byte above the best final held-out loss of its setting (same depth,
#: learning rate and precision, over every variant and seed).
RISE, DEGRADED = 0.1, 0.3
NATS_TO_BITS = 1 / math.log(2)


@dataclass(frozen=True)
class Variant:
    """One way of wiring the residual stream.

    ``norm``: ``"pre"`` (``x + s f(LN(x))``) or ``"post"`` (``LN(x + s f(x))``);
    ``residual``: a :data:`~aion_conformance.frameworks.net.RESIDUALS` kind or one of the
    torch kit's extras (``torch_only``); ``alpha0``: AION's alpha0 or the fixed scale
    (None: ``(2 depth)^-1/2``, one over the root of the number of residual branches);
    ``beta`` and ``trainable`` as :class:`~aion_conformance.frameworks.net.Aion`.
    """

    name: str
    norm: str
    residual: str
    alpha0: float | None = 0.1
    beta: float = AION_BETA
    trainable: bool = True
    torch_only: bool = False
    doc: str = ""

    @property
    def family(self) -> str:
        return f"{self.norm}-LN"


def _fixed(name: str, norm: str, scale: float | None, doc: str) -> Variant:
    return Variant(name, norm, "aion", scale, 0.0, False, doc=doc)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("standard", "pre", "sum", doc="x + f(LN(x))"),
    _fixed("fixed-0.1", "pre", 0.1, "x + 0.1 f(LN(x)) (AION with beta 0, frozen)"),
    _fixed("fixed-0.2", "pre", 0.2, "x + 0.2 f(LN(x))"),
    _fixed("fixed-0.3", "pre", 0.3, "x + 0.3 f(LN(x))"),
    _fixed("fixed-0.5", "pre", 0.5, "x + 0.5 f(LN(x)) (AION's alpha0 0.5, frozen)"),
    _fixed("fixed-1/sqrt(2N)", "pre", None, "x + f(LN(x)) / sqrt(2 depth) (one over the root of the "
           "number of residual branches)"),
    Variant("aion", "pre", "aion", doc="AionResidual(x, f(LN(x))): ratio on x, alpha0 0.1, beta 0.05, "
            "both trained (aion-torch's defaults)"),
    Variant("aion-0.5", "pre", "aion", 0.5, doc="AION with alpha0 0.5"),
    Variant("aion-1.0", "pre", "aion", 1.0, doc="AION with alpha0 1.0"),
    Variant("aion-block", "pre", "aion-block", doc="AionBlock: ratio on LN(x), alpha0 0.1"),
    Variant("layerscale", "pre", "layerscale", doc="x + gamma f(LN(x)), gamma per channel from 0.1, trained"),
    Variant("scalar", "pre", "scalar", 0.1, 0.0, torch_only=True,
            doc="x + a f(LN(x)), one trained scalar a from 0.1 (AION with beta frozen at 0)"),
    Variant("scalar-0.5", "pre", "scalar", 0.5, 0.0, torch_only=True,
            doc="one trained scalar from 0.5 (AION with alpha0 0.5, beta frozen at 0)"),
    Variant("rezero", "pre", "rezero", 0.0, 0.0, torch_only=True,
            doc="x + a f(LN(x)), one trained scalar a from 0 (ReZero)"),
    Variant("aion-stopgrad", "pre", "aion-stopgrad", torch_only=True,
            doc="AION with the batch ratio's gradient stopped"),
    Variant("aion-lagged", "pre", "aion-lagged", torch_only=True,
            doc="AION whose alpha comes from the stored EMA of the previous steps (no current-batch "
                "information in the forward)"),
    Variant("post-standard", "post", "sum", doc="LN(x + f(x))"),
    _fixed("post-fixed-0.1", "post", 0.1, "LN(x + 0.1 f(x))"),
    _fixed("post-fixed-0.5", "post", 0.5, "LN(x + 0.5 f(x))"),
    Variant("post-scalar", "post", "scalar", 0.1, 0.0, torch_only=True,
            doc="LN(x + a f(x)), one trained scalar a from 0.1 (post-LN AION with beta frozen at 0)"),
    Variant("post-scalar-0.5", "post", "scalar", 0.5, 0.0, torch_only=True,
            doc="LN(x + a f(x)), one trained scalar a from 0.5"),
    Variant("post-aion", "post", "aion", doc="LN(AionResidual(x, f(x))), alpha0 0.1"),
    Variant("post-aion-0.5", "post", "aion", 0.5, doc="post-LN AION with alpha0 0.5"),
    Variant("post-aion-1.0", "post", "aion", 1.0, doc="post-LN AION with alpha0 1.0"),
    Variant("post-deepnorm", "post", "deepnorm", doc="DeepNorm: LN(a x + f(x)), a = (2 depth)^1/4; the MLP's, "
            "value and output projections' weights x (8 depth)^-1/4"),
)}

#: The cheap core: the plain residual, fixed 0.1, AION, LayerScale and the trained scalar
#: (pre-LN); plain, fixed 0.1, AION and DeepNorm (post-LN).
CORE = ("standard", "fixed-0.1", "aion", "layerscale", "scalar", "post-standard", "post-fixed-0.1",
        "post-aion", "post-deepnorm")


def deepnorm_constants(depth: int) -> tuple[float, float]:
    """DeepNorm's ``(a, b)`` for a decoder of ``depth`` layers: ``(2N)^1/4`` and ``(8N)^-1/4``."""
    return (2.0 * depth) ** 0.25, (8.0 * depth) ** -0.25


@lru_cache(maxsize=2)
def make_problem(seed: int, depth: int, dim: int = DIM, heads: int = HEADS, seq: int = SEQ) -> dict:
    """Initial weights of one seed, float32 numpy, ``[in, out]`` kernels.

    Drawn in order from ``numpy.random.default_rng(seed)``: the token embedding, the
    position embedding, each layer's attention (qkv then proj) and MLP (two Linear), the
    head. Returns ``embed``, ``pos``, ``layers`` (``(Attention, Dense, Dense)`` each),
    ``head`` and ``seed``, ``depth``.
    """
    rng = np.random.default_rng(seed)
    embed = rng.standard_normal((data.VOCAB, dim)).astype(np.float32)
    pos = (0.02 * rng.standard_normal((seq, dim))).astype(np.float32)
    layers = [(net.attention_init(rng, dim, heads), net.dense_init(rng, dim, 4 * dim, "gelu"),
               net.dense_init(rng, 4 * dim, dim)) for _ in range(depth)]
    return {"embed": embed, "pos": pos, "layers": layers, "head": net.dense_init(rng, dim, data.VOCAB),
            "seed": seed, "depth": depth}


def _scaled(dense: net.Dense, gain: float, columns: slice = slice(None)) -> net.Dense:
    w = dense.w.copy()
    w[:, columns] *= np.float32(gain)
    return net.Dense(w, dense.b, dense.activation)


def to_net(problem: dict, variant: Variant) -> net.Net:
    """The network of one variant, from the problem's weights (DeepNorm's branches scaled)."""
    depth = problem["depth"]
    dim = problem["pos"].shape[-1]
    skip_gain, gain = deepnorm_constants(depth) if variant.residual == "deepnorm" else (1.0, 1.0)
    residual, aion = variant.residual, None
    if residual in ("aion", "aion-block") or variant.torch_only:
        alpha0 = variant.alpha0 if variant.alpha0 is not None else (2.0 * depth) ** -0.5
        aion = net.Aion(alpha0, variant.beta, trainable=variant.trainable)
    blocks = []
    for attention, up, down in problem["layers"]:
        if gain != 1.0:  # DeepNet: the value and output projections and the MLP, not q and k
            attention = net.Attention(_scaled(attention.qkv, gain, slice(2 * dim, 3 * dim)),
                                      _scaled(attention.proj, gain), attention.heads)
            up, down = _scaled(up, gain), _scaled(down, gain)
        for branch in ((attention,), (up, down)):
            blocks.append(net.Block(residual, variant.norm, branch, net.Norm.fresh(dim), aion,
                                    gamma=0.1, skip_gain=skip_gain))
    return net.Net(tuple(blocks), problem["embed"], problem["pos"], net.Norm.fresh(dim),
                   problem["head"])


def optimizer(lr: float, steps: int) -> AdamW:
    return AdamW(lr, BETAS, ADAM_EPS, WEIGHT_DECAY, decay_matrices_only=True,
                 schedule=Schedule(max(1, round(WARMUP_FRACTION * steps)), steps, FINAL_LR))


def _round(values) -> list:
    return [float(f"{v:.5g}") if v is not None and math.isfinite(v) else v for v in values]


def _aion_state(kit, model) -> tuple[list[float], list[float]]:
    """Each AION block's eval alpha and stored ratio, from the kit's read-back."""
    import aion_core

    alphas, ratios = [], []
    for block in kit.read(model).blocks:
        if block.aion is not None and block.aion.state is not None:
            ema = np.float32(block.aion.state["ratio_ema"])
            alphas.append(float(aion_core.compute_alpha(np.float32(block.aion.alpha0),
                                                        np.float32(block.aion.beta), ema)))
            ratios.append(float(ema))
    return alphas, ratios


def run(kit, seed: int, depth: int, variant: str, lr: float, steps: int = STEPS, precision: str | None = None,
        batch: int = BATCH, record: bool = False, eval_every: int = EVAL_EVERY,
        train_cap: int = data.TRAIN_CAP) -> dict:
    """Train one variant on ``kit``; returns its curves.

    ``loss`` and ``grad_norm``: every step's training loss and global gradient norm before
    clipping; ``val``: ``[step, held-out loss]`` pairs; ``final_scales``: each scaled
    block's scale after training (AION's eval alpha, the scalar, LayerScale's mean gamma);
    with ``record``, ``scales`` (every step's per-block scale) and ``ratio`` (``[step,
    per-block ratio EMA]`` at each evaluation). Stops at the first non-finite loss.
    """
    corpus = data.corpus(train_cap)
    problem = make_problem(seed, depth)
    spec = VARIANTS[variant]
    model = kit.build(to_net(problem, spec))
    train = kit.trainer(model, optimizer(lr, steps), clip=CLIP_NORM, loss="ce", precision=precision)
    inputs, targets = data.train_batches(corpus["train"], seed, steps, batch, SEQ)
    val_x, val_y = data.val_set(corpus["held_out"], SEQ)
    val_x, val_y = kit.from_numpy(val_x, "int32"), kit.from_numpy(val_y, "int32")
    losses, norms, scales, val, ratios = [], [], [], [], []
    start = time.perf_counter()
    for t in range(steps):
        step = train(kit.from_numpy(inputs[t], "int32"), kit.from_numpy(targets[t], "int32"))
        losses.append(step.loss)
        norms.append(step.grad_norm)
        if record:
            scales.append(_round(step.scales))
        finite = math.isfinite(step.loss)
        if (t + 1) % eval_every == 0 or t + 1 == steps or not finite:
            val.append([t + 1, kit.evaluate(model, val_x, val_y, "ce", precision) if finite else math.nan])
        if record and finite and ((t + 1) % RATIO_EVERY == 0 or t == 0) and spec.residual != "sum":
            ratios.append([t + 1, _round(_aion_state(kit, model)[1])])
        if not finite:
            break
    final = _round(step.scales) if step.scales else (_round(_aion_state(kit, model)[0])
                                                     if spec.torch_only and math.isfinite(step.loss) else [])
    return {"loss": losses, "grad_norm": _round(norms), "val": val, "final_scales": final,
            "scales": scales if record else None, "ratio": ratios if record else None,
            "seconds": time.perf_counter() - start, "device": train.label}


def failed(run: dict, best: float) -> str | None:
    """Why a run failed, or None: ``"non-finite"`` (a loss is not finite), ``"rising"`` (its
    final held-out loss is more than :data:`RISE` above its lowest), ``"degraded"`` (more
    than :data:`DEGRADED` above ``best``, the best final held-out loss of its setting).

    >>> failed({"loss": [5.0, 3.0], "val": [[1, 3.0], [2, 2.5]]}, best=2.4) is None
    True
    >>> failed({"loss": [5.0, float("nan")], "val": [[1, 3.0], [2, float("nan")]]}, best=2.4)
    'non-finite'
    """
    vals = [v for _, v in run["val"]]
    if not vals or not all(math.isfinite(v) for v in [*run["loss"], *vals]):
        return "non-finite"
    if vals[-1] > min(vals) + RISE:
        return "rising"
    if vals[-1] > best + DEGRADED:
        return "degraded"
    return None
