"""JAX arrays for both Flax kits (NNX and Linen): numpy in and out, the device, versions.

JAX places arrays on its first device itself (an accelerator when jaxlib has one), so
the kits report that device's platform rather than choosing one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def versions() -> dict[str, str]:
    """jax's, flax's and optax's versions, and the accelerator's kind when there is one."""
    import flax
    import optax

    first = jax.devices()[0]
    accelerator = {first.platform: first.device_kind} if first.platform != "cpu" else {}
    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__, **accelerator}


def device() -> str:
    """The platform of JAX's default device: ``cpu``, ``gpu`` or ``tpu``."""
    return jax.devices()[0].platform


def from_numpy(a, dtype: str):
    """A numpy array (or None) as a jax array of ``dtype`` ("float32", "int32", ...)."""
    return None if a is None else jnp.asarray(np.asarray(a), getattr(jnp, dtype))


def to_numpy(t) -> np.ndarray:
    """Any jax array (or Flax variable) as a float64 numpy array (bfloat16 included)."""
    return np.asarray(np.asarray(t), dtype=np.float64)
