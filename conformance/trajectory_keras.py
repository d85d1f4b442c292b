"""The trajectory problem of :mod:`conformance.trajectory`, trained with :mod:`aion_keras`.

Runs on the Keras backend of the current process. Gradients come from that backend's
autodiff (``tf.GradientTape``, ``jax.value_and_grad`` over ``Model.stateless_call``,
``torch.autograd.grad``); the SGD update ``p <- p - lr * grad`` is applied with
``Variable.assign`` so no optimizer detail can differ between frameworks.
"""

from __future__ import annotations

import keras
from keras import ops

from aion_keras import AionResidual
from conformance.trajectory import block_aion, to_checkpoint


class TrajectoryNet(keras.Model):
    """``h = x``; per block ``h = AionResidual(h, tanh(Dense(LayerNorm(h))), x_norm=LayerNorm(h))``.

    ``call`` returns ``(h, alphas)``: the output and each block's alpha of this forward.
    """

    def __init__(self, problem: dict, **kwargs):
        super().__init__(**kwargs)
        dim = problem["x"].shape[-1]
        self.norms, self.denses, self.residuals = [], [], []
        for p in problem["blocks"]:
            norm = keras.layers.LayerNormalization(epsilon=problem["ln_eps"])
            dense = keras.layers.Dense(dim, activation="tanh")
            norm.build((None, dim))
            dense.build((None, dim))
            norm.set_weights([p["ln_scale"], p["ln_bias"]])
            dense.set_weights([p["w"], p["b"]])  # Keras kernels are [in, out], like the problem's w
            self.norms.append(norm)
            self.denses.append(dense)
            residual = AionResidual(problem["alpha0"], problem["beta"])
            for name, value in block_aion(problem, p).items():
                getattr(residual, name).assign(value)
            self.residuals.append(residual)
        self.built = True  # every sub-layer is built above, from the problem's weights

    def call(self, x, training=None):
        h, alphas = x, []
        for norm, dense, residual in zip(self.norms, self.denses, self.residuals):
            xn = norm(h)
            h, stats = residual(h, dense(xn), x_norm=xn, training=training, return_stats=True)
            alphas.append(stats["alpha"])
        return h, alphas


def _loss(h, target):
    return ops.mean(ops.square(h - target))


def _step_tensorflow(model, x, target):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        h, alphas = model(x, training=True)
        loss = _loss(h, target)
    grads = tape.gradient(loss, [v.value for v in model.trainable_variables])
    return loss, alphas, grads


def _step_jax(model, x, target):
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    loss, alphas, new_non_trainable, grads = _jax_program(model)(trainable, non_trainable, x, target)
    for variable, value in zip(model.non_trainable_variables, new_non_trainable):
        variable.assign(value)
    return loss, alphas, grads


def _jax_program(model):
    """The jitted loss-and-gradient of ``model``, compiled once for all steps of a run."""
    if getattr(model, "_jax_step", None) is None:
        import jax

        def loss_fn(trainable, non_trainable, x, target):
            (h, alphas), new_non_trainable = model.stateless_call(trainable, non_trainable, x,
                                                                  training=True)
            return _loss(h, target), (alphas, new_non_trainable)

        @jax.jit
        def program(trainable, non_trainable, x, target):
            (loss, (alphas, new_nt)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                trainable, non_trainable, x, target)
            return loss, alphas, new_nt, grads

        model._jax_step = program
    return model._jax_step


def _step_torch(model, x, target):
    import torch

    h, alphas = model(x, training=True)
    loss = _loss(h, target)
    grads = torch.autograd.grad(loss, [v.value for v in model.trainable_variables])
    return loss, [a.detach() for a in alphas], grads


_STEP = {"tensorflow": _step_tensorflow, "jax": _step_jax, "torch": _step_torch}


def run_keras(problem: dict, steps: int = 20) -> dict:
    """Train with :mod:`aion_keras`; loss and per-block alpha of every step's forward.

    Same return format as :func:`conformance.trajectory.run_torch`:
    ``{"loss": [steps floats], "alpha": [steps][blocks floats], "checkpoint": {...}}``.
    """
    model = TrajectoryNet(problem)
    x = ops.convert_to_tensor(problem["x"], dtype="float32")
    target = ops.convert_to_tensor(problem["target"], dtype="float32")
    step = _STEP[keras.backend.backend()]
    losses, alphas = [], []
    for _ in range(steps):
        loss, step_alphas, grads = step(model, x, target)
        for variable, grad in zip(model.trainable_variables, grads):
            variable.assign(variable.value - problem["lr"] * grad)
        losses.append(float(ops.convert_to_numpy(loss)))
        alphas.append([float(ops.convert_to_numpy(a)) for a in step_alphas])
    final = [{"ln_scale": n.gamma, "ln_bias": n.beta, "w": d.kernel, "b": d.bias,
              **{k: getattr(r, k) for k in ("alpha0", "beta", "ratio_ema", "step_count", "nonfinite_count")}}
             for n, d, r in zip(model.norms, model.denses, model.residuals)]
    final = [{k: ops.convert_to_numpy(v.value) for k, v in blk.items()} for blk in final]
    return {"loss": losses, "alpha": alphas, "checkpoint": to_checkpoint(final)}
