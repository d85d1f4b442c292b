"""Numbers in the vector files: standard JSON, non-finite values as strings.

``NaN``, ``Infinity`` and ``-Infinity`` are written as the strings ``"NaN"``,
``"Infinity"``, ``"-Infinity"``; nested lists of numbers read back as float64 arrays.

>>> encode([1.0, float("inf")])
[1.0, 'Infinity']
>>> decode([[1.0, "NaN"]])
array([[ 1., nan]])
"""

from __future__ import annotations

import math

import numpy as np

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode(value):
    if isinstance(value, np.ndarray):
        return encode(value.tolist())
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def decode(value):
    """JSON value back to numbers; nested lists become float64 arrays."""
    if isinstance(value, str):
        return _NONFINITE.get(value, value)
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return [decode(v) for v in value]
    if isinstance(value, list):
        return np.asarray(_decode_list(value), dtype=np.float64)
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    return value


def _decode_list(value):
    return [_decode_list(v) if isinstance(v, list) else _NONFINITE.get(v, v) for v in value]
