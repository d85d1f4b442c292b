"""AION as :mod:`flax.nnx` modules: :class:`AionResidual` and :class:`AionBlock`.

Parameters are :class:`flax.nnx.Param` (``alpha0``, ``beta``); the running state lives in
:class:`AionStat` variables, so it can be filtered apart from parameters
(``nnx.state(model, AionStat)``) and is never differentiated by ``nnx.grad``.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
from flax import nnx

import aion_core as core
from aion_core import adapter
from aion_flax.functional import aion_apply, cast_floating


class AionStat(nnx.Variable):
    """Running state of an AION residual (``ratio_ema``, ``step_count``, ``nonfinite_count``).

    Updated by training forwards, never by an optimiser: filter with ``AionStat``.
    """


class AionResidual(nnx.Module):
    """Adaptive residual ``out = x + alpha * y`` with ``alpha`` from the running energy ratio.

    Parameters
    ----------
    alpha0, beta, ema_gamma, epsilon, k_update, sync_ratio
        See :class:`aion_core.AionConfig`; validated there (ValueError / TypeError) and
        kept as the attribute ``config``.
    axis_name : str or None
        Name of the ``shard_map`` / ``pmap`` axis that splits the batch; the batch ratio
        is then ``pmean``-ed over it, unless ``sync_ratio=False`` (each shard keeps its own
        ratio and state, nothing is reduced over the axis). Not needed under plain ``jit``
        with sharded inputs, where the ratio is over the global batch whatever
        ``sync_ratio`` says.
    deterministic : bool
        Default mode: False trains (ratio measured, state advanced), True evaluates.
        Set by ``model.train()`` / ``model.eval()`` or overridden per call.
    dtype : dtype or None
        Computation dtype, as for Flax layers: floating inputs are cast to it (the output
        then has it). None (default): inputs are used as they come. ``alpha0``, ``beta``
        and the state stay float32/int32 whatever it is (spec section 4a).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> layer = AionResidual()
    >>> out = layer(jnp.ones((2, 4)), jnp.full((2, 4), 2.0))
    >>> int(layer.step_count[...]), round(float(layer.ratio_ema[...]), 4)
    (1, 1.03)
    >>> layer.eval()
    >>> _ = layer(jnp.ones((2, 4)), jnp.ones((2, 4)))
    >>> int(layer.step_count[...])
    1
    """

    def __init__(self, alpha0: float = 0.1, beta: float = 0.05, ema_gamma: float = 0.99,
                 epsilon: float = 1e-8, k_update: int = 1, sync_ratio: bool = True, *,
                 axis_name: str | None = None, deterministic: bool = False, dtype=None) -> None:
        self.config = core.AionConfig(alpha0=alpha0, beta=beta, ema_gamma=ema_gamma,
                                      epsilon=epsilon, k_update=k_update, sync_ratio=sync_ratio)
        self.axis_name = axis_name
        self.deterministic = deterministic
        self.dtype = dtype
        self.alpha0 = nnx.Param(jnp.asarray(self.config.alpha0, jnp.float32))
        self.beta = nnx.Param(jnp.asarray(self.config.beta, jnp.float32))
        fresh = core.initial_state(jnp)
        self.ratio_ema = AionStat(fresh.ratio_ema)
        self.step_count = AionStat(fresh.step_count)
        self.nonfinite_count = AionStat(fresh.nonfinite_count)

    @property
    def state(self) -> core.AionState:
        """The running state as an :class:`aion_core.AionState` of 0-d arrays."""
        return core.AionState(self.ratio_ema[...], self.step_count[...], self.nonfinite_count[...])

    def __call__(self, x: jax.Array, y: jax.Array, x_norm: jax.Array | None = None, *,
                 deterministic: bool | None = None,
                 return_stats: bool = False) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Combine ``x`` and ``y``.

        Parameters
        ----------
        x, y : jax.Array
            Same shape ``(..., D)``, floating dtype.
        x_norm : jax.Array, optional
            Normalised ``x`` (the block's LayerNorm output) for the ratio's denominator.
        deterministic : bool, optional
            Overrides the module's mode for this call (True: eval).
        return_stats : bool
            Also return ``{"alpha", "ratio", "ratio_ema"}`` (0-d, no gradient).

        Returns
        -------
        out : jax.Array, or ``(out, stats)`` when ``return_stats``.
        """
        deterministic = self.deterministic if deterministic is None else deterministic
        x, y, x_norm = cast_floating(self.dtype, x, y, x_norm)
        out, new_state, stats = aion_apply(x, y, x_norm, self.alpha0[...], self.beta[...],
                                           self.state, self.config, train=not deterministic,
                                           axis_name=self.axis_name)
        if not deterministic:
            self.ratio_ema[...] = new_state.ratio_ema
            self.step_count[...] = new_state.step_count
            self.nonfinite_count[...] = new_state.nonfinite_count
        return (out, stats) if return_stats else out

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view(model, deterministic=...)``."""
        if deterministic is not None:
            self.deterministic = deterministic


class AionScale(AionResidual):
    """AION's scale alone, ``alpha * y``, for blocks that add the residual themselves.

    Same constructor, parameters and :class:`AionStat` state as :class:`AionResidual`;
    ``x_norm`` (the branch's normalised input, the ratio's denominator) is required.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> scale = AionScale()
    >>> out = scale(jnp.full((2, 4), 2.0), jnp.ones((2, 4)))
    >>> round(float(out[0, 0]), 4), int(scale.step_count[...])
    (0.1902, 1)
    """

    def __call__(self, y: jax.Array, x_norm: jax.Array, *,  # type: ignore[override]
                 deterministic: bool | None = None,
                 return_stats: bool = False) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """``alpha * y`` (and the stats with ``return_stats``)."""
        return super().__call__(None, y, x_norm, deterministic=deterministic, return_stats=return_stats)


class AionBlock(nnx.Module):
    """Pre-norm residual block: ``AionResidual(x, layer(LayerNorm(x)), x_norm=LayerNorm(x))``.

    Parameters
    ----------
    layer : callable
        The branch, usually an ``nnx.Module`` mapping ``(..., dim)`` to ``(..., dim)``.
    dim : int
        Feature size (the LayerNorm's).
    alpha0, beta, ema_gamma, epsilon, k_update, sync_ratio, axis_name, deterministic, dtype
        Passed to :class:`AionResidual` (``dtype`` to the LayerNorm too).
    param_dtype : dtype
        The LayerNorm's parameter dtype (default float32); AION's own stay float32.
    rngs : nnx.Rngs, optional
        For the LayerNorm (its initialisers are constant; ``nnx.Rngs(0)`` if omitted).

    Examples
    --------
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> block = AionBlock(nnx.Linear(8, 8, rngs=nnx.Rngs(0)), 8)
    >>> block(jnp.ones((2, 8))).shape
    (2, 8)
    """

    def __init__(self, layer, dim: int, alpha0: float = 0.1, beta: float = 0.05,
                 ema_gamma: float = 0.99, epsilon: float = 1e-8, k_update: int = 1,
                 sync_ratio: bool = True, *,
                 axis_name: str | None = None, deterministic: bool = False, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs | None = None) -> None:
        self.dim = adapter.check_dim(dim)
        # LayerNorm in the two-pass variance (as torch computes it), epsilon 1e-5 (spec).
        self.norm = nnx.LayerNorm(self.dim, epsilon=1e-5, use_fast_variance=False, dtype=dtype,
                                  param_dtype=param_dtype, rngs=rngs if rngs is not None else nnx.Rngs(0))
        self.layer = layer
        self.aion = AionResidual(alpha0, beta, ema_gamma, epsilon, k_update, sync_ratio, axis_name=axis_name,
                                 deterministic=deterministic, dtype=dtype)

    @property
    def config(self) -> core.AionConfig:
        """The validated hyper-parameters of the block's :class:`AionResidual`."""
        return self.aion.config

    def __call__(self, x: jax.Array, *, deterministic: bool | None = None,
                 return_stats: bool = False) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """``x`` of shape ``(..., dim)`` to the block output (and stats, see AionResidual)."""
        return adapter.block_forward(jnp, x, self.dim, self.norm, self.layer, self.aion,
                                     deterministic=deterministic, return_stats=return_stats)


# nnx.Module's metaclass hides ``__init__``'s signature behind ``(*args, **kwargs)``;
# show the real one to ``help()``, IDEs and ``inspect``.
for _cls in (AionResidual, AionScale, AionBlock):
    _cls.__signature__ = inspect.signature(_cls.__init__).replace(
        parameters=list(inspect.signature(_cls.__init__).parameters.values())[1:],
        return_annotation=inspect.Signature.empty)
del _cls
