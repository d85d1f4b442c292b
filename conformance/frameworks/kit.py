"""What a framework kit offers the harness: the protocol every ``frameworks/<framework>/`` meets.

A kit is a module (``aion_conformance.frameworks.torch``, ``.keras``, ``.flax.nnx``, ...)
named by its backend's registry entry and imported only in that backend's process. The
problems (trajectory, stability, bench) are written once against it:

>>> from aion_conformance.frameworks.kit import MEMBERS
>>> MEMBERS  # doctest: +NORMALIZE_WHITESPACE
('EXTRA_RESIDUALS', 'build', 'device', 'evaluate', 'from_numpy', 'read', 'to_numpy', 'trainer',
 'versions')
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Protocol

from aion_conformance.frameworks import net
from aion_conformance.frameworks.optimizers import AdamW, Sgd


@dataclass
class Step:
    """What an observed training step reports: the loss of its forward, the global gradient
    norm before clipping (None when not clipped), and each scaled block's scale."""

    loss: float
    grad_norm: float | None
    scales: list[float]


class Trainer(Protocol):
    #: Where and how it runs, e.g. ``"cpu eager"``, ``"cpu jit"``, ``"cuda compile"``.
    label: str

    def __call__(self, inputs: Any, target: Any) -> Step | float | None:
        """One step on the trainer's loss: a :class:`Step` when observed; otherwise None
        once the step has finished, or the device time it measured itself."""


class Kit(Protocol):
    #: Residual kinds the kit builds beyond :data:`~aion_conformance.frameworks.net.RESIDUALS`.
    EXTRA_RESIDUALS: dict[str, Callable]

    def versions(self) -> dict[str, str]:
        """Framework name -> version, for the report."""

    def device(self) -> str:
        """The device kind the kit runs on (``"cpu"``, ``"cuda"``, ``"gpu"``, ...)."""

    def from_numpy(self, a, dtype: str) -> Any:
        """A numpy array (None stays None) as the framework's array of dtype name ``dtype``."""

    def to_numpy(self, t) -> Any:
        """A framework array as a float64 numpy array."""

    def build(self, spec: net.Net) -> Any:
        """The framework's model of ``spec``, from its numpy weights."""

    def read(self, model) -> net.Net:
        """The model's current weights and AION entries as a numpy :class:`~.net.Net`."""

    def trainer(self, model, optimizer: Sgd | AdamW, clip: float | None = None,
                compiled: bool | None = None, observe: bool = True, loss: str = "mse",
                precision: str | None = None) -> Trainer:
        """A training step of ``model``; ``compiled`` None: the framework's usual way.

        ``loss``: ``"mse"``, ``mean((out - target)**2)``; or ``"ce"``, the mean cross-entropy
        of the logits ``out[..., V]`` against integer ``target`` ``[...]`` (log-softmax in
        float32). ``precision``: None (float32), or ``"bfloat16"``: the framework's mixed
        bfloat16 (torch autocast, Keras' ``mixed_bfloat16`` policy, Flax/MLX computing in
        bfloat16 with float32 parameters), parameters and optimizer state in float32.
        """
        ...

    def evaluate(self, model, inputs: Any, target: Any, loss: str = "mse",
                 precision: str | None = None) -> float:
        """The loss of an eval-mode forward (no state written, no gradient)."""


#: What a kit module exports (its ``__all__``).
MEMBERS = tuple(sorted({*Kit.__annotations__, *(n for n in vars(Kit) if not n.startswith("_"))}))


def load(module: str) -> Kit:
    """The kit a registry entry names (imports its framework)."""
    return importlib.import_module(module)  # type: ignore[return-value]
