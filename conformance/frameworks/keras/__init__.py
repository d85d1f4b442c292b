"""The Keras kit: what the conformance harness needs of Keras 3, in one folder.

One kit serves the three Keras backends; which one is fixed when Keras is imported
(``KERAS_BACKEND``, set by the registry for ``keras-tensorflow``, ``keras-jax`` and
``keras-torch``). :mod:`.arrays` (numpy in and out, the device), :mod:`.autodiff`
(value-and-grad on each backend's own autodiff), :mod:`.optim` (the shared optimizers as
Keras' own), :mod:`.blocks` (the problems' networks), :mod:`.train` (a training step) and
:mod:`.driver` (the conformance driver).
"""

from aion_conformance.frameworks.keras.arrays import device, from_numpy, to_numpy, versions
from aion_conformance.frameworks.keras.blocks import EXTRA_RESIDUALS, build, read
from aion_conformance.frameworks.keras.train import evaluate, trainer

__all__ = ["EXTRA_RESIDUALS", "build", "device", "evaluate", "from_numpy", "read", "to_numpy", "trainer", "versions"]
