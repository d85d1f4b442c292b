"""AION as :mod:`flax.linen` modules: :class:`AionResidual` and :class:`AionBlock`.

Parameters ``alpha0`` and ``beta`` are in the ``"params"`` collection; the running state
(``ratio_ema``, ``step_count``, ``nonfinite_count``) is in the ``"aion_stats"``
collection. A training forward writes the state only when ``"aion_stats"`` is mutable
and the module is not being initialised, like ``BatchNorm`` and ``"batch_stats"``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import aion_core as core
from aion_core import adapter
from aion_flax.functional import aion_apply, cast_floating

#: Variable collection that holds the running state.
STATS_COLLECTION = "aion_stats"


class _Validated:
    """The ``config`` property of both modules; the hyper-parameters are checked when built."""

    def __post_init__(self) -> None:
        _ = self.config  # refuse bad hyper-parameters when the module is built
        super().__post_init__()

    @property
    def config(self) -> core.AionConfig:
        """The validated :class:`aion_core.AionConfig` of this module."""
        return core.AionConfig(alpha0=self.alpha0, beta=self.beta, ema_gamma=self.ema_gamma,
                               epsilon=self.epsilon, k_update=self.k_update, sync_ratio=self.sync_ratio)


class AionResidual(_Validated, nn.Module):
    """Adaptive residual ``out = x + alpha * y`` (Linen).

    Attributes
    ----------
    alpha0, beta, ema_gamma, epsilon, k_update, sync_ratio
        See :class:`aion_core.AionConfig`; validated when the module is built (the
        :class:`aion_core.AionConfig` is the property ``config``).
    axis_name : str or None
        ``shard_map`` / ``pmap`` axis splitting the batch; the ratio is ``pmean``-ed over it,
        unless ``sync_ratio=False`` (each shard keeps its own ratio and state). Under plain
        ``jit`` with a sharded batch the ratio is the global one whatever ``sync_ratio`` says.
    deterministic : bool or None
        True evaluates, False trains; give it here or at call time (not both),
        as for ``nn.Dropout``.
    dtype : dtype or None
        Computation dtype, as for Linen layers: floating inputs are cast to it. None: as
        they come. The parameters and state stay float32/int32 (spec section 4a).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> x, y = jnp.ones((2, 4)), jnp.full((2, 4), 2.0)
    >>> layer = AionResidual()
    >>> variables = layer.init(jax.random.key(0), x, y, deterministic=False)
    >>> out, updates = layer.apply(variables, x, y, deterministic=False, mutable=["aion_stats"])
    >>> round(float(updates["aion_stats"]["ratio_ema"]), 4)
    1.03
    """

    alpha0: float = 0.1
    beta: float = 0.05
    ema_gamma: float = 0.99
    epsilon: float = 1e-8
    k_update: int = 1
    sync_ratio: bool = True
    axis_name: Any = None
    deterministic: bool | None = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array, x_norm: jax.Array | None = None, *,
                 deterministic: bool | None = None,
                 return_stats: bool = False) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Combine ``x`` and ``y`` (see :class:`aion_flax.AionResidual` for arguments)."""
        return self._combine(x, y, x_norm, deterministic, return_stats)

    def _combine(self, x, y, x_norm, deterministic, return_stats):
        # Called from a compact __call__ (this class's or AionScale's); x None: alpha * y.
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        x, y, x_norm = cast_floating(self.dtype, x, y, x_norm)
        config = self.config
        alpha0 = self.param("alpha0", lambda _: jnp.asarray(config.alpha0, jnp.float32))
        beta = self.param("beta", lambda _: jnp.asarray(config.beta, jnp.float32))
        fresh = core.initial_state(jnp)
        variables = [self.variable(STATS_COLLECTION, name, lambda v=value: v)
                     for name, value in zip(core.AionState._fields, fresh)]
        state = core.AionState(*(v.value for v in variables))
        out, new_state, stats = aion_apply(x, y, x_norm, alpha0, beta, state, config,
                                           train=not deterministic, axis_name=self.axis_name)
        if (not deterministic and self.is_mutable_collection(STATS_COLLECTION)
                and not self.is_initializing()):
            for variable, value in zip(variables, new_state):
                variable.value = value
        return (out, stats) if return_stats else out


class AionScale(AionResidual):
    """AION's scale alone, ``alpha * y`` (Linen), for blocks that add the residual themselves.

    Same attributes, parameters and ``aion_stats`` as :class:`AionResidual`; ``x_norm``
    (the branch's normalised input) is required.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> y, x_norm = jnp.full((2, 4), 2.0), jnp.ones((2, 4))
    >>> scale = AionScale()
    >>> variables = scale.init(jax.random.key(0), y, x_norm, deterministic=False)
    >>> out, updates = scale.apply(variables, y, x_norm, deterministic=False, mutable=["aion_stats"])
    >>> round(float(out[0, 0]), 4), round(float(updates["aion_stats"]["ratio_ema"]), 4)
    (0.1902, 1.03)
    """

    @nn.compact
    def __call__(self, y: jax.Array, x_norm: jax.Array, *,  # type: ignore[override]
                 deterministic: bool | None = None,
                 return_stats: bool = False) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """``alpha * y`` (and the stats with ``return_stats``)."""
        return self._combine(None, y, x_norm, deterministic, return_stats)


class AionBlock(_Validated, nn.Module):
    """Pre-norm residual block: ``AionResidual(x, layer(LayerNorm(x)), x_norm=LayerNorm(x))``.

    Attributes
    ----------
    layer : nn.Module
        The branch, mapping ``(..., D)`` to ``(..., D)``.
    dim : int or None
        Size of the feature (last) axis, as on the other adapters. Linen infers shapes from
        the input, so it may be left out; when given, an input of another size is refused.
    alpha0, beta, ema_gamma, epsilon, k_update, sync_ratio, axis_name, deterministic, dtype
        As for :class:`AionResidual` (``dtype`` for the LayerNorm too).
    param_dtype : dtype
        The LayerNorm's parameter dtype (default float32); AION's own stay float32.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> block = AionBlock(nn.Dense(8))
    >>> variables = block.init(jax.random.key(0), jnp.ones((2, 8)), deterministic=True)
    >>> sorted(variables), sorted(variables["params"])
    (['aion_stats', 'params'], ['aion', 'layer', 'norm'])
    """

    layer: nn.Module
    dim: int | None = None
    alpha0: float = 0.1
    beta: float = 0.05
    ema_gamma: float = 0.99
    epsilon: float = 1e-8
    k_update: int = 1
    sync_ratio: bool = True
    axis_name: Any = None
    deterministic: bool | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        if self.dim is not None:
            adapter.check_dim(self.dim)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool | None = None,
                 return_stats: bool = False) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """``x`` of shape ``(..., D)`` to the block output (and stats when asked)."""
        error = core.block_input_error(jnp, x, x.shape[-1] if self.dim is None and x.ndim else self.dim)
        if error is not None:  # shapes and dtypes only: raised while tracing
            raise error
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        # Two-pass variance (as torch computes it), epsilon 1e-5 (spec).
        x_norm = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                              param_dtype=self.param_dtype, name="norm")(x)
        aion = AionResidual(self.alpha0, self.beta, self.ema_gamma, self.epsilon, self.k_update,
                            self.sync_ratio, self.axis_name, dtype=self.dtype, name="aion")
        return aion(x, self.layer(x_norm), x_norm=x_norm, deterministic=deterministic,
                    return_stats=return_stats)
