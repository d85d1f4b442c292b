"""AION for Keras 3: ``AionResidual`` and ``AionBlock`` layers built on :mod:`aion_core`.

The same code runs on the TensorFlow, JAX and PyTorch backends.

>>> import numpy as np
>>> from aion_keras import AionResidual
>>> layer = AionResidual(alpha0=0.1, beta=0.05)
>>> out = layer(np.ones((8, 32), "float32"), np.ones((8, 32), "float32"), training=True)
>>> tuple(out.shape), int(layer.step_count.numpy())
((8, 32), 1)
"""

from aion_core import __version__ as __version__
from aion_keras.checkpoint import from_portable, to_portable
from aion_keras.residual import AionBlock, AionResidual, AionScale

__all__ = ["AionBlock", "AionResidual", "AionScale", "from_portable", "to_portable"]
