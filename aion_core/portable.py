"""The portable checkpoint layout (spec section 9), written once with numpy alone.

One AION layer is five 0-d entries, :data:`ENTRY_DTYPES`: the parameters ``alpha0`` and
``beta`` and the :data:`~aion_core.STATE_SPEC` fields. A network stores them under each
layer's dotted path (``"blocks.0.aion.ratio_ema"``); :func:`flatten` and :func:`unflatten`
convert between that flat dict and ``{path: {name: value}}``. Any framework reads and
writes the ``.npz`` files of :func:`save_npz` with numpy alone.

>>> import numpy as np
>>> flat = flatten({"blocks.0.aion": {"alpha0": 0.1, "beta": 0.05, "ratio_ema": 1.5,
...                                   "step_count": 3, "nonfinite_count": 0}})
>>> flat["blocks.0.aion.step_count"]
array(3, dtype=int32)
>>> state_from_dict(unflatten(flat)["blocks.0.aion"], np)
AionState(ratio_ema=array(1.5, dtype=float32), step_count=array(3, dtype=int32), nonfinite_count=array(0, dtype=int32))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from aion_core.state import STATE_SPEC, AionState

#: The trainable parameters of one layer, float32 in every framework.
PARAM_NAMES = ("alpha0", "beta")
#: Entry name -> dtype name of one layer's portable entries.
ENTRY_DTYPES = {**dict.fromkeys(PARAM_NAMES, "float32"),
                **{name: spec[0] for name, spec in STATE_SPEC.items()}}
_INT32_MAX = 2**31 - 1
#: Entries that older checkpoints hold and loaders ignore (aion-torch 1.0.2's derived alpha).
IGNORED_ENTRIES = ("alpha_cached",)
#: Entries a loader fills in when absent (aion-torch 1.0.2 had no ``nonfinite_count``).
DEFAULTS = {"nonfinite_count": STATE_SPEC["nonfinite_count"][2]}


def entry(name: str, value, key: str | None = None) -> np.ndarray:
    """``value`` as the 0-d numpy array of entry ``name`` in its portable dtype.

    ``value`` must be a real number: a bool, an integer or a float of any width (it must
    cast to float64 without loss of kind), which the cast keeps: a counter (``step_count``,
    ``nonfinite_count``) an integer in ``[0, 2**31 - 1]`` (``3.0`` is one, ``3.7`` is
    not); ``alpha0``, ``beta`` and ``ratio_ema`` finite in float32, ``ratio_ema`` also
    ``>= 0`` (an energy ratio; non-finite data never reaches the state). The messages name
    ``key``, the full key, if given.

    Raises
    ------
    TypeError
        ``value`` is complex or not numeric (a string, an object, a date).
    ValueError
        ``value`` is not 0-d, or the cast would change it, or it is out of range.

    Examples
    --------
    >>> entry("step_count", 3.0)
    array(3, dtype=int32)
    >>> entry("ratio_ema", 1 + 2j, key="blocks.0.aion.ratio_ema")
    Traceback (most recent call last):
    ...
    TypeError: checkpoint entry 'blocks.0.aion.ratio_ema' must be a real number, got complex128
    >>> entry("beta", [0.1, 0.2])
    Traceback (most recent call last):
    ...
    ValueError: checkpoint entry 'beta' must be 0-d, got shape (2,)
    >>> entry("step_count", 3.7)
    Traceback (most recent call last):
    ...
    ValueError: checkpoint entry 'step_count' must be an integer in [0, 2147483647], got 3.7
    """
    label = repr(key or name)
    array = np.asarray(value)
    if not np.can_cast(array.dtype, np.float64):  # complex, str, object, datetime, raw bytes
        raise TypeError(f"checkpoint entry {label} must be a real number, got {array.dtype}")
    if array.shape != ():
        raise ValueError(f"checkpoint entry {label} must be 0-d, got shape {array.shape}")
    dtype = ENTRY_DTYPES[name]
    number = array.item()
    if dtype == "int32":
        if not (math.isfinite(number) and float(number).is_integer() and 0 <= number <= _INT32_MAX):
            raise ValueError(f"checkpoint entry {label} must be an integer in [0, {_INT32_MAX}], got {number}")
        return np.asarray(int(number), dtype)
    with np.errstate(over="ignore"):
        cast = array.astype(dtype)
    if not np.isfinite(cast) or (name == "ratio_ema" and cast < 0):
        bound = "finite and >= 0" if name == "ratio_ema" else "finite"
        raise ValueError(f"checkpoint entry {label} must be {bound} in float32, got {number}")
    return cast


def layer_entries(entries: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """One layer's entries as loaders must read them: all five, 0-d, in portable dtypes.

    Ignored entries are dropped and defaults filled in; an unknown or missing entry raises.
    Every entry is validated and converted before this returns, so a loader that writes
    only what this returned writes all of a layer or nothing. ``prefix`` (the layer's
    path and a dot, ``"blocks.0.aion."``) is put before the names in the messages.

    Raises
    ------
    KeyError
        A required entry is missing.
    TypeError
        An entry is complex or not numeric.
    ValueError
        An entry is unknown or not 0-d.

    Examples
    --------
    >>> sorted(layer_entries({"alpha0": 0.1, "beta": 0.05, "ratio_ema": 2.0, "step_count": 4,
    ...                       "alpha_cached": 0.09}).items())[-1]  # aion-torch 1.0.2's layout
    ('step_count', array(4, dtype=int32))
    >>> layer_entries({"alpha0": 0.1, "ratio_ema": 2.0, "step_count": 4}, prefix="aion.")
    Traceback (most recent call last):
    ...
    KeyError: "checkpoint has no entry 'aion.beta'"
    """
    unknown = sorted(prefix + k for k in set(entries) - set(ENTRY_DTYPES) - set(IGNORED_ENTRIES))
    if unknown:
        raise ValueError(f"unknown checkpoint entries {unknown}")
    merged = {**DEFAULTS, **{k: v for k, v in entries.items() if k not in IGNORED_ENTRIES}}
    missing = [name for name in ENTRY_DTYPES if name not in merged]
    if missing:
        raise KeyError(f"checkpoint has no entry {prefix + missing[0]!r}")
    return {name: entry(name, merged[name], key=prefix + name) for name in ENTRY_DTYPES}


def read_layers(flat: Mapping, prefixes: Iterable[str], convert: Callable = np.asarray, *,
                require: bool = True, exclusive: bool = True) -> tuple[list[dict[str, np.ndarray] | None], set[str]]:
    """Each layer's entries in a flat checkpoint, read by :func:`layer_entries`, before any is written.

    ``prefixes``: each layer's key prefix (``"blocks.0.aion."``, ``""`` for a lone layer);
    ``convert`` turns a framework's value into a numpy array first. Returns the layers'
    entries in the order of ``prefixes`` (None for a layer with no entry at all, when not
    ``require``) and the keys read. ``exclusive``: every key of ``flat`` must belong to a
    layer (a checkpoint of AION entries alone).

    Raises
    ------
    KeyError, TypeError, ValueError
        As :func:`layer_entries` (naming the full key); ValueError also for keys of no layer.

    Examples
    --------
    >>> layers, used = read_layers({"a.alpha0": 0.2, "a.beta": 0.1, "a.ratio_ema": 1.0,
    ...                             "a.step_count": 2}, ["a."])
    >>> int(layers[0]["step_count"]), sorted(used)[0]
    (2, 'a.alpha0')
    >>> read_layers({"a.alpha0": 0.2, "b.beta": 0.1}, ["a."], require=False)
    Traceback (most recent call last):
    ...
    KeyError: "checkpoint has no entry 'a.beta'"
    """
    layers: list[dict[str, np.ndarray] | None] = []
    used: set[str] = set()
    for prefix in prefixes:
        present = {name: convert(flat[prefix + name])
                   for name in (*ENTRY_DTYPES, *IGNORED_ENTRIES) if prefix + name in flat}
        if not present and not require:
            layers.append(None)
            continue
        used.update(prefix + name for name in present)
        layers.append(layer_entries(present, prefix))
    unused = sorted(set(flat) - used)
    if exclusive and unused:
        raise ValueError(f"checkpoint entries match no AION layer: {unused[:5]}")
    return layers, used


def state_to_dict(state: AionState) -> dict[str, np.ndarray]:
    """An :class:`~aion_core.AionState` as 0-d numpy arrays in the portable dtypes."""
    return {name: entry(name, np.asarray(value)) for name, value in zip(AionState._fields, state)}


def state_entries(entries: Mapping) -> dict[str, np.ndarray]:
    """The state fields of a layer's ``entries``, read as :func:`layer_entries` reads them.

    Parameters among ``entries`` are checked too but not returned.
    """
    full = layer_entries({**dict.fromkeys(PARAM_NAMES, 0.0), **entries})
    return {name: full[name] for name in AionState._fields}


def state_from_dict(entries: Mapping, xp, device=None) -> AionState:
    """The :class:`~aion_core.AionState` held by a layer's ``entries`` (parameters ignored)."""
    kw = {} if device is None else {"device": device}
    return AionState(*(xp.asarray(value, dtype=getattr(xp, ENTRY_DTYPES[name]), **kw)
                       for name, value in state_entries(entries).items()))


def flatten(layers: Mapping[str, Mapping]) -> dict[str, np.ndarray]:
    """``{path: {name: value}}`` to the flat ``{"path.name": array}`` layout.

    AION entries are cast to their portable dtype; other entries (a network's weights)
    are kept as numpy arrays of their own dtype. An empty path puts the names at the top.
    """
    flat = {}
    for path, entries in layers.items():
        for name, value in entries.items():
            key = f"{path}.{name}" if path else name
            flat[key] = entry(name, value) if name in ENTRY_DTYPES else np.asarray(value)
    return flat


def unflatten(flat: Mapping) -> dict[str, dict]:
    """The flat layout back to ``{path: {name: value}}`` (the name is the last dotted part)."""
    layers: dict[str, dict] = {}
    for key, value in flat.items():
        path, _, name = key.rpartition(".")
        layers.setdefault(path, {})[name] = value
    return layers


def save_npz(path, flat: Mapping) -> None:
    """Save a flat checkpoint with :func:`numpy.savez` (keys as written)."""
    np.savez(path, **{key: np.asarray(value) for key, value in flat.items()})


def load_npz(path) -> dict[str, np.ndarray]:
    """Load a flat checkpoint saved by :func:`save_npz` (or by any other framework)."""
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}
