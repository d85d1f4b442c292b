"""Keras arrays on the backend this process was started with: numpy in and out, the device, versions.

The backend is fixed when Keras is imported (``KERAS_BACKEND``), so one process is one of
``keras-tensorflow``, ``keras-jax`` and ``keras-torch``; :data:`BACKEND` names it.
"""

from __future__ import annotations

import importlib

import keras
import numpy as np
from keras import ops

#: The Keras backend of this process: ``"tensorflow"``, ``"jax"`` or ``"torch"``.
BACKEND = keras.backend.backend()


def versions() -> dict[str, str]:
    """Keras' version and its backend framework's."""
    framework = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[BACKEND]
    return {"keras": keras.__version__, framework: importlib.import_module(framework).__version__}


def device() -> str:
    """The device kind the backend places arrays on: ``cpu``, ``gpu`` (TensorFlow, JAX) or ``cuda`` (torch).

    Each backend says it in its own words, and the report shows them as they are: Keras
    itself picks the device (the first accelerator its backend sees), not the harness.
    """
    if BACKEND == "jax":
        import jax

        return jax.devices()[0].platform
    if BACKEND == "torch":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def from_numpy(a, dtype: str):
    """A numpy array (or None) as a backend tensor of ``dtype`` ("float32", "int32", ...)."""
    return None if a is None else ops.convert_to_tensor(np.asarray(a), dtype=dtype)


def to_numpy(t) -> np.ndarray:
    """Any backend tensor or Keras variable as a float64 numpy array (bfloat16 included)."""
    t = getattr(t, "value", t)
    if keras.backend.standardize_dtype(t.dtype) == "bfloat16":
        t = ops.cast(t, "float32")
    return np.asarray(ops.convert_to_numpy(t), dtype=np.float64)


def numpy_of(variable) -> np.ndarray:
    """A Keras variable's value as a numpy array in its own dtype (a weight read back)."""
    return np.asarray(ops.convert_to_numpy(variable.value))
