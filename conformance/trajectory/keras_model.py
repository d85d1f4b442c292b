"""The trajectory problem (:mod:`~aion_conformance.trajectory.problem`) trained with :mod:`aion_keras`.

Runs on the Keras backend of the current process, with the gradients and SGD update of
:mod:`aion_conformance.frameworks.keras`.
"""

from __future__ import annotations

import keras
from keras import ops

from aion_conformance.frameworks import keras as fw
from aion_conformance.trajectory.problem import block_aion, to_checkpoint
from aion_core import portable
from aion_keras import AionResidual


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


def _loss(call, x, target):
    h, alphas = call(x, training=True)
    return ops.mean(ops.square(h - target)), alphas


def run(problem: dict, steps: int = 20) -> dict:
    """Train; loss and per-block alpha of every step's forward, and the final checkpoint."""
    model = TrajectoryNet(problem)
    x, target = (fw.from_numpy(problem[k], "float32") for k in ("x", "target"))
    losses, alphas = [], []
    for _ in range(steps):
        loss, step_alphas, _, grads = fw.value_and_grad(model, _loss, [x], [target])
        fw.sgd(model.trainable_variables, grads, problem["lr"])
        losses.append(float(fw.to_numpy(loss)))
        alphas.append([float(fw.to_numpy(a)) for a in step_alphas])
    final = [{"ln_scale": n.gamma, "ln_bias": n.beta, "w": d.kernel, "b": d.bias,
              **{k: getattr(r, k) for k in portable.ENTRY_DTYPES}}
             for n, d, r in zip(model.norms, model.denses, model.residuals)]
    return {"loss": losses, "alpha": alphas,
            "checkpoint": to_checkpoint([{k: ops.convert_to_numpy(v.value) for k, v in blk.items()}
                                         for blk in final])}
