"""Drivers for the Flax adapters: ``NnxDriver`` ("flax-nnx") and ``LinenDriver`` ("flax-linen").

Both run each call under ``jax.jit`` and take gradients with ``jax.vjp`` (the gradient of
``sum(out * cotangent)`` is the VJP with that cotangent). float64 cases need 64-bit jax,
which the drivers switch on for their process when built.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
from flax import nnx

import aion_flax
import aion_flax.linen as aion_linen
from conformance.driver import as_f64

_DTYPES = {"float64": jnp.float64, "float32": jnp.float32, "float16": jnp.float16,
           "bfloat16": jnp.bfloat16, "int32": jnp.int32}
_STATE_DTYPES = {"ratio_ema": jnp.float32, "step_count": jnp.int32, "nonfinite_count": jnp.int32}


def _inputs(dtype, *arrays):
    return [None if a is None else jnp.asarray(a, _DTYPES[dtype]) for a in arrays]


def _result(out, stats, grads):
    result = {"out": as_f64(out), "stats": {k: float(v) for k, v in stats.items()}}
    if grads is not None:
        result["grads"] = {k: as_f64(v) for k, v in grads.items() if v is not None}
    return result


def _run(forward, params, x, y, x_norm, cotangent):
    """``forward(params, x, y, x_norm) -> (out, aux)`` jitted, with its VJP when asked."""
    if cotangent is None:
        out, aux = jax.jit(forward)(params, x, y, x_norm)
        return out, aux, None

    @jax.jit
    def with_grads(params, x, y, x_norm, cotangent):
        out, vjp, aux = jax.vjp(forward, params, x, y, x_norm, has_aux=True)
        g_params, g_x, g_y, g_xn = vjp(cotangent.astype(out.dtype))
        return out, aux, {"x": g_x, "y": g_y, "x_norm": g_xn, **g_params}

    return with_grads(params, x, y, x_norm, jnp.asarray(cotangent))


class _FlaxDriver:
    dtypes = ("float64", "float32", "float16", "bfloat16")

    def __init__(self):
        jax.config.update("jax_enable_x64", True)

    def versions(self):
        return {"jax": jax.__version__, "flax": flax.__version__}


class NnxDriver(_FlaxDriver):
    """``aion_flax.AionResidual`` (flax.nnx)."""

    name = "flax-nnx"

    def make(self, config):
        return aion_flax.AionResidual(**config)

    def set_params(self, layer, alpha0, beta):
        layer.alpha0[...] = jnp.asarray(alpha0, jnp.float32)
        layer.beta[...] = jnp.asarray(beta, jnp.float32)

    def set_state(self, layer, state):
        for name, dtype in _STATE_DTYPES.items():
            getattr(layer, name)[...] = jnp.asarray(state[name], dtype)

    def get_state(self, layer):
        return {"ratio_ema": float(layer.ratio_ema[...]), "step_count": int(layer.step_count[...]),
                "nonfinite_count": int(layer.nonfinite_count[...])}

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        x, y, x_norm = _inputs(dtype, x, y, x_norm)
        graphdef, params, stats = nnx.split(layer, nnx.Param, aion_flax.AionStat)

        def forward(params, x, y, x_norm):
            model = nnx.merge(graphdef, params, stats, copy=True)
            out, step_stats = model(x, y, x_norm, deterministic=mode == "eval", return_stats=True)
            return out, (step_stats, nnx.state(model, aion_flax.AionStat))

        out, (step_stats, new_stats), grads = _run(forward, params, x, y, x_norm, cotangent)
        nnx.update(layer, new_stats)
        return _result(out, step_stats, grads)


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
            name: jnp.asarray(state[name], dtype) for name, dtype in _STATE_DTYPES.items()}}

    def get_state(self, layer):
        stats = layer[1][aion_linen.STATS_COLLECTION]
        return {"ratio_ema": float(stats["ratio_ema"]), "step_count": int(stats["step_count"]),
                "nonfinite_count": int(stats["nonfinite_count"])}

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        module, variables = layer
        x, y, x_norm = _inputs(dtype, x, y, x_norm)
        stats = variables[aion_linen.STATS_COLLECTION]
        mutable = [aion_linen.STATS_COLLECTION] if mode == "train" else False

        def forward(params, x, y, x_norm):
            result = module.apply({"params": params, aion_linen.STATS_COLLECTION: stats}, x, y,
                                  x_norm, deterministic=mode == "eval", return_stats=True,
                                  mutable=mutable)
            (out, step_stats), updates = result if mutable else (result, {})
            return out, (step_stats, updates.get(aion_linen.STATS_COLLECTION, stats))

        out, (step_stats, new_stats), grads = _run(forward, variables["params"], x, y, x_norm,
                                                   cotangent)
        layer[1] = {**variables, aion_linen.STATS_COLLECTION: new_stats}
        return _result(out, step_stats, grads)
