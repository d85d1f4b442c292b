"""The stability problem (:mod:`~aion_conformance.stability.problem`) trained with :mod:`aion_keras`.

Runs on the Keras backend of the current process: gradients from
:func:`aion_conformance.frameworks.keras.value_and_grad` (one jitted program on JAX, eager
on TensorFlow and torch), Keras' own ``AdamW`` with ``global_clipnorm``.
"""

from __future__ import annotations

import math
import time

import keras
from keras import ops

from aion_conformance.frameworks import keras as fw
from aion_conformance.stability.problem import (ADAM_EPS, AION_BETA, BETAS, CLIP_NORM, LN_EPS, SCALE, SCALED,
                                                VARIANTS, Variant, branch_weights, deepnorm_constants, make_problem,
                                                wire)
from aion_keras import AionBlock, AionResidual


class FeedForward(keras.layers.Layer):
    """``Dense(4D)``, exact GELU, ``Dense(D)``, built from the problem's ``[in, out]`` kernels."""

    def __init__(self, weights: dict, **kwargs):
        super().__init__(**kwargs)
        dim, hidden = weights["w1"].shape
        self.inner, self.outer = keras.layers.Dense(hidden), keras.layers.Dense(dim)
        self.inner.build((None, dim))
        self.outer.build((None, hidden))
        self.inner.set_weights([weights["w1"], weights["b1"]])
        self.outer.set_weights([weights["w2"], weights["b2"]])
        self.built = True

    def call(self, x):
        return self.outer(ops.gelu(self.inner(x), approximate=False))


def _layer_norm(dim: int):
    norm = keras.layers.LayerNormalization(epsilon=LN_EPS)
    norm.build((None, dim))
    return norm


class StabilityBlock(keras.layers.Layer):
    """One residual block wired as ``variant`` says; ``call`` returns ``(out, scale)``
    (``scale``: AION's alpha, LayerScale's mean gamma, or None)."""

    def __init__(self, variant: Variant, weights: dict, depth: int, **kwargs):
        super().__init__(**kwargs)
        self.variant = variant
        self.skip_gain = deepnorm_constants(depth)[0] if variant.residual == "deepnorm" else 1.0
        dim = weights["w1"].shape[0]
        ff = FeedForward(weights)
        if variant.residual == "aion-block":
            self.block = AionBlock(ff, dim, alpha0=SCALE, beta=AION_BETA)
            self.block.build((None, dim))
        else:
            self.ff = ff
            self.norm = _layer_norm(dim) if variant.norm != "none" else None
        if variant.residual in ("fixed", "aion"):
            self.aion = AionResidual(SCALE, 0.0 if variant.residual == "fixed" else AION_BETA)
            if variant.residual == "fixed":
                self.aion.alpha0.trainable = self.aion.beta.trainable = False  # alpha = 0.1, for good
        elif variant.residual == "layerscale":
            self.gamma = self.add_weight(shape=(dim,), initializer=keras.initializers.Constant(SCALE), name="gamma")
        self.built = True

    def call(self, x, training=None):
        return wire(self.variant, x, lambda x: self.block(x, training=training, return_stats=True),
                    lambda x: self.ff(x), lambda x: self.norm(x),
                    lambda x, y: self.aion(x, y, training=training, return_stats=True),
                    lambda y: (self.gamma * y, ops.mean(self.gamma)), self.skip_gain)


class StabilityNet(keras.Model):
    """Embeddings, the blocks, final LayerNorm and head; ``call`` returns ``(out, scales)``."""

    def __init__(self, problem: dict, variant: Variant, **kwargs):
        super().__init__(**kwargs)
        vocab, dim = problem["embed"].shape
        self.embed = keras.layers.Embedding(vocab, dim)
        self.embed.build((None,))
        self.embed.set_weights([problem["embed"]])
        self.pos = self.add_weight(shape=problem["pos"].shape, name="pos")
        self.pos.assign(problem["pos"])
        self.blocks = [StabilityBlock(variant, branch_weights(problem, variant, i), problem["depth"])
                       for i in range(problem["depth"])]
        self.norm = _layer_norm(dim)
        self.head = keras.layers.Dense(dim)
        self.head.build((None, dim))
        self.head.set_weights([problem["head_w"], problem["head_b"]])
        self.built = True  # every sub-layer is built above, from the problem's weights

    def call(self, tokens, training=None):
        h, scales = self.embed(tokens) + self.pos, []
        for block in self.blocks:
            h, scale = block(h, training=training)
            scales.append(scale)
        return self.head(self.norm(h)), scales


def _loss(call, tokens, target):
    out, scales = call(tokens, training=True)
    return ops.mean(ops.square(out - target)), [s for s in scales if s is not None]


def _dense(grads):
    if keras.backend.backend() != "tensorflow":
        return grads
    import tensorflow as tf

    return [tf.convert_to_tensor(g) for g in grads]  # (keras.ops keeps only the slices' rows)


def run(seed: int, depth: int, variant: str, steps: int, record_scale: bool = False) -> dict:
    """Train one variant; as :func:`aion_conformance.stability.torch_model.run`."""
    problem = make_problem(seed, depth)
    spec = VARIANTS[variant]
    model = StabilityNet(problem, spec)
    opt = keras.optimizers.AdamW(spec.lr, weight_decay=0.0, beta_1=BETAS[0], beta_2=BETAS[1],
                                 epsilon=ADAM_EPS, global_clipnorm=CLIP_NORM)
    tokens, target = fw.from_numpy(problem["tokens"], "int32"), fw.from_numpy(problem["target"], "float32")
    record = record_scale and spec.residual in SCALED
    losses, norms, scales = [], [], []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        # Keras adds epsilon to sqrt(v) before the bias correction, torch and optax after it:
        # this epsilon makes Keras' own AdamW take their step exactly.
        opt.epsilon = ADAM_EPS * math.sqrt(1.0 - BETAS[1] ** step)
        # JAX jitted, TensorFlow and torch eager: a 20-step check would spend far longer
        # compiling than running.
        loss, step_scales, _, grads = fw.value_and_grad(model, _loss, [], [tokens, target])
        # TensorFlow returns the embedding's gradient as IndexedSlices with repeated rows:
        # dense, as torch and JAX have it, so that its norm (and the clipping's) is the true one.
        grads = _dense(grads)
        norms.append(float(fw.to_numpy(ops.sqrt(sum(ops.sum(ops.square(g)) for g in grads)))))
        opt.apply_gradients(zip(grads, model.trainable_variables))
        losses.append(float(fw.to_numpy(loss)))
        if record:
            scales.append([float(fw.to_numpy(s)) for s in step_scales])
        if not math.isfinite(losses[-1]):
            break
    return {"loss": losses, "grad_norm": norms, "scale": scales if record else None,
            "seconds": time.perf_counter() - start, "device": keras.backend.backend()}
