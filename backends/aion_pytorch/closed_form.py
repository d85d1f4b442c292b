"""The eager training step as one autograd node, with the closed-form VJP of :mod:`aion_core.adapter`.

Eager autograd records each of ``aion_core.train_step``'s small ops and runs a backward
kernel for each; this node records one. On the CPU its forward and backward are each one
C++ kernel (:mod:`aion_pytorch.kernels`, the same closed form); elsewhere (CUDA, a process
group to average the ratio over, ``AION_TORCH_KERNELS=ops``) it runs the same forward ops
(:func:`aion_core.adapter.train_forward`) and the backward written out
(:func:`aion_core.adapter.train_vjp`) as torch ops. Under ``torch.compile`` the module keeps
``train_step`` itself, whose ops Inductor fuses.
"""

from __future__ import annotations

import array_api_compat.torch as xp
import torch

import aion_core
from aion_core import adapter
from aion_pytorch import kernels


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


class _KernelStep(torch.autograd.Function):
    # The same node, its forward and backward each one C++ kernel (aion_pytorch.kernels).
    @staticmethod
    def forward(ctx, x, y, x_norm, alpha0, beta, ratio_ema, step_count, nonfinite, update, write, eps, gamma):
        out, rows, sc, new_ema, new_step, new_nonfinite, alpha, ratio = kernels.ops().train_forward(
            x, y, x_norm, alpha0, beta, ratio_ema, step_count, nonfinite, update, write, eps, gamma)
        ctx.save_for_backward(y, (x if x_norm is None else x_norm) if update else None, rows, sc)
        ctx.set_materialize_grads(False)
        ctx.x_dtype = None if x is None else x.dtype
        ctx.x_ref_is_x = x_norm is None
        ctx.param_dtype = alpha0.dtype
        ctx.mark_non_differentiable(new_ema, new_step, new_nonfinite, alpha, ratio)
        return out, new_ema, new_step, new_nonfinite, alpha, ratio

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, *_):
        if dout is None:
            return (None,) * 12
        y, x_ref, rows, sc = ctx.saved_tensors
        x_dtype = ctx.x_dtype
        dy, d_ref, d_alpha0, d_beta = kernels.ops().train_backward(dout, y, x_ref, rows, sc, x_dtype is not None,
                                                                   ctx.x_ref_is_x)
        dx = dx_norm = None
        if x_ref is not None and ctx.x_ref_is_x:
            dx = d_ref  # dout and the ratio's term, in x's dtype
        else:
            dx_norm = d_ref
            if x_dtype is not None:
                dx = dout if dout.dtype == x_dtype else dout.to(x_dtype)
        if d_alpha0.dtype != ctx.param_dtype:
            d_alpha0, d_beta = d_alpha0.to(ctx.param_dtype), d_beta.to(ctx.param_dtype)
        return dx, dy, dx_norm, d_alpha0, d_beta, None, None, None, None, None, None, None


def uses_kernel(x, y, x_norm, config: aion_core.AionConfig, replica_mean=None) -> bool:
    """Whether :func:`train_step` runs the C++ kernel for these inputs (host-side checks only)."""
    return kernels.usable(x, y, x_norm, adapter.replica_mean_for(config, replica_mean))


def train_step(x, y, x_norm, alpha0, beta, state: aion_core.AionState, config: aion_core.AionConfig, *,
               update: bool, replica_mean=None, kernel: bool | None = None,
               write_to: aion_core.AionState | None = None):
    """:func:`aion_core.train_step` (with ``xp`` torch and a detaching stop-gradient) as one autograd node.

    The inputs must have been checked (``aion_pytorch.checks``): the node does not check them again.
    ``kernel``: run the C++ kernel (:mod:`aion_pytorch.kernels`) or the torch ops; None asks
    :func:`uses_kernel`. With the kernel and ``write_to`` (the layer's buffers, holding the
    values of ``state``) the state is read from ``write_to`` and the new state written into it
    in place; otherwise the caller writes the returned state.
    """
    if kernel is None:
        kernel = uses_kernel(x, y, x_norm, config, replica_mean)
    if kernel:
        read = state if write_to is None else write_to
        out, ratio_ema, step_count, nonfinite, alpha, ratio = _KernelStep.apply(
            x, y, x_norm, alpha0, beta, *read, update, write_to is not None, config.epsilon, config.ema_gamma)
    else:
        out, ratio_ema, step_count, nonfinite, alpha, ratio = _TrainStep.apply(
            x, y, x_norm, alpha0, beta, state, config, update, replica_mean)
    return out, aion_core.AionState(ratio_ema, step_count, nonfinite), {
        "alpha": alpha, "ratio": ratio, "ratio_ema": ratio_ema}
