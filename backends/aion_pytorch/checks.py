"""Input checks that keep their error class under ``torch.compile(fullgraph=True)``.

Eagerly a bad input raises at once. While Dynamo traces, any exception it meets (even a
``ValueError`` the user should see) becomes ``torch._dynamo.exc.Unsupported`` under
``fullgraph=True``. So while tracing, a failed check does not raise: the graph gets one
opaque op, :func:`_raise_input_error`, whose real kernel re-runs the check on the actual
tensors and raises the spec's ``TypeError``/``ValueError`` naming the argument when the
compiled code runs, before any state is written. Valid inputs never reach that op: their
graph is the same as without the check.
"""

from __future__ import annotations

from collections.abc import Callable

import array_api_compat.torch as xp
import torch

import aion_core


def _stand_in(x: torch.Tensor) -> torch.Tensor:
    # The value tracing continues with after a failed check: x's shape, a floating dtype.
    return torch.empty(x.shape, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)


@torch.library.custom_op("aion_pytorch::raise_input_error", mutates_args=())
def _raise_input_error(x: torch.Tensor | None, y: torch.Tensor, x_norm: torch.Tensor | None) -> torch.Tensor:
    aion_core.check_inputs(xp, x, y, x_norm)
    raise AssertionError("the traced check failed, but the inputs pass it")  # guards make this unreachable


@_raise_input_error.register_fake
def _(x, y, x_norm):
    return _stand_in(y if x is None else x)


def _no_gradient(ctx, grad):
    # The op raises before anything downstream runs; a backward exists only so that
    # tracing a graph whose inputs require grad succeeds.
    return None, None, None


_raise_input_error.register_autograd(_no_gradient)


@torch.library.custom_op("aion_pytorch::raise_block_input_error", mutates_args=())
def _raise_block_input_error(x: torch.Tensor, dim: int) -> torch.Tensor:
    error = aion_core.block_input_error(xp, x, dim)
    raise error or AssertionError("the traced check failed, but the input passes it")


@_raise_block_input_error.register_fake
def _(x, dim):
    return _stand_in(x)


_raise_block_input_error.register_autograd(lambda ctx, grad: (None, None))


def _require_tensors(named: dict[str, object]) -> None:
    # Not a tensor (a numpy array, a list): raised at once, traced or not; the graph op takes tensors only.
    for name, t in named.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__module__}.{type(t).__qualname__}")


def _checked(error, raise_in_graph: Callable[[], torch.Tensor]) -> torch.Tensor | None:
    if error is None:
        return None
    if torch.compiler.is_compiling():
        return raise_in_graph()
    raise error


def check_inputs(x, y, x_norm) -> torch.Tensor | None:
    """None if AION can combine the inputs; otherwise raise (eager) or return the raising stand-in (tracing)."""
    _require_tensors({"x": x, "y": y, "x_norm": x_norm})
    return _checked(aion_core.input_error(xp, x, y, x_norm), lambda: _raise_input_error(x, y, x_norm))


def check_block_input(x, dim: int) -> torch.Tensor | None:
    """:func:`check_inputs` for an ``AionBlock``'s input, before its ``LayerNorm``."""
    _require_tensors({"x": x})
    return _checked(aion_core.block_input_error(xp, x, dim), lambda: _raise_block_input_error(x, dim))
