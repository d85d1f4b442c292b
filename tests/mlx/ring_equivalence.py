"""One rank of a 2-process data-parallel run on MLX's ring backend; see test_mlx_distributed.py.

``mlx.launch -n 2 --python PYTHON ring_equivalence.py OUTDIR``: each rank holds its half of
each global batch and trains make_model's network a few SGD steps (the mean loss over its
rows, gradients averaged with ``nn.average_gradients``), once with ``sync_ratio=True`` and
once with ``sync_ratio=False``, and writes what it saw (mlx_reference.lockstep's records) to
``OUTDIR/rank<r>.npz``; then the ``sync_ratio=True`` run again as a compiled training step
(``compiled.*``). The test compares them with single-process runs.
"""

import sys
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from mlx_reference import PARALLEL_K_UPDATES, flat, global_batches, lockstep, make_model, mse, rank_rows


def main(outdir: Path) -> None:
    group = mx.distributed.init(strict=True, backend="ring")
    assert group.size() == 2, group.size()
    rank = group.rank()
    own = [(x[rank_rows(rank)], target[rank_rows(rank)]) for x, target in global_batches()]
    saved = {"all_sum": np.array(mx.distributed.all_sum(mx.array(float(rank + 1)), group=group))}
    for sync in (True, False):
        model = make_model(0, k_updates=PARALLEL_K_UPDATES, sync_ratio=sync)
        steps = lockstep([model], [own], lambda grads: [nn.average_gradients(grads[0], group=group)])[0]
        for i, record in enumerate(steps):
            saved.update({f"sync={sync}.step={i}.{key}": value for key, value in record.items()})
    # The same sync_ratio=True run as a user writes it: nn.value_and_grad, the gradients
    # averaged, the whole step compiled with the model's state.
    model, optimizer = make_model(0, k_updates=PARALLEL_K_UPDATES), optim.SGD(0.05)
    loss_and_grad = nn.value_and_grad(model, mse)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def train_step(x, target):
        loss, grads = loss_and_grad(model, x, target)
        optimizer.update(model, nn.average_gradients(grads, group=group))
        return loss
    losses = []
    for x, target in own:
        losses.append(train_step(mx.array(x), mx.array(target)))
        mx.eval(state)
    saved["compiled.loss"] = np.array([loss.item() for loss in losses])
    saved.update({f"compiled.final.{key}": value for key, value in flat(model.parameters()).items()})
    np.savez(outdir / f"rank{rank}.npz", **saved)
    print(f"rank {rank} of {group.size()}: {len(steps)} steps with sync_ratio True and False")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
