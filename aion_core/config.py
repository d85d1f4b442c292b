"""Hyper-parameters of an AION residual and their validation (spec section "Parameters")."""

from __future__ import annotations

import math
import struct
from dataclasses import asdict, dataclass
from numbers import Integral, Real

import numpy as np

#: The largest ``k_update``: the step counter it divides is int32.
K_UPDATE_MAX = 2**31 - 1


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        value = float(value)  # once, to float64 (a Fraction to the nearest float64)
    except OverflowError:  # an int or Fraction beyond float64 (10**400): out of range, not of type
        raise ValueError(f"{name} must be finite, got {type(value).__name__} beyond float64's range") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _float32(value: float) -> float:
    """``value`` rounded to float32 (nearest, ties to even); +-inf where it overflows.

    >>> _float32(0.1), _float32(1e300), _float32(1e-300)
    (0.10000000149011612, inf, 0.0)
    """
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:  # some struct implementations refuse instead of rounding to inf
        return math.copysign(math.inf, value)


#: The smallest normal float32 number. XLA (JAX, TensorFlow) and GPUs flush smaller
#: (subnormal) float32 values to zero, numpy and torch on CPU do not.
FLOAT32_TINY = 2.0**-126


def _in_float32(name: str, value: float, why: str, positive: bool) -> None:
    """Refuse a value that float32, the dtype it is held or used in, turns into inf or 0."""
    rounded = _float32(value)
    if not math.isfinite(rounded):
        raise ValueError(f"{name} must be finite in float32 ({why}), got {value}")
    if positive and rounded <= 0:
        raise ValueError(f"{name} must be positive in float32 ({why}), got {value}")


def check_dim(dim) -> int:
    """An ``AionBlock``'s feature width: an int (numpy integers too, not bool) >= 1.

    >>> check_dim(0)
    Traceback (most recent call last):
    ...
    ValueError: dim must be >= 1, got 0
    """
    if isinstance(dim, bool) or not isinstance(dim, Integral):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return int(dim)


@dataclass(frozen=True)
class AionConfig:
    """Validated constructor arguments shared by every adapter.

    Error messages keep aion-torch 1.0.2's wording and start with the argument's name.

    Parameters
    ----------
    alpha0 : float
        Initial value of the trainable base scale; must be positive (> 0), also once
        rounded to float32 (the parameter's dtype): ``1e-300`` and ``1e300`` are refused.
    beta : float
        Initial value of the trainable adaptation strength; must be non-negative (>= 0)
        and finite once rounded to float32.
    ema_gamma : float
        EMA factor of the running ratio, in [0, 1]; 1 means no smoothing.
    epsilon : float
        Added to the input energy before dividing; must be positive (> 0), also once
        rounded to float32 (it is added in float32 for all but float64 inputs), and a
        normal float32 number (>= 2**-126): XLA and GPUs flush subnormals to zero.
    k_update : int
        Recompute the ratio every ``k_update`` training steps; must be >= 1 and at most
        ``2**31 - 1`` (the step counter is int32).
    sync_ratio : bool
        Under data parallelism, True (the default) averages the batch ratio over the
        replicas (one small collective per layer per update step, and one for its
        gradient): training equals one process holding the whole batch. False keeps each
        replica's own batch ratio (no collective), as BatchNorm against SyncBatchNorm; the
        replicas' ``ratio_ema`` may then differ (spec section 7). A ``bool`` (a numpy bool
        too); no effect on a single process.

    Examples
    --------
    >>> AionConfig(alpha0=0.0)
    Traceback (most recent call last):
    ...
    ValueError: alpha0 must be positive, got 0.0
    >>> AionConfig(beta=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: beta must be non-negative, got -1.0
    >>> AionConfig(alpha0=1e-300)
    Traceback (most recent call last):
    ...
    ValueError: alpha0 must be positive in float32 (its storage dtype), got 1e-300
    >>> AionConfig(k_update=2**31)
    Traceback (most recent call last):
    ...
    ValueError: k_update must be <= 2147483647 (the step counter is int32), got 2147483648
    >>> AionConfig(sync_ratio=1)
    Traceback (most recent call last):
    ...
    TypeError: sync_ratio must be a bool, got int
    """

    alpha0: float = 0.1
    beta: float = 0.05
    ema_gamma: float = 0.99
    epsilon: float = 1e-8
    k_update: int = 1
    sync_ratio: bool = True

    def __post_init__(self):
        alpha0 = _real("alpha0", self.alpha0)
        beta = _real("beta", self.beta)
        gamma = _real("ema_gamma", self.ema_gamma)
        epsilon = _real("epsilon", self.epsilon)
        if alpha0 <= 0:
            raise ValueError(f"alpha0 must be positive, got {alpha0}")
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"ema_gamma must be in [0, 1], got {gamma}")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        # The values must survive the dtype they are held or used in (spec section 2).
        _in_float32("alpha0", alpha0, "its storage dtype", positive=True)
        _in_float32("beta", beta, "its storage dtype", positive=False)
        _in_float32("epsilon", epsilon, "it is added to float32 energies", positive=True)
        if _float32(epsilon) < FLOAT32_TINY:
            # A subnormal epsilon is 0 where XLA or a GPU flushes it: an all-zero input
            # would give 0 / 0 there and 0 on numpy and torch CPU.
            raise ValueError(f"epsilon must be at least {FLOAT32_TINY:.8g} (float32's smallest normal number; "
                             f"subnormals are flushed to zero by XLA and GPUs), got {epsilon}")
        if isinstance(self.k_update, bool) or not isinstance(self.k_update, Integral):
            raise TypeError(f"k_update must be an int, got {type(self.k_update).__name__}")
        if self.k_update < 1:
            raise ValueError(f"k_update must be >= 1, got {self.k_update}")
        if self.k_update > K_UPDATE_MAX:
            raise ValueError(f"k_update must be <= {K_UPDATE_MAX} (the step counter is int32), "
                             f"got {self.k_update}")
        # A flag, not a number: 1, 0, "yes" or None are refused rather than read as truthy.
        if not isinstance(self.sync_ratio, (bool, np.bool_)):
            raise TypeError(f"sync_ratio must be a bool, got {type(self.sync_ratio).__name__}")
        for name, value in (("alpha0", alpha0), ("beta", beta), ("ema_gamma", gamma),
                            ("epsilon", epsilon), ("k_update", int(self.k_update)),
                            ("sync_ratio", bool(self.sync_ratio))):
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        """The arguments as plain Python numbers and a bool (for ``get_config`` and vectors)."""
        return asdict(self)
