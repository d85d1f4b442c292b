"""Where a training forward stands under activation checkpointing: a first run or a recomputation.

``torch.utils.checkpoint`` runs the first forward either with gradients off (reentrant) or
under saved-tensor hooks that drop the activations (non-reentrant), and recomputes it during
the backward pass; ``checkpoint_sequential``, Hugging Face's gradient checkpointing,
``checkpoint_wrapper`` and Keras' remat on torch all go through it. The layer keeps an
:class:`aion_core.replay.ReplayLog` and asks these two questions on every training forward
(host-side flags only, no tensor is read).
"""

from __future__ import annotations

import array_api_compat.torch as xp
import torch

from aion_core import replay


def in_recomputation() -> bool:
    """True while a backward pass runs, where checkpointing recomputes (either mode)."""
    return torch._C._current_graph_task_id() != -1


def may_be_recomputed() -> bool:
    """True where a forward's activations may be rebuilt later: gradients off or saved-tensor hooks on.

    A training-mode forward under ``torch.no_grad()`` is also counted (it cannot be told from
    a reentrant checkpoint's first run); one under ``torch.inference_mode()`` is not.
    """
    if torch.is_inference_mode_enabled():
        return False
    return not torch.is_grad_enabled() or torch._C._autograd._top_saved_tensors_default_hooks(False) is not None


def fingerprint(y: torch.Tensor) -> torch.Tensor:
    """:func:`aion_core.replay.fingerprint` of ``y`` (no gradient), in two dispatches when ``y`` is contiguous.

    The same 16 evenly spaced elements, summed in the accumulation dtype; through the array-API
    wrappers the reshape, slice and cast took 7.5 us a call, this 3 us (2-core CPU, torch 2.13).
    """
    y = y.detach()
    if not y.is_contiguous():
        return replay.fingerprint(xp, y)
    size = min(16, y.numel())
    step = max(1, y.numel() // 16)
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    return torch.as_strided(y, (size,), (step,), y.storage_offset()).sum(dtype=acc)
