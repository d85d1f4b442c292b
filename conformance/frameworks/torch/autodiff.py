"""The one value-and-grad of the torch kit (the driver's and the trainer's)."""

from __future__ import annotations

import torch


def value_and_grad(loss_fn, inputs, params, scaler: torch.amp.GradScaler | None = None, optimizer=None):
    """``loss_fn(*inputs) -> (loss, aux)``, and the gradients of ``loss`` by ``backward``.

    ``params`` keep their gradients in ``.grad`` (for an optimizer step). With a
    ``scaler``, the loss is scaled and the gradients of ``optimizer``'s parameters unscaled
    by it, as a float16 training step does; input gradients are unscaled here.

    Returns ``(loss, aux, input_grads, param_grads)``: one gradient per entry of
    ``inputs`` (None stays None) and of ``params``; a gradient that does not reach a
    tensor is zero.
    """
    inputs = [None if t is None else t.detach().requires_grad_() for t in inputs]
    for p in params:
        p.grad = None
    loss, aux = loss_fn(*inputs)
    scale = 1.0
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        scale = scaler.get_scale()
        scaler.update()

    def grad(t, divide):
        return torch.zeros_like(t) if t.grad is None else (t.grad / scale if divide else t.grad)

    return (loss.detach(), aux, [None if t is None else grad(t, True) for t in inputs],
            [grad(p, False) for p in params])
