"""AION as :mod:`mlx.nn` modules: :class:`AionResidual`, :class:`AionScale`, :class:`AionBlock`.

Parameters ``alpha0`` and ``beta`` are trainable arrays; the running state (``ratio_ema``,
``step_count``, ``nonfinite_count``) is kept as :class:`mlx.nn.BatchNorm` keeps its running
statistics: module arrays that are frozen, so they are in ``parameters()`` (saved by
``save_weights``, carried by ``model.state`` through :func:`mlx.core.compile`) and not in
``trainable_parameters()`` (never differentiated or optimised), and that a forward replaces
in training mode only (``model.train()``, the default; ``model.eval()`` holds them).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

import aion_core as core
from aion_core import adapter, portable
from aion_mlx import namespace
from aion_mlx.functional import aion_apply, require_arrays

_STATE_NAMES = tuple(core.STATE_SPEC)
#: Entry name -> the MLX dtype every AION array keeps (spec section 4a), whatever a
#: ``model.set_dtype(...)`` or a loaded file would make it.
_ENTRY_DTYPES = {name: getattr(mx, dtype) for name, dtype in portable.ENTRY_DTYPES.items()}


class _StateAlwaysFrozen(set):
    """An AionResidual's ``_no_grad``: the keys MLX leaves out of ``trainable_parameters()``.

    ``Module.unfreeze`` called on any parent module clears each submodule's ``_no_grad``
    directly (not through the submodule's ``unfreeze``), so the set itself puts the running
    state back whatever is removed from it.
    """

    def clear(self) -> None:
        super().clear()
        self.update(_STATE_NAMES)

    def difference_update(self, *others) -> None:
        super().difference_update(*others)
        self.update(_STATE_NAMES)

    def discard(self, key) -> None:
        if key not in _STATE_NAMES:
            super().discard(key)

    def remove(self, key) -> None:
        if key not in _STATE_NAMES:
            super().remove(key)

    def __isub__(self, other):
        self.difference_update(other)
        return self


class AionResidual(nn.Module):
    """Adaptive residual ``out = x + alpha * y`` with ``alpha`` from the running energy ratio.

    Parameters
    ----------
    alpha0, beta, ema_gamma, epsilon, k_update, sync_ratio
        See :class:`aion_core.AionConfig`; validated there (ValueError / TypeError) and
        kept as the attribute ``config``.
    group : mlx.core.distributed.Group or None
        The data-parallel processes whose batch ratios are averaged (with ``sync_ratio``);
        None: the global group, ``mx.distributed.init()``, as
        :func:`mlx.nn.average_gradients` takes it. Nothing is reduced in a group of one.

    Notes
    -----
    ``alpha0`` and ``beta`` (float32) are trainable; ``ratio_ema`` (float32),
    ``step_count`` and ``nonfinite_count`` (int32) are frozen, and stay frozen through
    ``unfreeze()`` of the layer or of any module holding it. All five keep those dtypes
    under ``model.set_dtype(mx.bfloat16)``. The output has the (promoted) dtype of ``x``
    and ``y``; the energies are formed in float32 for 16-bit inputs (spec section 4a).

    Examples
    --------
    >>> import mlx.core as mx
    >>> layer = AionResidual()
    >>> out = layer(mx.ones((2, 4)), mx.full((2, 4), 2.0))
    >>> layer.step_count.item(), round(layer.ratio_ema.item(), 4)
    (1, 1.03)
    >>> sorted(layer.trainable_parameters())
    ['alpha0', 'beta']
    >>> _ = layer.eval()
    >>> _ = layer(mx.ones((2, 4)), mx.ones((2, 4)))
    >>> layer.step_count.item()
    1
    """

    def __init__(self, alpha0: float = 0.1, beta: float = 0.05, ema_gamma: float = 0.99,
                 epsilon: float = 1e-8, k_update: int = 1, sync_ratio: bool = True, *,
                 group: mx.distributed.Group | None = None) -> None:
        super().__init__()
        self.config = core.AionConfig(alpha0=alpha0, beta=beta, ema_gamma=ema_gamma,
                                      epsilon=epsilon, k_update=k_update, sync_ratio=sync_ratio)
        self.group = group
        self.alpha0 = mx.array(self.config.alpha0, dtype=mx.float32)
        self.beta = mx.array(self.config.beta, dtype=mx.float32)
        for name, value in zip(_STATE_NAMES, core.initial_state(mx)):
            setattr(self, name, value)
        self._no_grad = _StateAlwaysFrozen(_STATE_NAMES)

    def __setitem__(self, key, value):
        # Every write of an entry (attribute, update(), load_weights(), set_dtype()) lands
        # here: it keeps the entry's dtype. A cast, not a check, so tracing is unaffected.
        dtype = _ENTRY_DTYPES.get(key)
        if dtype is not None and isinstance(value, mx.array) and value.dtype != dtype:
            value = value.astype(dtype)
        super().__setitem__(key, value)

    def running_state(self) -> core.AionState:
        """The running state as an :class:`aion_core.AionState` of 0-d arrays.

        (Not ``state``: that is MLX's "every array of the module", the tree
        :func:`mlx.core.compile` is given as its ``inputs`` and ``outputs``.)
        """
        return core.AionState(*(self[name] for name in _STATE_NAMES))

    def _extra_repr(self) -> str:
        c = self.config
        return (f"alpha0={c.alpha0}, beta={c.beta}, ema_gamma={c.ema_gamma}, epsilon={c.epsilon}, "
                f"k_update={c.k_update}, sync_ratio={c.sync_ratio}")

    def __call__(self, x: mx.array, y: mx.array, x_norm: mx.array | None = None, *,
                 return_stats: bool = False) -> mx.array | tuple[mx.array, dict[str, mx.array]]:
        """Combine ``x`` and ``y``.

        Parameters
        ----------
        x, y : mlx.core.array
            Same shape ``(..., D)``, floating dtype.
        x_norm : mlx.core.array, optional
            Normalised ``x`` (the block's LayerNorm output) for the ratio's denominator.
        return_stats : bool
            Also return ``{"alpha", "ratio", "ratio_ema"}`` (0-d, no gradient).

        Returns
        -------
        out : mlx.core.array, or ``(out, stats)`` when ``return_stats``.
        """
        out, new_state, stats = aion_apply(x, y, x_norm, self.alpha0, self.beta, self.running_state(),
                                           self.config,
                                           train=self.training, group=self.group)
        if self.training:
            for name, value in zip(_STATE_NAMES, new_state):
                self[name] = value
        return (out, stats) if return_stats else out


class AionScale(AionResidual):
    """AION's scale alone, ``alpha * y``, for blocks that add the residual themselves.

    Same constructor, parameters and state as :class:`AionResidual`; ``x_norm`` (the
    branch's normalised input, the ratio's denominator) is required.

    Examples
    --------
    >>> import mlx.core as mx
    >>> scale = AionScale()
    >>> out = scale(mx.full((2, 4), 2.0), mx.ones((2, 4)))
    >>> round(out[0, 0].item(), 4), scale.step_count.item()
    (0.1902, 1)
    """

    def __call__(self, y: mx.array, x_norm: mx.array, *,  # type: ignore[override]
                 return_stats: bool = False) -> mx.array | tuple[mx.array, dict[str, mx.array]]:
        """``alpha * y`` (and the stats with ``return_stats``)."""
        return super().__call__(None, y, x_norm, return_stats=return_stats)


def aion_layers(model: nn.Module) -> list[tuple[str, AionResidual]]:
    """Every :class:`AionResidual` in ``model`` with its dotted path (``""`` for ``model`` itself)."""
    return [(path, module) for path, module in model.named_modules() if isinstance(module, AionResidual)]


class AionBlock(nn.Module):
    """Pre-norm residual block: ``AionResidual(x, layer(LayerNorm(x)), x_norm=LayerNorm(x))``.

    Parameters
    ----------
    layer : mlx.nn.Module or callable
        The branch, mapping ``(..., dim)`` to ``(..., dim)``.
    dim : int
        Feature size (the ``nn.LayerNorm``'s, epsilon 1e-5).
    alpha0, beta, ema_gamma, epsilon, k_update, sync_ratio, group
        Passed to :class:`AionResidual`.

    Examples
    --------
    >>> import mlx.core as mx
    >>> import mlx.nn as nn
    >>> block = AionBlock(nn.Linear(8, 8), 8)
    >>> block(mx.ones((2, 8))).shape
    (2, 8)
    """

    def __init__(self, layer, dim: int, alpha0: float = 0.1, beta: float = 0.05,
                 ema_gamma: float = 0.99, epsilon: float = 1e-8, k_update: int = 1,
                 sync_ratio: bool = True, *, group: mx.distributed.Group | None = None) -> None:
        super().__init__()
        self.dim = adapter.check_dim(dim)
        self.norm = nn.LayerNorm(self.dim, eps=1e-5)
        self.layer = layer
        self.aion = AionResidual(alpha0, beta, ema_gamma, epsilon, k_update, sync_ratio, group=group)

    @property
    def config(self) -> core.AionConfig:
        """The validated hyper-parameters of the block's :class:`AionResidual`."""
        return self.aion.config

    def __call__(self, x: mx.array, *,
                 return_stats: bool = False) -> mx.array | tuple[mx.array, dict[str, mx.array]]:
        """``x`` of shape ``(..., dim)`` to the block output (and stats, see AionResidual)."""
        require_arrays(x=x)
        return adapter.block_forward(namespace, x, self.dim, self.norm, self.layer, self.aion,
                                     return_stats=return_stats)
