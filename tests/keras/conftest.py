"""Keras tests run on the process's Keras backend: the backend is fixed when Keras is imported.

``nox -s tests`` (and ``nox -s keras``) runs this folder once per backend, each in its own
process, with ``KERAS_BACKEND`` set; the main run leaves it out. By hand::

    KERAS_BACKEND=jax python -m pytest tests/keras

Some modules are for one backend (MirroredStrategy: TensorFlow; DataParallel: JAX) and skip on
the others. Their two devices are made here, before any test module is imported and before
the backend's runtime starts (it fixes its devices then): two logical CPUs under TensorFlow,
two host devices under JAX. The other tests run on the first, the default device. Where the
runtime has already started (this folder collected after tests that used the backend), the
device count stays as it is and the two modules' device-count tests say so.
"""

import os

DEVICES = 2


def _backend() -> str:
    # Before Keras is imported: JAX's device count must be set before its backend starts.
    backend = os.environ.get("KERAS_BACKEND")
    if backend is None:
        import keras

        backend = keras.backend.backend()
    return backend


BACKEND = _backend()
try:
    if BACKEND == "jax":
        import jax

        jax.config.update("jax_num_cpu_devices", DEVICES)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        _cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * DEVICES)
except RuntimeError:  # the runtime has started: see above
    pass
