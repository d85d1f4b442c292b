"""``AionResidual`` and ``AionBlock`` as Keras 3 layers, on any Keras backend."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

import aion_core
from aion_core import adapter
from aion_keras import namespace as xp
from aion_keras.distribution import replica_mean_or_none

_STATE_NAMES = tuple(aion_core.STATE_SPEC)
if keras.backend.backend() == "torch":
    # Copies Inductor saves for the backward, and that a recomputation (keras.RematScope,
    # torch.utils.checkpoint) reads again: recomputed from the variables, they would be read
    # after the forward's in-place assign (wrong gradients, the state advanced twice).
    from aion_torch_ops import snapshot_state as _copy_state
else:
    def _copy_state(y, *values):
        return aion_core.AionState(*(ops.copy(v) for v in values))
#: A tensor of the Keras backend in use (``tf.Tensor``, ``jax.Array`` or ``torch.Tensor``).
Tensor = Any


@keras.saving.register_keras_serializable(package="aion")
class AionResidual(keras.layers.Layer):
    """AION as a Keras layer: ``out = x + alpha * y``, alpha shrinking as the smoothed energy ratio grows.

    Parameters
    ----------
    alpha0, beta, ema_gamma, epsilon, k_update
        As :class:`aion_core.AionConfig`, which validates them (the attribute ``config``);
        ``alpha0`` and ``beta`` are float32 weights.
    sync_ratio : bool
        Under a ``tf.distribute`` strategy: True (default) all-reduces the batch ratio to
        the mean over replicas, so training equals one device holding the whole batch;
        False keeps each replica's own batch ratio (no ``all_reduce``), as ``BatchNorm``
        against ``SyncBatchNorm``. Under JAX's ``keras.distribution.DataParallel`` (one
        jitted program over the global batch) the ratio is the global one either way.
    **kwargs
        Passed to ``keras.layers.Layer`` (``name``, ``dtype``, ...).

    Raises
    ------
    ValueError, TypeError
        From :class:`aion_core.AionConfig`, naming the bad argument.

    Notes
    -----
    Weights: ``alpha0``, ``beta`` (trainable) and ``ratio_ema`` (float32),
    ``step_count``, ``nonfinite_count`` (int32), non-trainable and assigned in
    training only. All five stay float32/int32 under mixed precision, and the
    energies are formed in float32 (float64 for float64 inputs). Under a
    ``tf.distribute`` strategy the batch ratio is the mean over replicas (with
    ``sync_ratio=True``); the state variables keep the first replica's value.

    Examples
    --------
    >>> import numpy as np
    >>> layer = AionResidual()
    >>> x, y = np.ones((2, 4), "float32"), np.full((2, 4), 2.0, "float32")
    >>> out = layer(x, y, training=True)
    >>> round(float(layer.ratio_ema.numpy()), 6), int(layer.step_count.numpy())
    (1.03, 1)
    """

    def __init__(self, alpha0: float = 0.1, beta: float = 0.05, ema_gamma: float = 0.99,
                 epsilon: float = 1e-8, k_update: int = 1, sync_ratio: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.config = aion_core.AionConfig(alpha0, beta, ema_gamma, epsilon, k_update, sync_ratio)
        # autocast=False: the parameters and the state stay float32 under mixed precision.
        self.alpha0 = self.add_weight(
            name="alpha0", shape=(), dtype="float32", autocast=False,
            initializer=keras.initializers.Constant(self.config.alpha0))
        self.beta = self.add_weight(
            name="beta", shape=(), dtype="float32", autocast=False,
            initializer=keras.initializers.Constant(self.config.beta))
        for name, (dtype, shape, value) in aion_core.STATE_SPEC.items():
            # With sync_ratio every replica computes the same new state (the ratio is
            # all-reduced); without, each its own: the first replica's value is kept, on
            # every replica, as rank 0's is under DDP's broadcast_buffers (spec section 7).
            variable = self.add_weight(
                name=name, shape=shape, dtype=dtype, autocast=False, trainable=False,
                initializer=keras.initializers.Constant(value), aggregation="only_first_replica")
            setattr(self, name, variable)
        # Every weight exists now and none depends on the input shape.
        self._build_at_init()

    def load_own_variables(self, store):
        """Keras' weight loading (``load_weights``, ``load_model``), every entry checked first.

        As spec section 9 reads a checkpoint (:func:`aion_core.portable.entry`): a fractional
        or out-of-range counter or a non-finite ratio is refused before any variable is written.
        """
        for i, variable in enumerate(self._trainable_variables + self._non_trainable_variables):
            if str(i) in store:
                aion_core.portable.entry(variable.name, np.asarray(store[str(i)]), key=variable.path)
        super().load_own_variables(store)

    def call(self, x: Tensor, y: Tensor, x_norm: Tensor | None = None, training: bool | None = None,
             return_stats: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """``x + alpha * y``; with ``return_stats`` also ``{"alpha", "ratio", "ratio_ema"}``.

        Parameters
        ----------
        x, y : tensor
            Residual input and branch output, same shape ``(..., D)``, floating dtype.
        x_norm : tensor, optional
            Normalised ``x`` whose energy is the ratio's denominator; ``x`` if None.
        training : bool, optional
            Training forwards update the ratio on update steps and assign the state.
        return_stats : bool
            Also return the stats dict of 0-d tensors.
        """
        alpha0, beta = self.alpha0.value, self.beta.value
        if training:
            # Copies: under PyTorch the assigns below write the variables in place, and the
            # backward may still need the values read here.
            state = _copy_state(y, *(getattr(self, n).value for n in _STATE_NAMES))
            # None with sync_ratio=False: each replica's own ratio, no all_reduce.
            replica_mean = adapter.replica_mean_for(self.config, replica_mean_or_none())
            # The k_update schedule depends on the step count, a tensor under jit: the device
            # picks the step, by Keras' cond except where it cannot serve (then both steps run and
            # one is selected): tf.distribute cannot all-reduce inside a tf.cond branch, and
            # Keras' cond on torch is a Python `if` on the tensor (a host sync every step, a
            # graph break under torch.compile).
            cond = ops.cond if replica_mean is None and keras.backend.backend() != "torch" else None
            out, new_state, stats = adapter.scheduled_train_step(
                x, y, x_norm, alpha0, beta, state, self.config, xp=xp, replica_mean=replica_mean,
                stop_gradient=ops.stop_gradient, cond=cond)
            # The core has validated the inputs before returning: a failed call assigns nothing.
            for name, value in zip(_STATE_NAMES, new_state):
                getattr(self, name).assign(value)
        else:
            state = aion_core.AionState(*(getattr(self, n).value for n in _STATE_NAMES))
            out, stats = aion_core.eval_step(x, y, alpha0, beta, state, x_norm=x_norm, xp=xp,
                                             stop_gradient=ops.stop_gradient)
        return (out, stats) if return_stats else out

    def compute_output_spec(self, x, y, x_norm=None, training=None, return_stats=False):
        # A functional model built from keras.Input checks here, not first in fit().
        aion_core.check_inputs(xp, x, y, x_norm)
        out = keras.KerasTensor(x.shape, dtype=xp.result_type(x.dtype, y.dtype))
        if not return_stats:
            return out
        return out, {k: keras.KerasTensor((), dtype="float32") for k in ("alpha", "ratio", "ratio_ema")}

    def get_config(self):
        return {**super().get_config(), **self.config.to_dict()}


@keras.saving.register_keras_serializable(package="aion")
class AionScale(AionResidual):
    """AION's scale alone, ``alpha * y``, for blocks that add the residual themselves.

    Same constructor, weights and training behaviour as :class:`AionResidual`; ``x_norm``
    (the branch's normalised input, the ratio's denominator) is required.

    Examples
    --------
    >>> import numpy as np
    >>> scale = AionScale()
    >>> y, x_norm = np.full((2, 4), 2.0, "float32"), np.ones((2, 4), "float32")
    >>> out = scale(y, x_norm, training=True)
    >>> round(float(out[0, 0]), 4), int(scale.step_count.numpy())
    (0.1902, 1)
    """

    def call(self, y: Tensor, x_norm: Tensor, training: bool | None = None,  # type: ignore[override]
             return_stats: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """``alpha * y``; with ``return_stats`` also ``{"alpha", "ratio", "ratio_ema"}``."""
        return super().call(None, y, x_norm, training=training, return_stats=return_stats)

    def compute_output_spec(self, y, x_norm, training=None, return_stats=False):  # type: ignore[override]
        aion_core.check_inputs(xp, None, y, x_norm)
        out = keras.KerasTensor(y.shape, dtype=y.dtype)
        if not return_stats:
            return out
        return out, {k: keras.KerasTensor((), dtype="float32") for k in ("alpha", "ratio", "ratio_ema")}


@keras.saving.register_keras_serializable(package="aion")
class AionBlock(keras.layers.Layer):
    """Pre-norm residual block ``x + alpha * layer(LayerNorm(x))``, ratio taken on ``LayerNorm(x)``.

    Parameters
    ----------
    layer : keras.layers.Layer
        The branch, mapping ``(..., dim)`` to ``(..., dim)``.
    dim : int
        Size of the feature (last) axis.
    alpha0, beta, ema_gamma, epsilon, k_update, sync_ratio
        As for :class:`AionResidual`.

    Notes
    -----
    Sub-layers ``norm`` (``LayerNormalization(epsilon=1e-5)``), ``layer`` and ``aion``,
    as in aion-torch's ``AionBlock``.
    """

    def __init__(self, layer: keras.layers.Layer, dim: int, alpha0: float = 0.1, beta: float = 0.05,
                 ema_gamma: float = 0.99, epsilon: float = 1e-8, k_update: int = 1, sync_ratio: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.dim = adapter.check_dim(dim)
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5, dtype=self.dtype_policy)
        self.layer = layer
        self.aion = AionResidual(alpha0, beta, ema_gamma, epsilon, k_update, sync_ratio, dtype=self.dtype_policy)

    def build(self, input_shape):
        error = adapter.block_shape_error(tuple(input_shape), self.dim)
        if error is not None:
            raise error
        self.norm.build(input_shape)
        if not self.layer.built:
            self.layer.build(input_shape)

    @property
    def config(self) -> aion_core.AionConfig:
        """The validated hyper-parameters of the block's :class:`AionResidual`."""
        return self.aion.config

    def call(self, x: Tensor, training: bool | None = None,
             return_stats: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        # training reaches self.layer through Keras' call context (not every layer takes it).
        return adapter.block_forward(xp, x, self.dim, self.norm, self.layer, self.aion, training=training,
                                     return_stats=return_stats)

    def compute_output_spec(self, x, training=None, return_stats=False):
        return self.aion.compute_output_spec(x, x, x, return_stats=return_stats)

    def get_config(self):
        residual = self.aion.config.to_dict()
        return {**super().get_config(), "layer": keras.saving.serialize_keras_object(self.layer),
                "dim": self.dim, **residual}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)
