"""Cross-replica mean of the batch ratio under ``tf.distribute`` (MirroredStrategy and kin).

Only the TensorFlow backend runs replicas as separate traces that must talk to each
other. Under the JAX backend ``keras.distribution.DataParallel`` shards one jitted
program, so the batch mean in the core is already the global mean, whatever
``sync_ratio`` says (there is no per-replica ratio to keep); the PyTorch backend has no
Keras-level data parallelism. A layer with ``sync_ratio=False`` never calls the hook
(:func:`aion_core.adapter.replica_mean_for`).
"""

from __future__ import annotations

import keras


def replica_mean_or_none():
    """The mean over the replicas in sync, or None outside a multi-replica context.

    ``ReplicaContext.all_reduce`` is differentiable: the gradient of an all-mean is the
    all-mean of the incoming gradients. Each replica's loss gradient is summed over
    replicas afterwards, so every replica's batch ratio receives ``1/N`` of the total,
    exactly its share in a single full-batch mean: training matches one device
    holding the whole batch.
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None

    def replica_mean(ratio):
        return context.all_reduce(tf.distribute.ReduceOp.MEAN, ratio)

    return replica_mean
