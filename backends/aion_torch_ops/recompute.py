"""A training forward under recomputation: where it stands, and the running state it reads.

Activation checkpointing (``torch.utils.checkpoint``, ``checkpoint_sequential``, Hugging
Face's gradient checkpointing, ``checkpoint_wrapper``, Keras' remat on torch) runs the first
forward either with gradients off (reentrant) or under saved-tensor hooks that drop the
activations (non-reentrant), and recomputes it during the backward pass. A layer keeps an
:class:`aion_core.adapter.ReplayLog` and asks :func:`in_recomputation` and
:func:`may_be_recomputed` on every training forward (host-side flags only, no tensor is read).

:func:`snapshot_state` copies the running state a training forward reads, so that a forward
run again reads it again. Used by ``aion_pytorch.AionResidual`` under ``torch.compile`` and by
the ``aion_keras`` layers on the torch backend (eager and compiled). Two ways a forward's
state read is run again:

- Inductor's partitioner may recompute a cheap saved value in the backward instead of
  saving it. It never recomputes an opaque op outside a checkpointed region, so the copy
  taken here is saved; recomputing ``clone(ratio_ema)`` there would read the buffer after
  the forward updated it in place (torch 2.13: the parameters' gradients off by ~1e-3).
- Activation checkpointing reruns the forward in the backward: compiled
  (``torch.utils.checkpoint`` inside ``torch.compile``, where the partitioner recomputes
  every op of the region, this one included) or eager (a checkpointed compiled module, a
  Keras layer under ``keras.RematScope``), once or, with nested checkpointed regions, more
  often. Then the kernel, called during a backward pass, returns the state that the forward
  with the same branch output ``y`` read (a :class:`~aion_core.adapter.ReplayLog` per
  buffer): the recomputation equals the first run, and the state it writes back is the one
  already written.

The op keeps the name ``aion_pytorch::snapshot_state`` that compiled and exported graphs
hold. Defined with the low-level torch.library API (torch.library.custom_op cost ~60 us a
call). Measured on a 2-core CPU (torch 2.13): 17 us a call through the op, 13.5 us for the
kernel alone (three copies, the fingerprint, the log), where a copy of ``ratio_ema`` alone
took 4 us; ``nox -s bench`` shows no change of the compiled step's ratio to the plain
residual's at D=128 (1.062 against 1.072 before, spreads +-0.06).
"""

from __future__ import annotations

import weakref

import array_api_compat.torch as xp
import torch

from aion_core import AionState, adapter


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
    """:func:`aion_core.adapter.fingerprint` of ``y`` (no gradient), in two dispatches when ``y`` is contiguous.

    The same 16 evenly spaced elements, summed in the accumulation dtype; through the array-API
    wrappers the reshape, slice and cast took 7.5 us a call, this 3 us (2-core CPU, torch 2.13).
    """
    y = y.detach()
    if not y.is_contiguous():
        return adapter.fingerprint(xp, y)
    size = min(16, y.numel())
    step = max(1, y.numel() // 16)
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    return torch.as_strided(y, (size,), (step,), y.storage_offset()).sum(dtype=acc)


# ratio_ema buffer -> the states its forwards read (a log per layer, gone with the layer).
_LOGS: weakref.WeakKeyDictionary[torch.Tensor, adapter.ReplayLog] = weakref.WeakKeyDictionary()


def _snapshot_state(ratio_ema: torch.Tensor, step_count: torch.Tensor, nonfinite_count: torch.Tensor,
                    y: torch.Tensor):
    log = _LOGS.get(ratio_ema)
    recomputing = in_recomputation()
    record = log.find(fingerprint(y)) if recomputing and log is not None else None
    if record is not None:
        return tuple(t.clone() for t in record.state)
    state = AionState(ratio_ema.clone(), step_count.clone(), nonfinite_count.clone())
    if not recomputing:  # (a recomputation without a record reads the buffers, logs nothing)
        if log is None:
            log = _LOGS[ratio_ema] = adapter.ReplayLog()
        log.push(state, 0, fingerprint(y))
    return tuple(state)


def _snapshot_state_fake(ratio_ema, step_count, nonfinite_count, y):
    return torch.empty_like(ratio_ema), torch.empty_like(step_count), torch.empty_like(nonfinite_count)


_LIBRARY = torch.library.Library("aion_pytorch", "FRAGMENT")
_LIBRARY.define("snapshot_state(Tensor ratio_ema, Tensor step_count, Tensor nonfinite_count, Tensor y)"
                " -> (Tensor, Tensor, Tensor)")
_LIBRARY.impl("snapshot_state", _snapshot_state, "CompositeExplicitAutograd")
torch.library.register_fake("aion_pytorch::snapshot_state", _snapshot_state_fake, lib=_LIBRARY)
_snapshot_state_op = torch.ops.aion_pytorch.snapshot_state


def snapshot_state(y: torch.Tensor, ratio_ema: torch.Tensor, step_count: torch.Tensor,
                   nonfinite_count: torch.Tensor) -> AionState:
    """Copies of the three state buffers taken before the forward (branch output ``y``) writes them.

    Under ``torch.compile`` the opaque ``aion_pytorch::snapshot_state`` op, eagerly its kernel;
    during a backward pass (a recomputation) the copies the forward with this ``y`` took.
    """
    op = _snapshot_state_op if torch.compiler.is_compiling() else _snapshot_state
    return AionState(*op(ratio_ema, step_count, nonfinite_count, y.detach()))  # (no gradient reaches the op)
