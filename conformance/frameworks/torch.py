"""PyTorch harness adapter: tensors to and from numpy, value-and-grad, SGD."""

from __future__ import annotations

import numpy as np
import torch


def versions() -> dict[str, str]:
    return {"torch": torch.__version__}


def from_numpy(a, dtype: str, device: str = "cpu"):
    """A numpy array (or None) as a tensor of ``dtype`` ("float32", "int32", ...) on ``device``."""
    return None if a is None else torch.from_numpy(np.asarray(a)).to(device, getattr(torch, dtype))


def to_numpy(t) -> np.ndarray:
    """Any tensor as a float64 numpy array (bfloat16 included)."""
    t = torch.as_tensor(t).detach()
    return np.asarray((t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy(), np.float64)


def value_and_grad(loss_fn, inputs, params):
    """``loss_fn(*inputs) -> (loss, aux)``, and the gradients of ``loss``.

    Returns ``(loss, aux, input_grads, param_grads)``: one gradient per entry of
    ``inputs`` (None stays None) and of ``params``; a gradient that does not reach a
    tensor is zero.
    """
    inputs = [None if t is None else t.detach().requires_grad_() for t in inputs]
    loss, aux = loss_fn(*inputs)
    wrt = [t for t in (*inputs, *params) if t is not None]
    found = iter(torch.autograd.grad(loss, wrt, allow_unused=True))
    grads = []
    for t in (*inputs, *params):
        g = None if t is None else next(found)
        grads.append(torch.zeros_like(t) if t is not None and g is None else g)
    return loss.detach(), aux, grads[:len(inputs)], grads[len(inputs):]


def sgd(params, grads, lr: float) -> None:
    """``p <- p - lr * g`` in place."""
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g)
