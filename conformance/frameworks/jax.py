"""JAX harness adapter (Flax NNX and Linen): arrays to and from numpy, value-and-grad, SGD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def versions() -> dict[str, str]:
    import flax

    return {"jax": jax.__version__, "flax": flax.__version__}


def from_numpy(a, dtype: str):
    """A numpy array (or None) as a jax array of ``dtype``."""
    return None if a is None else jnp.asarray(np.asarray(a), getattr(jnp, dtype))


def to_numpy(t) -> np.ndarray:
    """Any jax array (or Flax variable) as a float64 numpy array (bfloat16 included)."""
    return np.asarray(np.asarray(t), dtype=np.float64)


def value_and_grad(loss_fn):
    """``loss_fn(params, *inputs, *consts) -> (loss, aux)`` as one jitted program.

    Returns ``program(params, inputs, consts) -> (loss, aux, param_grads, input_grads)``,
    differentiating with respect to ``params`` (a pytree) and ``inputs`` (a list; None
    stays None). Build it once and call it every step: each build traces anew.
    """
    def objective(params, inputs, consts):
        return loss_fn(params, *inputs, *consts)

    grad = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)

    @jax.jit
    def program(params, inputs, consts=()):
        (loss, aux), (g_params, g_inputs) = grad(params, list(inputs), list(consts))
        return loss, aux, g_params, g_inputs

    return program


def sgd(params, grads, lr: float):
    """``p - lr * g`` over a pytree (a new pytree)."""
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)
