"""The MLX kit's training step: forward, MSE, value-and-grad, clipping, optimizer update.

Eager, or the whole step under :func:`mlx.core.compile` as MLX documents it for training:
the model's and the optimizer's state given as the compiled function's ``inputs`` and
``outputs``, so that what the step writes (the new parameters, the optimizer's moments and
step, AION's running state, which the forward writes into the model) is carried out of the
compiled program, and read by the next call rather than frozen into its trace.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx

from aion_conformance.frameworks.kit import Step
from aion_conformance.frameworks.mlx import arrays, autodiff, optim


class Trainer:
    """``trainer(inputs, target)``: one training step of ``model`` on an MSE loss.

    ``compiled`` True compiles the step (:func:`mlx.core.compile`); False or None runs it
    op by op, MLX's usual way (compilation is opt-in there). MLX is lazy: each step ends
    with ``mx.eval`` of the model and the optimizer state, as MLX's training loops do, so a
    step is computed when it returns. ``observe``: return the :class:`Step` (loss, gradient
    norm before clipping, scales); otherwise None once the step has finished.
    """

    def __init__(self, model, optimizer, clip: float | None = None, compiled: bool | None = None,
                 observe: bool = True):
        self.model, self.observe = model, observe
        self.optimizer = optim.make(optimizer)
        # Its moments exist before the first step: a compiled step then reads them as inputs.
        self.optimizer.init(model.trainable_parameters())
        self.label = f"{arrays.device()} {'compile' if compiled else 'eager'}"
        grad = autodiff.value_and_grad(model, _loss(model))

        def step(inputs, target):
            loss, scales, grads, _ = grad([], [inputs, target])
            grads, norm = optim.clip(grads, clip)
            self.optimizer.update(model, grads)
            return loss, norm, scales

        self.state = [model.state, self.optimizer.state]
        self._step = partial(mx.compile, inputs=self.state, outputs=self.state)(step) if compiled else step

    def __call__(self, inputs, target) -> Step | None:
        loss, norm, scales = self._step(inputs, target)
        mx.eval(loss, norm, scales, self.state)
        if not self.observe:
            return None
        return Step(loss.item(), None if norm is None else norm.item(), [s.item() for s in scales])


def _loss(model):
    def loss(inputs, target):
        out, scales = model(inputs)
        return mx.mean(mx.square(out - target)), scales

    return loss


trainer = Trainer
