"""The shared optimizer hyper-parameters as :mod:`mlx.optimizers` optimizers, and clipping.

MLX's own optimizers take the update, so the harness checks what an MLX user trains with.
Two of MLX's defaults differ from torch's and optax's and are set here: its ``Adam`` and
``AdamW`` skip the bias correction unless asked (``bias_correction=True``: then
``m / (1 - beta1**t)`` over ``sqrt(v) / sqrt(1 - beta2**t) + eps``, epsilon after the
correction as :class:`~aion_conformance.frameworks.optimizers.AdamW` says), and its
``AdamW`` decays weights by 0.01 unless told (the shared spec says 0). The decay itself is
torch's: ``p * (1 - lr * weight_decay)`` before the Adam step.
"""

from __future__ import annotations

import mlx.optimizers as optimizers

from aion_conformance.frameworks.optimizers import AdamW, Sgd


def make(spec: Sgd | AdamW) -> optimizers.Optimizer:
    """The MLX optimizer of ``spec``."""
    if isinstance(spec, Sgd):
        return optimizers.SGD(learning_rate=spec.lr)
    return optimizers.AdamW(learning_rate=spec.lr, betas=list(spec.betas), eps=spec.eps,
                            weight_decay=spec.weight_decay, bias_correction=True)


def clip(grads, max_norm: float | None):
    """``(grads, norm)``: the gradients clipped to global norm ``max_norm`` and their norm
    before clipping (``grads`` as given and None without ``max_norm``: not computed).

    MLX's :func:`~mlx.optimizers.clip_grad_norm` scales by ``max_norm / (norm + 1e-6)``
    when that is below 1, as torch's ``clip_grad_norm_``.
    """
    if max_norm is None:
        return grads, None
    return optimizers.clip_grad_norm(grads, max_norm)
