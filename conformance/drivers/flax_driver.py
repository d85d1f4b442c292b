"""Drivers for the Flax adapters: ``NnxDriver`` ("flax-nnx") and ``LinenDriver`` ("flax-linen").

Both run each call under ``jax.jit``. float64 cases need 64-bit jax, which the drivers
switch on for their process when built.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import aion_core as core
import aion_flax
import aion_flax.linen as aion_linen
from aion_conformance.drivers.base import BuiltinDriver, driver_result, loss_dtype
from aion_conformance.frameworks import jax as fw


def _run(forward, params, inputs, cotangent, dtype):
    """``forward(params, x, y, x_norm) -> (out, aux)`` jitted, with gradients when asked."""
    if cotangent is None:
        out, aux = jax.jit(forward)(params, *inputs)
        return out, aux, None

    def loss(params, x, y, x_norm, cotangent):
        out, aux = forward(params, x, y, x_norm)
        return jnp.sum(out.astype(cotangent.dtype) * cotangent), (out, aux)

    cot = fw.from_numpy(cotangent, loss_dtype(dtype))
    _, (out, aux), g_params, (gx, gy, gxn) = fw.value_and_grad(loss)(params, inputs, [cot])
    return out, aux, {"x": gx, "y": gy, "x_norm": gxn, "alpha0": g_params["alpha0"], "beta": g_params["beta"]}


class _FlaxDriver(BuiltinDriver):
    def __init__(self):
        jax.config.update("jax_enable_x64", True)

    def versions(self):
        return fw.versions()


class NnxDriver(_FlaxDriver):
    """``aion_flax.AionResidual`` (flax.nnx)."""

    name = "flax-nnx"

    def make(self, config):
        return aion_flax.AionResidual(**config)

    def set_params(self, layer, alpha0, beta):
        layer.alpha0[...] = jnp.asarray(alpha0, jnp.float32)
        layer.beta[...] = jnp.asarray(beta, jnp.float32)

    def set_state(self, layer, state):
        for name, value in core.portable.state_entries(state).items():
            getattr(layer, name)[...] = jnp.asarray(value)

    def get_state(self, layer):
        return {name: getattr(layer, name)[...].item() for name in core.STATE_SPEC}

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        inputs = [fw.from_numpy(a, dtype) for a in (x, y, x_norm)]
        graphdef, params, stats = nnx.split(layer, nnx.Param, aion_flax.AionStat)

        def forward(params, x, y, x_norm):
            model = nnx.merge(graphdef, params, stats, copy=True)
            out, step_stats = model(x, y, x_norm, deterministic=mode == "eval", return_stats=True)
            return out, (step_stats, nnx.state(model, aion_flax.AionStat))

        out, (step_stats, new_stats), grads = _run(forward, params, inputs, cotangent, dtype)
        nnx.update(layer, new_stats)
        return driver_result(fw.to_numpy, out, step_stats, grads)


class LinenDriver(_FlaxDriver):
    """``aion_flax.linen.AionResidual`` (flax.linen); the layer is ``[module, variables]``."""

    name = "flax-linen"

    def make(self, config):
        module = aion_linen.AionResidual(**config)
        probe = jnp.ones((1, 1), jnp.float32)
        return [module, module.init(jax.random.key(0), probe, probe, deterministic=True)]

    def set_params(self, layer, alpha0, beta):
        layer[1] = {**layer[1], "params": {"alpha0": jnp.asarray(alpha0, jnp.float32),
                                           "beta": jnp.asarray(beta, jnp.float32)}}

    def set_state(self, layer, state):
        layer[1] = {**layer[1], aion_linen.STATS_COLLECTION: {
            name: jnp.asarray(value) for name, value in core.portable.state_entries(state).items()}}

    def get_state(self, layer):
        stats = layer[1][aion_linen.STATS_COLLECTION]
        return {name: stats[name].item() for name in core.STATE_SPEC}

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        module, variables = layer
        inputs = [fw.from_numpy(a, dtype) for a in (x, y, x_norm)]
        stats = variables[aion_linen.STATS_COLLECTION]
        mutable = [aion_linen.STATS_COLLECTION] if mode == "train" else False

        def forward(params, x, y, x_norm):
            result = module.apply({"params": params, aion_linen.STATS_COLLECTION: stats}, x, y,
                                  x_norm, deterministic=mode == "eval", return_stats=True,
                                  mutable=mutable)
            (out, step_stats), updates = result if mutable else (result, {})
            return out, (step_stats, updates.get(aion_linen.STATS_COLLECTION, stats))

        out, (step_stats, new_stats), grads = _run(forward, variables["params"], inputs, cotangent, dtype)
        layer[1] = {**variables, aion_linen.STATS_COLLECTION: new_stats}
        return driver_result(fw.to_numpy, out, step_stats, grads)
