"""The portable AION checkpoint: a flat dict of 0-d numpy arrays, saved as ``.npz``.

The layout is :mod:`aion_core.portable`'s: keys ``"<path>.<name>"`` where ``<path>`` is
the dotted location of an ``AionResidual`` in the model (``"blocks.0.aion"``) and
``<name>`` one of :data:`aion_core.portable.ENTRY_DTYPES`. A stacked (``nnx.vmap`` /
``nn.scan``) layer stores one entry per layer: ``"<path>.<i>.<name>"``. Any framework
can read and write it with numpy alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

import aion_core as core
from aion_core import portable
from aion_flax.linen import STATS_COLLECTION
from aion_flax.nnx import AionResidual

# The .npz files are the portable layout's, read and written with numpy alone.
load_npz, save_npz = portable.load_npz, portable.save_npz

__all__ = ["linen_from_portable", "load_npz", "nnx_from_portable", "save_npz", "to_portable"]


def _explode(prefix: tuple, name: str, value, out: dict) -> None:
    # One 0-d entry per layer of a stacked array; a plain layer has a 0-d value already.
    value = np.asarray(value).astype(portable.ENTRY_DTYPES[name])
    for index in np.ndindex(value.shape):
        out[".".join(str(p) for p in (*prefix, *index, name))] = np.asarray(value[index])


def _read_layer(path: tuple, shapes: Mapping[str, tuple], flat: Mapping, used: set) -> dict[str, jnp.ndarray]:
    """The entries of the AionResidual at ``path`` (of a stacked one: one layer per index),
    read by :func:`aion_core.portable.layer_entries` and converted; nothing is written here.

    ``shapes`` maps each entry name to the shape of the layer's variable.
    """
    shape = shapes["ratio_ema"]
    if any(s != shape for s in shapes.values()):
        raise ValueError(f"AionResidual at {'.'.join(map(str, path))!r} has entries of different "
                         f"shapes {dict(shapes)}")
    values = {name: np.empty(shape, dtype) for name, dtype in portable.ENTRY_DTYPES.items()}
    for index in np.ndindex(shape):
        prefix = "".join(f"{p}." for p in (*path, *index))
        present = {name: flat[prefix + name] for name in (*portable.ENTRY_DTYPES, *portable.IGNORED_ENTRIES)
                   if prefix + name in flat}
        used.update(prefix + name for name in present)
        # A default fills a missing nonfinite_count, alpha_cached is dropped, and anything
        # missing, not 0-d, complex or not numeric raises, naming the full key.
        for name, value in portable.layer_entries(present, prefix).items():
            values[name][index] = value
    return {name: jnp.asarray(value) for name, value in values.items()}


def _check_all_used(flat: Mapping, used: set) -> None:
    unused = sorted(set(flat) - used)
    if unused:
        raise ValueError(f"checkpoint entries match no AION layer: {unused[:5]}")


def _nnx_layers(model):
    return [(path, node) for path, node in nnx.iter_graph(model) if isinstance(node, AionResidual)]


def _linen_layers(tree: Mapping, prefix: tuple = ()):
    # A dict holding every state field is one AionResidual's slot in "aion_stats".
    if all(name in tree for name in core.STATE_SPEC):
        yield prefix
        return
    for key, sub in tree.items():
        if isinstance(sub, Mapping):
            yield from _linen_layers(sub, (*prefix, key))


def _at(tree: Mapping, path: tuple) -> Mapping:
    for key in path:
        tree = tree[key]
    return tree


def to_portable(model_or_variables) -> dict[str, np.ndarray]:
    """Every AION parameter and state entry of a model as the portable flat dict.

    Parameters
    ----------
    model_or_variables : nnx.Module or Mapping
        An NNX model, or Linen variables with ``"params"`` and ``"aion_stats"``.

    Returns
    -------
    dict of str to 0-d numpy array

    Examples
    --------
    >>> from aion_flax import AionResidual
    >>> sorted(to_portable(AionResidual()).items())[:2]
    [('alpha0', array(0.1, dtype=float32)), ('beta', array(0.05, dtype=float32))]
    """
    flat: dict[str, np.ndarray] = {}
    if isinstance(model_or_variables, nnx.Module):
        for path, layer in _nnx_layers(model_or_variables):
            for name in portable.ENTRY_DTYPES:
                _explode(path, name, getattr(layer, name)[...], flat)
        return flat
    stats, params = model_or_variables[STATS_COLLECTION], model_or_variables["params"]
    for path in _linen_layers(stats):
        for name in portable.ENTRY_DTYPES:
            _explode(path, name, _at(params if name in portable.PARAM_NAMES else stats, path)[name], flat)
    return flat


def nnx_from_portable(model, flat: Mapping) -> None:
    """Write a portable dict into an NNX model in place (every entry must be used).

    The whole dict is validated and converted first; ``model`` is written only when all of
    it is valid, so a failed load leaves ``model`` as it was. As spec section 9 asks, a
    missing ``nonfinite_count`` loads as 0 and ``alpha_cached`` (aion-torch 1.0.2) is ignored.

    Raises
    ------
    KeyError
        An AION layer of ``model`` has no entry in ``flat``.
    TypeError
        An entry is complex or not numeric.
    ValueError
        An entry is not 0-d, or matches no layer of ``model``.
    """
    used: set = set()
    reads = []
    for path, layer in _nnx_layers(model):
        shapes = {name: tuple(getattr(layer, name)[...].shape) for name in portable.ENTRY_DTYPES}
        reads.append((layer, _read_layer(path, shapes, flat, used)))
    _check_all_used(flat, used)
    for layer, values in reads:  # all valid: now write
        for name, value in values.items():
            getattr(layer, name)[...] = value


def linen_from_portable(variables: Mapping, flat: Mapping) -> dict:
    """Linen ``variables`` with the AION entries replaced from a portable dict (a new dict).

    ``variables`` itself is never changed; entries are read as by :func:`nnx_from_portable`.

    Raises
    ------
    KeyError, TypeError, ValueError
        As :func:`nnx_from_portable`.
    """
    stats, params = variables[STATS_COLLECTION], variables["params"]
    used: set = set()
    reads = []
    for path in list(_linen_layers(stats)):
        shapes = {name: tuple(np.shape(_at(params if name in portable.PARAM_NAMES else stats, path)[name]))
                  for name in portable.ENTRY_DTYPES}
        reads.append((path, _read_layer(path, shapes, flat, used)))
    _check_all_used(flat, used)
    new = {col: _copy(tree) for col, tree in variables.items()}
    for path, values in reads:
        for name, value in values.items():
            _at(new["params"] if name in portable.PARAM_NAMES else new[STATS_COLLECTION], path)[name] = value
    return new


def _copy(tree):
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree
