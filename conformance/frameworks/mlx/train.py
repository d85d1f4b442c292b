"""The MLX kit's training step (forward, loss, value-and-grad, clipping, optimizer update)
and its evaluation (an eval-mode forward's loss).

Eager, or the whole step under :func:`mlx.core.compile` as MLX documents it for training:
the model's and the optimizer's state given as the compiled function's ``inputs`` and
``outputs``, so that what the step writes (the new parameters, the optimizer's moments and
step, AION's running state, which the forward writes into the model) is carried out of the
compiled program, and read by the next call rather than frozen into its trace.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map_with_path

from aion_conformance.frameworks.kit import Step
from aion_conformance.frameworks.mlx import arrays, autodiff, optim

PRECISIONS = {None: None, "bfloat16": mx.bfloat16}


def objective(loss: str, out, target):
    """``"mse"``: ``mean((out - target)**2)``; ``"ce"``: the mean cross-entropy of the
    logits ``out[..., V]`` against integer ``target``, log-softmax in float32."""
    if loss == "mse":
        return mx.mean(mx.square(out - target))
    if loss == "ce":
        return mx.mean(nn.losses.cross_entropy(out.astype(mx.float32), target.astype(mx.int32)))
    raise ValueError(f"loss must be 'mse' or 'ce', got {loss!r}")


def compute_dtype(precision: str | None):
    """The dtype ``precision`` computes in (None: the parameters' own, float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def forward(model, inputs, dtype):
    """``model(inputs)``, in ``dtype`` when given: the trainable floating parameters (not
    AION's, which stay float32 as aion_mlx keeps them) and floating inputs cast for the
    forward, the float32 parameters put back after (their gradients come back float32
    through the cast)."""
    if dtype is None:
        return model(inputs)
    params = model.trainable_parameters()

    def down(path, p):
        return p if ".aion." in f".{path}." or not mx.issubdtype(p.dtype, mx.floating) else p.astype(dtype)

    model.update(tree_map_with_path(down, params))
    try:
        return model(inputs.astype(dtype) if mx.issubdtype(inputs.dtype, mx.floating) else inputs)
    finally:
        model.update(params)


class Trainer:
    """``trainer(inputs, target)``: one training step of ``model`` on ``loss`` (see
    :func:`objective`).

    ``compiled`` True compiles the step (:func:`mlx.core.compile`); False or None runs it
    op by op, MLX's usual way (compilation is opt-in there). MLX is lazy: each step ends
    with ``mx.eval`` of the model and the optimizer state, as MLX's training loops do, so a
    step is computed when it returns. ``observe``: return the :class:`Step` (loss, gradient
    norm before clipping, scales); otherwise None once the step has finished.
    ``precision="bfloat16"``: the forward in bfloat16 (:func:`forward`), parameters and
    optimizer state float32.
    """

    def __init__(self, model, optimizer, clip: float | None = None, compiled: bool | None = None,
                 observe: bool = True, loss: str = "mse", precision: str | None = None):
        self.model, self.observe = model, observe
        self.optimizer = optim.make(optimizer)
        # Its moments exist before the first step: a compiled step then reads them as inputs.
        self.optimizer.init(model.trainable_parameters())
        self.label = f"{arrays.device()} {'compile' if compiled else 'eager'}"
        grad = autodiff.value_and_grad(model, _loss(model, loss, compute_dtype(precision)))

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


def _loss(model, loss: str = "mse", dtype=None):
    def fn(inputs, target):
        out, scales = forward(model, inputs, dtype)
        return objective(loss, out, target), scales

    return fn


trainer = Trainer


def evaluate(model, inputs, target, loss: str = "mse", precision: str | None = None) -> float:
    """The loss of an eval-mode forward of ``model`` (AION's state read, not advanced; no
    gradient); the model's training mode is put back after."""
    dtype, was_training = compute_dtype(precision), model.training
    model.eval()
    try:
        out, _ = forward(model, inputs, dtype)
        return objective(loss, out, target).item()
    finally:
        model.train(was_training)
