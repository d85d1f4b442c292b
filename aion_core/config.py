"""Hyper-parameters of an AION residual and their validation (spec section "Parameters")."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from numbers import Integral, Real


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


@dataclass(frozen=True)
class AionConfig:
    """Validated constructor arguments shared by every adapter.

    Error messages keep aion-torch 1.0.2's wording and start with the argument's name.

    Parameters
    ----------
    alpha0 : float
        Initial value of the trainable base scale; must be positive (> 0).
    beta : float
        Initial value of the trainable adaptation strength; must be non-negative (>= 0).
    ema_gamma : float
        EMA factor of the running ratio, in [0, 1]; 1 means no smoothing.
    epsilon : float
        Added to the input energy before dividing; must be positive (> 0).
    k_update : int
        Recompute the ratio every ``k_update`` training steps; must be >= 1.

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
    """

    alpha0: float = 0.1
    beta: float = 0.05
    ema_gamma: float = 0.99
    epsilon: float = 1e-8
    k_update: int = 1

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
        if isinstance(self.k_update, bool) or not isinstance(self.k_update, Integral):
            raise TypeError(f"k_update must be an int, got {type(self.k_update).__name__}")
        if self.k_update < 1:
            raise ValueError(f"k_update must be >= 1, got {self.k_update}")
        for name, value in (("alpha0", alpha0), ("beta", beta), ("ema_gamma", gamma),
                            ("epsilon", epsilon), ("k_update", int(self.k_update))):
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        """The arguments as plain Python numbers (for ``get_config`` and vectors)."""
        return asdict(self)
