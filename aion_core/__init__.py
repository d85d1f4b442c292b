"""AION math, written once against the Python array API.

Every function here is pure: parameters and running state come in as arrays and the
new state goes out as arrays. No framework is imported; the namespace ``xp`` is found
with :func:`array_api_compat.array_namespace` or handed in by an adapter (the Keras
adapter hands in a ``keras.ops``-backed one). What the framework adapters build on beyond
this API is :mod:`aion_core.adapter`.

>>> import numpy as np
>>> import aion_core as core
>>> cfg = core.AionConfig(alpha0=0.1, beta=0.05)
>>> state = core.initial_state(np, dtype=np.float64)
>>> x = np.ones((2, 4)); y = np.full((2, 4), 2.0)
>>> alpha0, beta = np.asarray(0.1), np.asarray(0.05)
>>> out, state, stats = core.train_step(x, y, None, alpha0, beta, state, cfg)
>>> round(float(stats["ratio"]), 6), round(float(state.ratio_ema), 6)
(4.0, 1.03)
"""

__version__ = "0.1.0"  # the one version: pyproject.toml and every package read it here

from aion_core.config import AionConfig
from aion_core.errors import block_input_error, check_inputs, input_error
from aion_core import portable
from aion_core.math import batch_ratio, compute_alpha, energy
from aion_core.state import STATE_SPEC, AionState, initial_state
from aion_core.step import eval_step, is_update_step, train_step
from aion_core import adapter  # last: it gathers names from the modules above

__all__ = [
    "STATE_SPEC",
    "AionConfig",
    "AionState",
    "adapter",
    "batch_ratio",
    "block_input_error",
    "check_inputs",
    "compute_alpha",
    "energy",
    "eval_step",
    "initial_state",
    "input_error",
    "is_update_step",
    "portable",
    "train_step",
]
