"""Input checks shared by every adapter (spec section "Errors").

All checks read only shapes and dtypes, which are static under ``jax.jit``,
``torch.compile`` and ``tf.function``, so they never sync with the device.
"""

from __future__ import annotations


def check_inputs(xp, x, y, x_norm=None) -> None:
    """Raise if ``x``, ``y`` (and ``x_norm``) cannot be combined by AION.

    Messages keep aion-torch 1.0.2's wording ("Input shapes must match", "cannot be
    empty") and name the argument.

    Raises
    ------
    TypeError
        An argument is not of a real floating dtype.
    ValueError
        An argument has no last axis or no elements, or its shape differs from ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> check_inputs(np, np.ones((2, 3)), np.ones((2, 4)))
    Traceback (most recent call last):
    ...
    ValueError: Input shapes must match: y.shape (2, 4) != x.shape (2, 3)
    >>> check_inputs(np, np.ones((0, 3)), np.ones((0, 3)))
    Traceback (most recent call last):
    ...
    ValueError: Input tensor x cannot be empty, got shape (0, 3)
    """
    named = [("x", x), ("y", y)] + ([("x_norm", x_norm)] if x_norm is not None else [])
    for name, t in named:
        if not xp.isdtype(t.dtype, "real floating"):
            raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    shape = tuple(x.shape)
    for name, t in named:
        if len(t.shape) == 0:
            raise ValueError(f"{name} must have at least one axis (the feature axis), got a scalar")
        if any(d == 0 for d in t.shape):
            raise ValueError(f"Input tensor {name} cannot be empty, got shape {tuple(t.shape)}")
        if name != "x" and tuple(t.shape) != shape:
            raise ValueError(f"Input shapes must match: {name}.shape {tuple(t.shape)} != x.shape {shape}")
