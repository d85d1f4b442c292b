"""The stability problem (:mod:`~aion_conformance.stability.problem`) trained with :mod:`aion_pytorch`.

torch's own AdamW and ``clip_grad_norm_``; CUDA when available (``AION_CONFORMANCE_DEVICE``
may say ``cpu``), eager.
"""

from __future__ import annotations

import os
import math
import time

import torch

from aion_conformance.registry import DEVICE_ENV
from aion_conformance.stability.problem import (ADAM_EPS, AION_BETA, BETAS, CLIP_NORM, LN_EPS, SCALE, SCALED,
                                                VARIANTS, Variant, branch_weights, deepnorm_constants, make_problem,
                                                wire)
from aion_pytorch import AionBlock, AionResidual


def _device() -> str:
    wanted = os.environ.get(DEVICE_ENV, "auto")
    return ("cuda" if torch.cuda.is_available() else "cpu") if wanted == "auto" else wanted


def _load(param: torch.nn.Parameter, value) -> None:
    with torch.no_grad():
        param.copy_(torch.from_numpy(value))


def _branch(weights: dict) -> torch.nn.Sequential:
    dim, hidden = weights["w1"].shape
    ff = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim))
    for layer, w, b in ((ff[0], "w1", "b1"), (ff[2], "w2", "b2")):
        _load(layer.weight, weights[w].T)  # torch keeps [out, in]
        _load(layer.bias, weights[b])
    return ff


class StabilityBlock(torch.nn.Module):
    """One residual block wired as ``variant`` says; ``forward`` returns ``(out, scale)``.

    ``scale`` is the block's branch scale of this forward (AION's alpha, the fixed 0.1,
    LayerScale's mean gamma), or None for the variants without one.
    """

    def __init__(self, variant: Variant, weights: dict, depth: int):
        super().__init__()
        self.variant = variant
        self.skip_gain = deepnorm_constants(depth)[0] if variant.residual == "deepnorm" else 1.0
        ff = _branch(weights)
        dim = ff[0].in_features
        if variant.residual == "aion-block":
            self.block = AionBlock(ff, dim, alpha0=SCALE, beta=AION_BETA)
            return
        self.ff = ff
        self.norm = torch.nn.LayerNorm(dim, eps=LN_EPS) if variant.norm != "none" else None
        if variant.residual in ("fixed", "aion"):
            self.aion = AionResidual(SCALE, 0.0 if variant.residual == "fixed" else AION_BETA)
            if variant.residual == "fixed":
                self.aion.requires_grad_(False)  # alpha = alpha0 = 0.1, for good
        elif variant.residual == "layerscale":
            self.gamma = torch.nn.Parameter(torch.full((dim,), SCALE))

    def forward(self, x):
        return wire(self.variant, x, lambda x: self.block(x, return_stats=True), lambda x: self.ff(x),
                    lambda x: self.norm(x), lambda x, y: self.aion(x, y, return_stats=True),
                    lambda y: (self.gamma * y, self.gamma.mean()), self.skip_gain)


class StabilityNet(torch.nn.Module):
    """Embeddings, the blocks, final LayerNorm and head; ``forward`` returns ``(out, scales)``."""

    def __init__(self, problem: dict, variant: Variant):
        super().__init__()
        self.embed = torch.nn.Embedding.from_pretrained(torch.from_numpy(problem["embed"]).clone(), freeze=False)
        self.pos = torch.nn.Parameter(torch.from_numpy(problem["pos"]).clone())
        self.blocks = torch.nn.ModuleList(StabilityBlock(variant, branch_weights(problem, variant, i),
                                                         problem["depth"]) for i in range(problem["depth"]))
        dim = problem["pos"].shape[-1]
        self.norm = torch.nn.LayerNorm(dim, eps=LN_EPS)
        self.head = torch.nn.Linear(dim, dim)
        _load(self.head.weight, problem["head_w"].T)
        _load(self.head.bias, problem["head_b"])

    def forward(self, tokens):
        h, scales = self.embed(tokens) + self.pos, []
        for block in self.blocks:
            h, scale = block(h)
            scales.append(scale)
        return self.head(self.norm(h)), scales


def run(seed: int, depth: int, variant: str, steps: int, record_scale: bool = False) -> dict:
    """Train one variant; per step the loss, the global gradient norm before clipping and,
    with ``record_scale``, every block's scale.

    Stops at the first non-finite loss (the run has crashed; nothing after it is data).
    """
    device = _device()
    problem = make_problem(seed, depth)
    spec = VARIANTS[variant]
    torch.manual_seed(seed)  # nothing is drawn from it: every weight comes from the problem
    model = StabilityNet(problem, spec).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, betas=BETAS, eps=ADAM_EPS, weight_decay=0.0)
    tokens = torch.from_numpy(problem["tokens"]).long().to(device)
    target = torch.from_numpy(problem["target"]).to(device)
    record = record_scale and spec.residual in SCALED
    losses, norms, scales = [], [], []
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        out, step_scales = model(tokens)
        loss = torch.nn.functional.mse_loss(out, target)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        opt.step()
        losses.append(loss.item())
        norms.append(norm.item())
        if record:
            scales.append(torch.stack([s.detach().float() for s in step_scales]).tolist())
        if not math.isfinite(losses[-1]):
            break
    return {"loss": losses, "grad_norm": norms, "scale": scales if record else None,
            "seconds": time.perf_counter() - start, "device": device}
