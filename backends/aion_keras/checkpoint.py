"""AION checkpoints in Keras: the portable layout (spec section 9), exchanged with every framework.

Keras' own ``save``/``load_weights`` keep working (``AionResidual.load_own_variables`` checks
each entry). :func:`to_portable` and :func:`from_portable` exchange the AION entries alone with
the other frameworks (``aion_core.portable.save_npz`` and ``load_npz`` write and read them),
under each layer's path: the attribute names from the model down (``"blocks.0.aion."``, as
torch's ``named_modules`` names the same model), a layer's name inside a functional or
Sequential model (``"res0."``), nothing for the layer itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np

from aion_core import portable
from aion_keras.residual import AionResidual

__all__ = ["aion_layers", "from_portable", "to_portable"]


def _join(path: str, name) -> str:
    return f"{path}.{name}" if path else str(name)


def aion_layers(model: keras.layers.Layer) -> list[tuple[str, AionResidual]]:
    """Every AionResidual (and AionScale) in ``model`` with its path (``""`` for ``model`` itself).

    Examples
    --------
    >>> from aion_keras import AionBlock
    >>> [path for path, _ in aion_layers(AionBlock(keras.layers.Dense(4), 4))]
    ['aion']
    """
    found: list[tuple[str, AionResidual]] = []
    seen: set[int] = set()

    def walk(obj, path: str) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, AionResidual):
            found.append((path, obj))
            return
        if isinstance(obj, (keras.Sequential, keras.Function)):
            for layer in obj.layers:  # functional and Sequential models: unique names, no attributes
                walk(layer, _join(path, layer.name))
            return
        # On the torch backend a layer is a torch Module, which keeps its sub-layers in _modules.
        for name, value in {**vars(obj), **getattr(obj, "_modules", {})}.items():
            if name.startswith("_"):
                continue
            items = (enumerate(value) if isinstance(value, (list, tuple))
                     else value.items() if isinstance(value, dict) else [(None, value)])
            for key, item in items:
                if isinstance(item, keras.layers.Layer):
                    walk(item, _join(path, name if key is None else f"{name}.{key}"))

    walk(model, "")
    return found


def _prefix(path: str) -> str:
    return f"{path}." if path else ""


def to_portable(model: keras.layers.Layer) -> dict[str, np.ndarray]:
    """Every AION parameter and state entry of ``model`` as the portable flat dict.

    Examples
    --------
    >>> from aion_keras import AionBlock
    >>> sorted(to_portable(AionBlock(keras.layers.Dense(4), 4)))[:2]
    ['aion.alpha0', 'aion.beta']
    """
    return {_prefix(path) + name: portable.entry(name, keras.ops.convert_to_numpy(getattr(layer, name).value),
                                                 key=_prefix(path) + name)
            for path, layer in aion_layers(model) for name in portable.ENTRY_DTYPES}


def from_portable(model: keras.layers.Layer, flat: Mapping) -> None:
    """Write a portable dict into ``model`` in place; every AION layer needs its entries and
    every entry a layer. The whole dict is checked and converted first, so a failed load
    leaves ``model`` as it was.

    Raises
    ------
    KeyError, TypeError, ValueError
        As :func:`aion_core.portable.read_layers` reads the checkpoint.

    Examples
    --------
    >>> layer = AionResidual()
    >>> from_portable(layer, {"alpha0": 0.2, "beta": 0.05, "ratio_ema": 3.0, "step_count": 7})
    >>> int(layer.step_count.numpy()), float(layer.ratio_ema.numpy())
    (7, 3.0)
    """
    layers = aion_layers(model)
    entries, _ = portable.read_layers(flat, [_prefix(path) for path, _ in layers])
    for (_, layer), values in zip(layers, entries):
        for name, value in values.items():
            getattr(layer, name).assign(value)
