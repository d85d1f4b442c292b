"""Recomputed training forwards: what the first run read, so that a second run reads it again.

Activation checkpointing (``torch.utils.checkpoint``, Hugging Face's gradient
checkpointing, Keras' remat on torch) runs a training forward twice: first keeping no
activations, then again during the backward to rebuild them. AION's training forward reads
its running state and advances it, so a second run would read the advanced state (another
alpha, other activations, other gradients) and advance it again. Spec section 6a: a
recomputation reproduces the first run exactly and leaves the state alone.

An adapter whose framework recomputes eagerly keeps one :class:`ReplayLog` per layer: each
training forward that may be recomputed :meth:`~ReplayLog.push`-es the state it read; a
recomputation :meth:`~ReplayLog.find`-s it instead of reading the layer's state, and writes
nothing (or, where it must write, the values already written). Several forwards of one layer
may await their recomputation at once (the layer used twice, micro-batches before one
backward, pipeline schedules), and backward passes recompute them in an order the layer
cannot see: a recomputation takes the record whose branch output ``y`` it reproduces
(:func:`fingerprint`), so the order does not matter.

Examples
--------
>>> import numpy as np
>>> import aion_core as core
>>> log = ReplayLog()
>>> y1, y2 = np.ones((2, 3)), np.full((2, 3), 2.0)
>>> log.push(core.initial_state(np), 0, fingerprint(np, y1))
>>> log.push(core.initial_state(np)._replace(ratio_ema=np.float32(4.0)), 0, fingerprint(np, y2))
>>> float(log.find(fingerprint(np, y2)).state.ratio_ema), float(log.find(fingerprint(np, y1)).state.ratio_ema)
(4.0, 1.0)
>>> log.push(core.initial_state(np), 0, fingerprint(np, y1)); len(log)  # the replayed two are dropped
1
"""

from __future__ import annotations

from collections import deque

from aion_core.math import accumulation_dtype, cast
from aion_core.state import AionState


class Record:
    """One training forward that may be recomputed.

    ``state`` is the running state it read (arrays its own writes do not reach), ``phase``
    the host-side ``step_count % k_update`` it chose its step by (0: an update step, for
    adapters that keep the schedule on the host), ``fingerprint`` its branch output's
    :func:`fingerprint`, and ``replayed`` whether a recomputation has read it yet.
    """

    __slots__ = ("state", "phase", "fingerprint", "replayed")

    def __init__(self, state: AionState, phase: int, fingerprint):
        self.state, self.phase, self.fingerprint, self.replayed = state, phase, fingerprint, False


def fingerprint(xp, y, size: int = 16):
    """The sum of ``size`` evenly spaced elements of ``y``: what tells one forward's branch output from another's.

    A recomputation reproduces it exactly, and it reads ``size`` elements, not the array.

    >>> import numpy as np
    >>> float(fingerprint(np, np.arange(64.0).reshape(8, 8), size=4))
    96.0
    """
    flat = xp.reshape(y, (-1,))
    step = max(1, flat.shape[0] // size)
    return xp.sum(cast(xp, flat[::step][:size], accumulation_dtype(xp, y.dtype)))


class ReplayLog:
    """The forwards of one layer that a recomputation may replay, at most ``capacity`` of them.

    A forward may be recomputed several times (nested checkpointed regions, a second
    backward through a retained graph), so :meth:`find` keeps what it returns. :meth:`push`
    drops the records that were replayed and every record older than the newest of those
    (a forward whose graph was dropped, a training-mode forward under no-grad): backward
    passes replay the forwards of a step before the next step's forwards. With one record
    :meth:`find` reads nothing on the host; with several it compares fingerprints there.
    """

    def __init__(self, capacity: int = 64):
        self._records: deque[Record] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._records)

    def push(self, state: AionState, phase: int, fingerprint) -> None:
        """Log a first run (never a recomputation) and forget the forwards already replayed."""
        replayed = [i for i, r in enumerate(self._records) if r.replayed]
        for _ in range(replayed[-1] + 1 if replayed else 0):
            self._records.popleft()
        self._records.append(Record(state, phase, fingerprint))

    def find(self, fingerprint) -> Record | None:
        """The record a recomputation with this fingerprint replays (kept, marked replayed); None if none.

        The record whose fingerprint is nearest (recomputations are bitwise equal on
        deterministic kernels; nearest also tolerates ones that are not); of equals, the newest.
        """
        if not self._records:
            return None
        if len(self._records) == 1:
            record = self._records[0]
        else:
            target = float(fingerprint)
            distances = [abs(float(r.fingerprint) - target) for r in self._records]
            record = self._records[min(range(len(distances)), key=lambda i: (distances[i], -i))]
        record.replayed = True
        return record
