"""AION checkpoints in PyTorch: the portable layout (spec section 9) and loads that fail whole.

A model's ``state_dict`` already holds the portable layout's keys for each AION layer
(``"blocks.0.aion.ratio_ema"``: the module's dotted path, then the entry) beside its other
weights, and each :class:`~aion_pytorch.AionResidual` checks its own entries before it
writes them. torch's ``load_state_dict`` loads module by module and raises for a missing or
unexpected key, a wrong shape or another layer's bad entry only after the others were
written; :func:`load_state_dict` restores every AION layer's parameters and state when the
load raises, so a failed load leaves them as they were. ``AionResidual.load_state_dict`` and
``AionBlock.load_state_dict`` are it. :func:`to_portable` and :func:`from_portable` exchange
the AION entries alone with every other framework (``aion_core.portable.save_npz`` and
``load_npz`` write and read them).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain

import numpy as np
import torch
from torch import nn

from aion_core import portable
from aion_pytorch.residual import AionResidual

__all__ = ["from_portable", "load_state_dict", "to_portable"]


def _layers(model: nn.Module) -> list[tuple[str, AionResidual]]:
    """Every AionResidual (and AionScale) in ``model`` with its key prefix (``""`` at the top)."""
    return [(f"{name}." if name else "", m) for name, m in model.named_modules() if isinstance(m, AionResidual)]


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        # numpy has no bfloat16; a 0-d float entry is exact in float64.
        return (value.double() if value.is_floating_point() else value).numpy()
    return np.asarray(value)


def load_state_dict(model: nn.Module, state_dict: Mapping, strict: bool = True, assign: bool = False):
    """``model.load_state_dict(state_dict, strict, assign)``, all or nothing for AION layers.

    When torch's load raises (a missing or unexpected key, a wrong shape, a refused AION
    entry), every AION layer of ``model`` gets back the parameters and state it had, the
    same tensor objects included; other modules keep torch's behaviour.

    Examples
    --------
    >>> from aion_pytorch import AionBlock
    >>> block = AionBlock(nn.Linear(4, 4), 4)
    >>> good = block.state_dict()
    >>> try:
    ...     load_state_dict(block, {**good, "aion.ratio_ema": torch.tensor(2.0), "extra": torch.tensor(0)})
    ... except RuntimeError as e:
    ...     print(str(e).splitlines()[0])
    Error(s) in loading state_dict for AionBlock:
    >>> float(block.aion.ratio_ema)  # not 2.0: the failed load wrote nothing of AION
    1.0
    """
    saved = [(layer, {name: (tensor, tensor.detach().clone())
                      for name, tensor in chain(layer._parameters.items(), layer._buffers.items())
                      if tensor is not None})
             for _, layer in _layers(model)]
    try:
        return nn.Module.load_state_dict(model, state_dict, strict=strict, assign=assign)
    except BaseException:
        with torch.no_grad():
            for layer, tensors in saved:
                for name, (original, value) in tensors.items():
                    (layer._parameters if name in layer._parameters else layer._buffers)[name] = original
                    original.copy_(value)
                layer._resync_count(None)
        raise


def to_portable(model: nn.Module) -> dict[str, np.ndarray]:
    """Every AION parameter and state entry of ``model`` as the portable flat dict.

    Examples
    --------
    >>> from aion_pytorch import AionBlock
    >>> sorted(to_portable(nn.Sequential(AionBlock(nn.Linear(4, 4), 4))))[:2]
    ['0.aion.alpha0', '0.aion.beta']
    """
    return {prefix + name: portable.entry(name, _numpy(getattr(layer, name)), key=prefix + name)
            for prefix, layer in _layers(model) for name in portable.ENTRY_DTYPES}


def from_portable(model: nn.Module, flat: Mapping) -> None:
    """Write a portable dict into ``model`` in place; every AION layer needs its entries and
    every entry a layer. The whole dict is checked and converted first, so a failed load
    leaves ``model`` as it was.

    Raises
    ------
    KeyError, TypeError, ValueError
        As :func:`aion_core.portable.read_layers` reads the checkpoint.

    Examples
    --------
    >>> from aion_pytorch import AionResidual
    >>> layer = AionResidual()
    >>> from_portable(layer, {"alpha0": 0.2, "beta": 0.05, "ratio_ema": 3.0, "step_count": 7})
    >>> int(layer.step_count), float(layer.ratio_ema)
    (7, 3.0)
    """
    layers = _layers(model)
    entries, _ = portable.read_layers(flat, [prefix for prefix, _ in layers], _numpy)
    with torch.no_grad():
        for (_, layer), values in zip(layers, entries):
            for name, value in values.items():
                getattr(layer, name).copy_(torch.from_numpy(value))
            layer._resync_count(None)
