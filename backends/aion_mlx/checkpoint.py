"""AION checkpoints in MLX: the portable layout (spec section 9), and loading that checks it.

MLX's own ``model.save_weights("model.npz")`` already writes the portable layout's keys
(``"blocks.0.aion.ratio_ema"``: a module's dotted path, then the entry) with every other
weight of the model beside them; ``model.load_weights`` checks the keys and shapes of what
it loads, not the values. :func:`load_weights` reads the same files and checks the AION
entries as spec section 9 asks (dtypes, ranges, a missing ``nonfinite_count`` read as 0,
aion-torch 1.0.2's ``alpha_cached`` ignored) before anything is written, so a load that
fails leaves the model as it was. :func:`to_portable` and :func:`from_portable` exchange
the AION entries alone with every other framework (``aion_core.portable.save_npz`` and
``load_npz`` write and read them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from aion_core import portable
from aion_mlx.layers import AionResidual, aion_layers


def _layers(model: nn.Module) -> list[tuple[str, AionResidual]]:
    """Every AionResidual in ``model`` with its key prefix (``"blocks.0.aion."``, ``""`` at the top)."""
    return [(f"{path}." if path else "", layer) for path, layer in aion_layers(model)]


def _numpy(value) -> np.ndarray:
    if isinstance(value, mx.array):
        # numpy has no bfloat16; every value is 0-d and float32 holds a bfloat16 exactly.
        return np.array(value.astype(mx.float32) if value.dtype == mx.bfloat16 else value)
    return np.asarray(value)


def _read(model: nn.Module, flat: Mapping, *, require: bool,
          exclusive: bool = False) -> tuple[dict[str, np.ndarray], set[str]]:
    """The AION entries of every layer of ``model`` found in ``flat``, checked and converted
    (``require``: a layer with no entry at all raises too; ``exclusive``: so does a key of no
    layer), and the keys they came from."""
    prefixes = [prefix for prefix, _ in _layers(model)]
    layers, used = portable.read_layers(flat, prefixes, _numpy, require=require, exclusive=exclusive)
    read = {prefix + name: value for prefix, entries in zip(prefixes, layers) if entries is not None
            for name, value in entries.items()}
    return read, used


def to_portable(model: nn.Module) -> dict[str, np.ndarray]:
    """Every AION parameter and state entry of ``model`` as the portable flat dict.

    Examples
    --------
    >>> import mlx.nn as nn
    >>> from aion_mlx import AionBlock
    >>> sorted(to_portable(nn.Sequential(AionBlock(nn.Linear(4, 4), 4))))[:2]
    ['layers.0.aion.alpha0', 'layers.0.aion.beta']
    """
    return {prefix + name: portable.entry(name, _numpy(layer[name]), key=prefix + name)
            for prefix, layer in _layers(model) for name in portable.ENTRY_DTYPES}


def from_portable(model: nn.Module, flat: Mapping) -> None:
    """Write a portable dict into ``model`` in place; every layer needs its entries and every
    entry a layer.

    The whole dict is checked and converted first, so a failed load leaves ``model`` as it was.

    Raises
    ------
    KeyError, TypeError, ValueError
        As :func:`aion_core.portable.read_layers` reads the checkpoint.
    """
    read, _ = _read(model, flat, require=True, exclusive=True)
    model.load_weights([(key, mx.array(value)) for key, value in read.items()], strict=False)


def load_weights(model: nn.Module, file_or_weights, strict: bool = True) -> nn.Module:
    """``model.load_weights(file_or_weights, strict)`` with the AION entries checked first.

    Parameters
    ----------
    model : mlx.nn.Module
    file_or_weights : str, pathlib.Path, or list of (str, mlx.core.array)
        A ``.npz`` or ``.safetensors`` file written by ``model.save_weights``, or its items.
    strict : bool
        As for MLX: every weight of the model present, none other. With ``strict=False`` an
        AION layer without entries keeps its values, one with some gets them checked.

    Returns
    -------
    model

    Raises
    ------
    KeyError, TypeError, ValueError
        As :func:`from_portable` (and MLX's ``ValueError`` for a missing, extra or
        misshapen weight); nothing is written then.
    """
    if isinstance(file_or_weights, (str, Path)):
        weights = dict(mx.load(str(file_or_weights)).items())
    else:
        weights = dict(file_or_weights)
    read, used = _read(model, weights, require=strict)
    for key in used - set(read):  # the ignored ones (alpha_cached)
        del weights[key]
    weights.update({key: mx.array(value) for key, value in read.items()})
    return model.load_weights(list(weights.items()), strict=strict)
