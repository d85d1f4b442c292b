"""Running state of one AION residual and its portable layout (spec section "State")."""

from __future__ import annotations

from typing import NamedTuple

#: Portable checkpoint layout: name -> (dtype name, shape, initial value).
STATE_SPEC = {
    "ratio_ema": ("float32", (), 1.0),
    "step_count": ("int32", (), 0),
    "nonfinite_count": ("int32", (), 0),
}


class AionState(NamedTuple):
    """Running state; every field is a 0-d array and carries no gradient.

    ratio_ema
        The smoothed energy ratio ``r_s`` of the last update step (1.0 before any).
    step_count
        Training forwards taken (update steps and others alike).
    nonfinite_count
        Update steps whose batch ratio was NaN or infinite once rounded to float32 (the
        dtype of ``ratio_ema``) and so left ``ratio_ema`` as it was.
    """

    ratio_ema: object
    step_count: object
    nonfinite_count: object


def initial_state(xp, dtype=None, device=None) -> AionState:
    """The state of a fresh layer; ``dtype`` is that of ``ratio_ema`` (float32 by default).

    Examples
    --------
    >>> import numpy as np
    >>> initial_state(np)  # doctest: +NORMALIZE_WHITESPACE
    AionState(ratio_ema=array(1., dtype=float32), step_count=array(0, dtype=int32),
              nonfinite_count=array(0, dtype=int32))
    """
    kw = {} if device is None else {"device": device}
    return AionState(
        ratio_ema=xp.asarray(1.0, dtype=dtype or xp.float32, **kw),
        step_count=xp.asarray(0, dtype=xp.int32, **kw),
        nonfinite_count=xp.asarray(0, dtype=xp.int32, **kw),
    )
