"""Where a training forward stands under activation checkpointing: a first run or a recomputation.

``torch.utils.checkpoint`` runs the first forward either with gradients off (reentrant) or
under saved-tensor hooks that drop the activations (non-reentrant), and recomputes it during
the backward pass; ``checkpoint_sequential``, Hugging Face's gradient checkpointing,
``checkpoint_wrapper`` and Keras' remat on torch all go through it. The layer keeps an
:class:`aion_core.replay.ReplayLog` and asks these two questions on every training forward
(host-side flags only, no tensor is read).
"""

from __future__ import annotations

import torch


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
