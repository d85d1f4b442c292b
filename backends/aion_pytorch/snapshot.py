"""``snapshot``: a copy of a state buffer that Inductor saves for the backward, never recomputes.

Used by this package's ``AionResidual`` and by the Keras layers on the torch backend.
"""

from __future__ import annotations

import torch


def _clone(t: torch.Tensor) -> torch.Tensor:
    return t.clone()


def _empty_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t)


# Inductor's partitioner may recompute a cheap saved value in the backward instead of saving
# it; recomputing ``clone(ratio_ema)`` there reads the buffer after the forward has updated
# it in place (torch 2.13: the parameters' gradients off by ~1e-3 relative, y's by ~1e-4).
# It never recomputes an opaque op, so this copy is saved. Defined with the low-level
# torch.library API: a call costs ~4 us, against ~60 us for torch.library.custom_op.
_LIBRARY = torch.library.Library("aion_pytorch", "FRAGMENT")
_LIBRARY.define("snapshot(Tensor t) -> Tensor")
_LIBRARY.impl("snapshot", _clone, "CompositeExplicitAutograd")
torch.library.register_fake("aion_pytorch::snapshot", _empty_like, lib=_LIBRARY)
_snapshot_op = torch.ops.aion_pytorch.snapshot


def snapshot(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` taken before the forward writes ``t`` in place.

    Under ``torch.compile`` the opaque ``aion_pytorch::snapshot`` op, eagerly ``t.clone()``.
    """
    return _snapshot_op(t) if torch.compiler.is_compiling() else t.clone()
