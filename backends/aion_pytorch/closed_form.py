"""The eager training step as one autograd node, with the closed-form VJP of :mod:`aion_core.adapter`.

Eager autograd records each of ``aion_core.train_step``'s small ops and runs a backward
kernel for each; this node records one, runs the same forward ops
(:func:`aion_core.adapter.train_forward`) and the backward written out
(:func:`aion_core.adapter.train_vjp`). Under ``torch.compile`` the module keeps
``train_step`` itself, whose ops Inductor fuses.
"""

from __future__ import annotations

import array_api_compat.torch as xp
import torch

import aion_core
from aion_core import adapter


def _addcmul(a, s, b):
    # aion_core's multiply_add a + s * b in one kernel (one full-size output, no temporary).
    return torch.addcmul(a, s, b)


class _TrainStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, x_norm, alpha0, beta, state, config, update, replica_mean):
        # The hook the forward applies (None with sync_ratio=False): the backward must use the same.
        replica_mean = adapter.replica_mean_for(config, replica_mean)
        # The layer has checked the inputs (compile-safe): check=False, each call checks once.
        out, new, stats, saved = adapter.train_forward(x, y, x_norm, alpha0, beta, state, config, xp=xp,
                                                       update=update, replica_mean=replica_mean, fma=_addcmul,
                                                       check=False)
        ctx.save_for_backward(*saved[2:])
        ctx.set_materialize_grads(False)  # no zero tensors for the state and stats outputs' gradients
        ctx.x_dtype, ctx.x_ref_is_x, ctx.replica_mean = saved.x_dtype, saved.x_ref_is_x, replica_mean
        ctx.param_dtype = alpha0.dtype
        outputs = (new.ratio_ema, new.step_count, new.nonfinite_count, stats["alpha"], stats["ratio"])
        ctx.mark_non_differentiable(*outputs)
        return (out, *outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, *_):
        saved = adapter.Saved(ctx.x_dtype, ctx.x_ref_is_x, *ctx.saved_tensors)
        grads = adapter.train_vjp(saved, dout, xp=xp, replica_mean=ctx.replica_mean, fma=_addcmul)
        return (grads.x, grads.y, grads.x_norm, grads.alpha0.to(ctx.param_dtype),
                grads.beta.to(ctx.param_dtype), None, None, None, None)


def train_step(x, y, x_norm, alpha0, beta, state: aion_core.AionState, config: aion_core.AionConfig, *,
               update: bool, replica_mean=None):
    """:func:`aion_core.train_step` (with ``xp`` torch and a detaching stop-gradient) as one autograd node.

    The inputs must have been checked (``aion_pytorch.checks``): the node does not check them again.
    """
    out, ratio_ema, step_count, nonfinite, alpha, ratio = _TrainStep.apply(
        x, y, x_norm, alpha0, beta, state, config, update, replica_mean)
    return out, aion_core.AionState(ratio_ema, step_count, nonfinite), {
        "alpha": alpha, "ratio": ratio, "ratio_ema": ratio_ema}
