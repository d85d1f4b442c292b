"""Rounding float64 data to a lower dtype without a framework (bfloat16 included)."""

from __future__ import annotations

import numpy as np


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded (nearest, ties to even) to ``dtype``, returned as float64."""
    a = np.asarray(a, dtype=np.float64)
    if dtype == "float64":
        return a
    if dtype in ("float32", "float16"):
        return a.astype(dtype).astype(np.float64)
    if dtype == "bfloat16":
        bits = a.astype(np.float32).view(np.uint32)
        bits = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
        return bits.view(np.float32).astype(np.float64)
    raise ValueError(f"unknown dtype {dtype!r}")


#: Per-dtype tolerance of a conformant result (spec "Tolerances"): an element passes when
#: |got - want| <= rtol * (|want| + max|want|).
RTOL = {"float64": 1e-10, "float32": 1e-5, "float16": 4e-3, "bfloat16": 3e-2}
