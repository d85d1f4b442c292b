"""Driver for ``aion_keras`` on the Keras backend this process was started with.

The backend is fixed when Keras is imported (``KERAS_BACKEND``), so each backend is a
separate driver run: ``keras-tensorflow``, ``keras-jax``, ``keras-torch``.
"""

from __future__ import annotations

from keras import ops

import aion_core as core
from aion_conformance.drivers.base import BuiltinDriver, driver_result, loss_dtype
from aion_conformance.drivers.protocol import FLOAT_DTYPES
from aion_conformance.frameworks import keras as fw
from aion_keras import AionResidual

if fw.BACKEND == "jax":
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


def _loss(training: bool):
    def loss(call, x, y, x_norm, cotangent):
        out, stats = call(x, y, x_norm=x_norm, training=training, return_stats=True)
        return ops.sum(ops.cast(out, cotangent.dtype) * cotangent), (out, stats)
    return loss


#: One loss function per mode, defined once (the JAX program is cached per function).
_LOSSES = {"train": _loss(True), "eval": _loss(False)}


class KerasDriver(BuiltinDriver):
    def __init__(self):
        self.name = f"keras-{fw.BACKEND}"

    def versions(self):
        return fw.versions()

    def make(self, config):
        return _Slot(AionResidual(**config))

    def set_params(self, slot, alpha0, beta):
        slot.layer.alpha0.assign(alpha0)
        slot.layer.beta.assign(beta)

    def set_state(self, slot, state):
        for name, value in core.portable.state_entries(state).items():
            getattr(slot.layer, name).assign(value)

    def get_state(self, slot):
        return {name: ops.convert_to_numpy(getattr(slot.layer, name).value).item()
                for name in core.STATE_SPEC}

    def call(self, slot, mode, x, y, x_norm, cotangent, dtype):
        layer = slot.for_dtype(dtype)
        inputs = [fw.from_numpy(a, dtype) for a in (x, y, x_norm)]
        if cotangent is None:
            out, stats = layer(*inputs[:2], x_norm=inputs[2], training=mode == "train", return_stats=True)
            return driver_result(fw.to_numpy, out, stats)
        cot = fw.from_numpy(cotangent, loss_dtype(dtype))
        _, (out, stats), (gx, gy, gxn), grads = fw.value_and_grad(layer, _LOSSES[mode], inputs, [cot])
        by_name = dict(zip((v.name for v in layer.trainable_variables), grads))
        return driver_result(fw.to_numpy, out, stats, {"x": gx, "y": gy, "x_norm": gxn,
                                                       "alpha0": by_name["alpha0"], "beta": by_name["beta"]})
