"""Residual kinds of the evidence benchmark that only the torch kit builds (its ``EXTRA_RESIDUALS``).

Each is a block ``x + s * layer(LayerNorm(x))`` (pre-norm) or ``LayerNorm(x + s * layer(x))``
(``post=True``), built as ``cls(layer, dim, alpha0=..., beta=..., post=...)`` with ``norm``,
``layer`` and ``aion`` attributes; the AION math is :mod:`aion_core`'s public ``train_step``
and ``eval_step``, nothing re-derived:

``aion-stopgrad``
    AION (``AionResidual``, ratio on ``x``; alpha0 0.1 and beta 0.05 unless given) with the
    batch ratio's gradient stopped: the forward is AION's, the backward lacks the path
    through the ratio.
``aion-lagged``
    AION whose alpha comes from the stored ratio EMA of the previous steps only (an eval
    forward's alpha); the current batch's ratio then updates the EMA, without gradient. No
    information of the current batch, so none of a later position, reaches the forward.
``scalar``
    A trainable scalar scale from alpha0: AION with beta frozen at 0 (alpha = alpha0, trained).
``rezero``
    The same from 0 (ReZero, the variant's alpha0): alpha0 set to 0 after construction, since
    :class:`aion_core.AionConfig` requires a positive alpha0.
"""

from __future__ import annotations

import array_api_compat.torch as xp
import torch
from torch import nn

import aion_core
from aion_pytorch import AionResidual


def _detach(t: torch.Tensor) -> torch.Tensor:
    return t.detach()


class _Control(AionResidual):
    """AionResidual whose training forward is one of the controls (``lagged`` or not)."""

    lagged = False

    def forward(self, x, y, x_norm=None, return_stats=False):
        if not self.training:
            return super().forward(x, y, x_norm, return_stats)
        before = aion_core.AionState(self.ratio_ema.clone(), self.step_count, self.nonfinite_count)
        # The state update from the current batch, on detached inputs: no gradient through the ratio.
        _, after, _ = aion_core.train_step(x.detach(), y.detach(), None if x_norm is None else x_norm.detach(),
                                           self.alpha0.detach(), self.beta.detach(), before, self.config,
                                           xp=xp, stop_gradient=_detach)
        # alpha from a stored ratio: the previous steps' EMA (lagged), or the EMA this step
        # has just formed (AION's own forward value, its gradient stopped).
        out, stats = aion_core.eval_step(x, y, self.alpha0, self.beta, before if self.lagged else after,
                                         x_norm=x_norm, xp=xp, stop_gradient=_detach)
        with torch.no_grad():
            self.ratio_ema.copy_(after.ratio_ema)
            self.step_count.copy_(after.step_count)
            self.nonfinite_count.copy_(after.nonfinite_count)
        return (out, stats) if return_stats else out


class StopGradAion(_Control):
    lagged = False


class LaggedAion(_Control):
    lagged = True


class _Block(nn.Module):
    """``aion(x, layer(norm(x)))``, or ``norm(aion(x, layer(x)))`` with ``post``: the ratio on
    ``x``, as the neutral ``"aion"`` residual."""

    def __init__(self, layer: nn.Module, dim: int, aion: AionResidual, post: bool = False):
        super().__init__()
        self.norm, self.layer, self.aion, self.post = nn.LayerNorm(dim), layer, aion, post

    def forward(self, x):
        if self.post:
            return self.norm(self.aion(x, self.layer(x)))
        return self.aion(x, self.layer(self.norm(x)))


def _scalar(alpha0: float) -> AionResidual:
    layer = AionResidual(alpha0 if alpha0 > 0 else 0.1, 0.0)
    layer.beta.requires_grad_(False)
    if alpha0 == 0:
        with torch.no_grad():
            layer.alpha0.zero_()
    return layer


def stopgrad_block(layer, dim, alpha0=0.1, beta=0.05, post=False):
    return _Block(layer, dim, StopGradAion(alpha0, beta), post)


def lagged_block(layer, dim, alpha0=0.1, beta=0.05, post=False):
    return _Block(layer, dim, LaggedAion(alpha0, beta), post)


def scalar_block(layer, dim, alpha0=0.1, beta=0.0, post=False):
    """A trained scalar from ``alpha0`` (ReZero's from 0); ``beta`` is frozen at 0 whatever is given."""
    return _Block(layer, dim, _scalar(alpha0), post)


#: name -> a loader of the block class, as ``blocks.EXTRA_RESIDUALS`` holds them.
LOADERS = {"aion-stopgrad": lambda: stopgrad_block, "aion-lagged": lambda: lagged_block,
           "scalar": lambda: scalar_block, "rezero": lambda: scalar_block}
