"""Built-in drivers: name -> ("module:Class", environment it needs).

Each driver runs in its own process, since a Keras backend is fixed at import time.
"""

DRIVERS = {
    "numpy": ("conformance.drivers.numpy_reference:NumpyDriver", {}),
    "array-api-strict": ("conformance.drivers.array_api_strict_driver:ArrayApiStrictDriver", {}),
    "torch": ("conformance.drivers.torch_driver:TorchDriver", {}),
    "keras-tensorflow": ("conformance.drivers.keras_driver:KerasDriver", {"KERAS_BACKEND": "tensorflow"}),
    "keras-jax": ("conformance.drivers.keras_driver:KerasDriver", {"KERAS_BACKEND": "jax"}),
    "keras-torch": ("conformance.drivers.keras_driver:KerasDriver", {"KERAS_BACKEND": "torch"}),
    "flax-nnx": ("conformance.drivers.flax_driver:NnxDriver", {}),
    "flax-linen": ("conformance.drivers.flax_driver:LinenDriver", {}),
}
