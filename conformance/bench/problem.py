"""The overhead benchmark's network, once for every backend.

4 pre-norm feed-forward blocks (LayerNorm, Linear(D, 4D), exact GELU, Linear(4D, D)) on a
(B, T, D) batch, AdamW (:class:`~aion_conformance.frameworks.optimizers.AdamW`: lr 1e-3,
betas 0.9/0.95, no weight decay), MSE to a random target. Variants: ``plain`` (``x + y``,
in a block of AionBlock's structure: a layer holding norm and branch), ``aion``
(AionBlock, k_update=1), ``aion-k4`` (k_update=4), and whatever residual kinds a kit adds
(``EXTRA_RESIDUALS``: on torch the original aion-torch 1.0.2 and the eager floor). On eager
torch also ``aion-ops``: the ``aion`` network with ``aion_pytorch``'s op path
(``AION_TORCH_KERNELS=ops``) in place of its C++ kernel.
"""

from __future__ import annotations

import numpy as np

from aion_conformance.frameworks import net

BLOCKS = 4
VARIANTS = ("plain", "aion", "aion-k4")
#: The ``aion`` network on eager torch with ``aion_pytorch``'s op path (no C++ kernel).
OP_PATH = "aion-ops"
#: The variant of the DDP bench that keeps each rank's own ratio (``sync_ratio=False``).
LOCAL_RATIO = "aion-local-ratio"


def data(batch: int, seq: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The input and target, float32 ``(batch, seq, width)``."""
    rng = np.random.default_rng(0)
    return (rng.standard_normal((batch, seq, width)).astype("float32"),
            rng.standard_normal((batch, seq, width)).astype("float32"))


def make_net(width: int, variant: str, blocks: int = BLOCKS) -> net.Net:
    """The benchmark network of ``variant`` (seeded: the same weights for every variant)."""
    rng = np.random.default_rng(0)
    hidden, out = 4 * width, []
    for _ in range(blocks):
        branch = (net.dense_init(rng, width, hidden, "gelu"), net.dense_init(rng, hidden, width))
        if variant == "plain":
            out.append(net.Block("sum", "pre", branch, net.Norm.fresh(width)))
        elif variant in ("aion", "aion-k4", OP_PATH):
            aion = net.Aion(0.1, 0.05, k_update=4 if variant == "aion-k4" else 1)
            out.append(net.Block("aion-block", "pre", branch, net.Norm.fresh(width), aion))
        else:  # a kit's own residual kind
            out.append(net.Block(variant, "pre", branch, net.Norm.fresh(width)))
    return net.Net(tuple(out))
