"""The torch ops that AION's torch-backed adapters share: ``aion_pytorch``, and ``aion_keras`` on torch.

Neither adapter depends on the other; both import this package (and :mod:`aion_core`). It
registers the custom op ``aion_pytorch::snapshot_state`` (the name is kept stable for the
graphs that hold it) and the host-side questions asked under activation checkpointing.
"""

from aion_core import __version__ as __version__
from aion_torch_ops.recompute import fingerprint, in_recomputation, may_be_recomputed, snapshot_state

__all__ = ["fingerprint", "in_recomputation", "may_be_recomputed", "snapshot_state"]
