"""Input checks shared by every adapter (spec section "Errors").

All checks read only shapes and dtypes, which are static under ``jax.jit``,
``torch.compile`` and ``tf.function``, so they never sync with the device.
"""

from __future__ import annotations


def check_inputs(xp, x, y, x_norm=None) -> None:
    """Raise if ``x``, ``y`` (and ``x_norm``) cannot be combined by AION.

    ``x`` None is the scale-only form (``alpha * y``): then ``x_norm`` is required and
    shapes are compared with ``y``'s. Messages keep aion-torch 1.0.2's wording ("Input
    shapes must match", "cannot be empty") and name the argument.

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
    error = input_error(xp, x, y, x_norm)
    if error is not None:
        raise error


def input_error(xp, x, y, x_norm=None) -> TypeError | ValueError | None:
    """The error :func:`check_inputs` raises, returned instead of raised (None if the inputs are fine).

    For adapters that must not raise while a compiler traces them (``torch.compile``
    with ``fullgraph=True`` refuses any exception met during tracing). When several
    checks fail, the first in this order wins: dtypes (``x``, ``y``, ``x_norm``), then
    for each argument in that order a missing last axis, no elements, a shape that differs from ``x``.
    """
    if x is None and x_norm is None:
        return TypeError("x_norm is required without x (the scale-only form alpha * y)")
    named = [(name, t) for name, t in (("x", x), ("y", y), ("x_norm", x_norm)) if t is not None]
    for name, t in named:
        if not xp.isdtype(t.dtype, "real floating"):
            return TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    first, shape = named[0][0], tuple(named[0][1].shape)
    for name, t in named:
        if len(t.shape) == 0:
            return ValueError(f"{name} must have at least one axis (the feature axis), got a scalar")
        if any(d == 0 for d in t.shape):
            return ValueError(f"Input tensor {name} cannot be empty, got shape {tuple(t.shape)}")
        if name != first and tuple(t.shape) != shape:
            return ValueError(f"Input shapes must match: {name}.shape {tuple(t.shape)} != {first}.shape {shape}")
    return None


def block_input_error(xp, x, dim: int) -> TypeError | ValueError | None:
    """What an ``AionBlock`` refuses before its ``LayerNorm``: a non-floating, 0-d or wrong-width ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> block_input_error(np, np.ones((2, 3)), 4)
    ValueError('x.shape[-1] must equal dim=4, got shape (2, 3)')
    >>> block_input_error(np, np.ones((2, 4)), 4) is None
    True
    """
    if not xp.isdtype(x.dtype, "real floating"):
        return TypeError(f"x must have a floating dtype, got {x.dtype}")
    return block_shape_error(tuple(x.shape), dim)


def block_shape_error(shape: tuple, dim: int) -> ValueError | None:
    """The shape part of :func:`block_input_error`, for frameworks that build from shapes (Keras)."""
    if len(shape) == 0:
        return ValueError("x must have at least one axis (the feature axis), got a scalar")
    if shape[-1] != dim:
        return ValueError(f"x.shape[-1] must equal dim={dim}, got shape {shape}")
    return None
