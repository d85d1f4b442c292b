"""Built-in drivers: name -> ("module:Class", environment it needs).

Each driver runs in its own process, since a Keras backend is fixed at import time.
"""

DRIVERS = {
    "numpy": ("conformance.drivers.numpy_reference:NumpyDriver", {}),
    "torch": ("conformance.drivers.torch_driver:TorchDriver", {}),
}
