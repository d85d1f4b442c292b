"""``snapshot_state``: the running state a training forward reads, read again when it is recomputed.

Used by this package's ``AionResidual`` under ``torch.compile`` and by the Keras layers on
the torch backend (eager and compiled). Two ways a forward's state read is run again:

- Inductor's partitioner may recompute a cheap saved value in the backward instead of
  saving it. It never recomputes an opaque op outside a checkpointed region, so the copy
  taken here is saved; recomputing ``clone(ratio_ema)`` there would read the buffer after
  the forward updated it in place (torch 2.13: the parameters' gradients off by ~1e-3).
- Activation checkpointing reruns the forward in the backward: compiled
  (``torch.utils.checkpoint`` inside ``torch.compile``, where the partitioner recomputes
  every op of the region, this one included) or eager (a checkpointed compiled module, a
  Keras layer under ``keras.RematScope``), once or, with nested checkpointed regions, more
  often. Then the kernel, called during a backward pass, returns the state that the forward
  with the same branch output ``y`` read (an :class:`aion_core.replay.ReplayLog` per buffer):
  the recomputation equals the first run, and the state it writes back is the one already
  written.

Defined with the low-level torch.library API (torch.library.custom_op cost ~60 us a call).
Measured on a 2-core CPU (torch 2.13): 17 us a call through the op, 13.5 us for the kernel
alone (three copies, the fingerprint, the log), where a copy of ``ratio_ema`` alone took 4 us;
``nox -s bench`` shows no change of the compiled step's ratio to the plain residual's at D=128
(1.062 against 1.072 before, spreads +-0.06).
"""

from __future__ import annotations

import weakref

import torch

from aion_core import AionState
from aion_core.replay import ReplayLog
from aion_pytorch.recompute import fingerprint, in_recomputation

# ratio_ema buffer -> the states its forwards read (a log per layer, gone with the layer).
_LOGS: weakref.WeakKeyDictionary[torch.Tensor, ReplayLog] = weakref.WeakKeyDictionary()


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
            log = _LOGS[ratio_ema] = ReplayLog()
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
