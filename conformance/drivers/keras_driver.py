"""Driver for ``aion_keras`` on the Keras backend this process was started with.

The backend is fixed when Keras is imported (``KERAS_BACKEND``), so each backend is a
separate driver run: ``keras-tensorflow``, ``keras-jax``, ``keras-torch``. Gradients
come from the backend's own autodiff: ``tf.GradientTape``, ``jax.value_and_grad`` over
``Layer.stateless_call``, and ``torch.autograd.grad``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from aion_keras import AionResidual
from conformance.driver import FLOAT_DTYPES

BACKEND = keras.backend.backend()
if BACKEND == "jax":
    import jax

    # float64 cases need 64-bit JAX arrays (Keras otherwise truncates them to float32).
    jax.config.update("jax_enable_x64", True)


class _Slot:
    """The driver's layer handle: the Keras layer of the dtype of the last call.

    A Keras layer casts floating inputs to its compute dtype, so each case dtype needs a
    layer of that dtype policy; the handle swaps layers, carrying the weights over.
    """

    def __init__(self, layer: AionResidual):
        self.layer = layer

    def for_dtype(self, dtype: str) -> AionResidual:
        if dtype in FLOAT_DTYPES and self.layer.dtype_policy.compute_dtype != dtype:
            fresh = AionResidual.from_config({**self.layer.get_config(), "dtype": dtype})
            fresh.set_weights(self.layer.get_weights())
            self.layer = fresh
        return self.layer


def _numpy(t) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(ops.cast(t, "float32") if _is_bf16(t) else t),
                      dtype=np.float64)


def _is_bf16(t) -> bool:
    return keras.backend.standardize_dtype(t.dtype) == "bfloat16"


class KerasDriver:
    dtypes = FLOAT_DTYPES

    def __init__(self):
        self.name = f"keras-{BACKEND}"

    def versions(self):
        import importlib

        framework = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[BACKEND]
        return {"keras": keras.__version__, framework: importlib.import_module(framework).__version__}

    def make(self, config):
        return _Slot(AionResidual(**config))

    def set_params(self, slot, alpha0, beta):
        slot.layer.alpha0.assign(np.float32(alpha0))
        slot.layer.beta.assign(np.float32(beta))

    def set_state(self, slot, state):
        slot.layer.ratio_ema.assign(np.float32(state["ratio_ema"]))
        slot.layer.step_count.assign(np.int32(state["step_count"]))
        slot.layer.nonfinite_count.assign(np.int32(state["nonfinite_count"]))

    def get_state(self, slot):
        layer = slot.layer
        return {"ratio_ema": float(ops.convert_to_numpy(layer.ratio_ema)),
                "step_count": int(ops.convert_to_numpy(layer.step_count)),
                "nonfinite_count": int(ops.convert_to_numpy(layer.nonfinite_count))}

    def call(self, slot, mode, x, y, x_norm, cotangent, dtype):
        layer = slot.for_dtype(dtype)
        x, y = ops.convert_to_tensor(x, dtype=dtype), ops.convert_to_tensor(y, dtype=dtype)
        xn = None if x_norm is None else ops.convert_to_tensor(x_norm, dtype=dtype)
        training = mode == "train"
        if cotangent is None:
            out, stats = layer(x, y, x_norm=xn, training=training, return_stats=True)
            grads = None
        else:
            # The loss is summed in float32 (float64 for float64): its gradient with respect
            # to ``out`` is the cotangent itself, already representable in ``dtype``.
            acc = "float64" if dtype == "float64" else "float32"
            cot = ops.convert_to_tensor(cotangent, dtype=acc)
            out, stats, grads = _GRADIENT[BACKEND](layer, x, y, xn, training, cot, acc)
        result = {"out": _numpy(out), "stats": {k: float(_numpy(v)) for k, v in stats.items()}}
        if grads is not None:
            names = ("x", "y", "x_norm", "alpha0", "beta")
            result["grads"] = {name: _numpy(g) for name, g in zip(names, grads)
                               if not (name == "x_norm" and xn is None)}
        return result


def _zeros_for_none(grads, like):
    # An input the forward did not use (x_norm off update steps) gets no gradient at all.
    return [ops.zeros_like(t) if g is None else g for g, t in zip(grads, like)]


def _tensorflow_grads(layer, x, y, xn, training, cot, acc):
    import tensorflow as tf

    inputs = [x, y] + ([xn] if xn is not None else [])
    params = [layer.alpha0.value, layer.beta.value]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out, stats = layer(x, y, x_norm=xn, training=training, return_stats=True)
        loss = tf.reduce_sum(tf.cast(out, acc) * cot)
    grads = _zeros_for_none(tape.gradient(loss, inputs + params), inputs + params)
    return out, stats, _with_x_norm_slot(grads, xn)


def _jax_grads(layer, x, y, xn, training, cot, acc):
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]
    out, stats, new_non_trainable, (d_params, dx, dy, dxn) = _jax_value_and_grads(
        layer, training, trainable, non_trainable, x, y, xn, cot)
    for variable, value in zip(layer.non_trainable_variables, new_non_trainable):
        variable.assign(value)
    by_name = dict(zip((v.name for v in layer.trainable_variables), d_params))
    return out, stats, [dx, dy, dxn, by_name["alpha0"], by_name["beta"]]


def _jax_value_and_grads(layer, training, trainable, non_trainable, x, y, xn, cot):
    # One XLA program per layer and input signature: op-by-op JAX would compile
    # every primitive separately, which takes far longer than the whole program.
    global _jax_value_and_grads_jit
    if _jax_value_and_grads_jit is None:
        import functools

        import jax
        import jax.numpy as jnp

        @functools.partial(jax.jit, static_argnums=(0, 1))
        def value_and_grads(layer, training, trainable, non_trainable, x, y, xn, cot):
            def loss_fn(trainable, x, y, xn):
                (out, stats), new_non_trainable = layer.stateless_call(
                    trainable, non_trainable, x, y, x_norm=xn, training=training, return_stats=True)
                return jnp.sum(out.astype(cot.dtype) * cot), (out, stats, new_non_trainable)

            (_, (out, stats, new_non_trainable)), grads = jax.value_and_grad(
                loss_fn, argnums=(0, 1, 2, 3), has_aux=True)(trainable, x, y, xn)
            return out, stats, new_non_trainable, grads

        _jax_value_and_grads_jit = value_and_grads
    return _jax_value_and_grads_jit(layer, training, trainable, non_trainable, x, y, xn, cot)


_jax_value_and_grads_jit = None


def _torch_grads(layer, x, y, xn, training, cot, acc):
    import torch

    inputs = [t.requires_grad_() for t in ([x, y] + ([xn] if xn is not None else []))]
    params = [layer.alpha0.value, layer.beta.value]
    out, stats = layer(*inputs[:2], x_norm=xn, training=training, return_stats=True)
    loss = torch.sum(out.to(getattr(torch, acc)) * cot)
    grads = torch.autograd.grad(loss, inputs + params, allow_unused=True)
    return out, stats, _with_x_norm_slot(_zeros_for_none(grads, inputs + params), xn)


def _with_x_norm_slot(grads, xn):
    """``[dx, dy, (dxn,) d_alpha0, d_beta]`` -> ``[dx, dy, dxn or None, d_alpha0, d_beta]``."""
    return grads if xn is not None else grads[:2] + [None] + grads[2:]


_GRADIENT = {"tensorflow": _tensorflow_grads, "jax": _jax_grads, "torch": _torch_grads}
