"""``AionResidual`` and ``AionBlock``: parameters, buffers, train/eval and checkpoints."""

from __future__ import annotations

import array_api_compat.torch as xp
import torch
from torch import nn

import aion_core
from aion_pytorch.distributed import replica_mean_or_none


def _detach(t: torch.Tensor) -> torch.Tensor:
    return t.detach()


class AionResidual(nn.Module):
    """Adaptive residual ``out = x + alpha * y``; alpha shrinks as the smoothed energy ratio grows.

    Parameters
    ----------
    alpha0, beta : float
        Initial values of the trainable float32 parameters (``alpha0 > 0``, ``beta >= 0``).
    ema_gamma : float
        EMA factor of the stored ratio in [0, 1]; 1 means no smoothing.
    epsilon : float
        Added to the input energy before dividing (> 0).
    k_update : int
        Recompute the ratio every ``k_update`` training steps (>= 1); on the other steps
        alpha comes from the stored ratio and the current ``alpha0``, ``beta``.

    Notes
    -----
    Buffers: ``ratio_ema`` (float32), ``step_count`` and ``nonfinite_count`` (int32).
    ``forward`` never reads a value on the host; ``return_stats=True`` returns 0-d tensors.
    Under ``torch.distributed`` the batch ratio is averaged over ranks.
    ``alpha_cached`` (read-only) is the eval alpha, as aion-torch 1.0.2 users log it.

    Examples
    --------
    >>> layer = AionResidual(alpha0=0.2, beta=0.1)
    >>> layer
    AionResidual(alpha0=0.2, beta=0.1, ema_gamma=0.99, epsilon=1e-08, k_update=1)
    >>> layer.alpha_cached  # alpha0 / (1 + beta * ratio_ema), ratio_ema = 1.0 when fresh
    tensor(0.1818)
    """

    def __init__(self, alpha0: float = 0.1, beta: float = 0.05, ema_gamma: float = 0.99,
                 epsilon: float = 1e-8, k_update: int = 1):
        super().__init__()
        self.config = aion_core.AionConfig(alpha0, beta, ema_gamma, epsilon, k_update)
        self.alpha0 = nn.Parameter(torch.tensor(self.config.alpha0, dtype=torch.float32))
        self.beta = nn.Parameter(torch.tensor(self.config.beta, dtype=torch.float32))
        for name, (dtype, _, value) in aion_core.STATE_SPEC.items():
            self.register_buffer(name, torch.tensor(value, dtype=getattr(torch, dtype)))
        # Host-side phase of the k_update schedule, so choosing the branch needs no sync.
        # It takes k values only: under torch.compile at most k_update graphs.
        self._phase = 0
        self._register_load_state_dict_pre_hook(self._upgrade_state_dict)
        self.register_load_state_dict_post_hook(AionResidual._resync_phase)

    @property
    def ema_gamma(self) -> float:
        return self.config.ema_gamma

    @property
    def epsilon(self) -> float:
        return self.config.epsilon

    @property
    def k_update(self) -> int:
        return self.config.k_update

    @property
    def alpha_cached(self) -> torch.Tensor:
        """The eval alpha, ``alpha0 / (1 + beta * ratio_ema)``: a new detached 0-d float32 tensor.

        aion-torch 1.0.2 kept it as a buffer holding the alpha of the last training forward;
        here it is computed on the layer's device from the current parameters and the
        stored ratio (no host read), so it is never stale. With ``k_update = 1`` and
        finite float32 inputs it equals 1.0.2's value after every training forward. Read-only:
        writing to the returned tensor does not change the layer.
        """
        with torch.no_grad():
            return aion_core.compute_alpha(self.alpha0.detach().float(), self.beta.detach().float(),
                                           self.ratio_ema.float())

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_norm: torch.Tensor | None = None,
                return_stats: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x + alpha * y``; with ``return_stats`` also ``{"alpha", "ratio", "ratio_ema"}`` tensors."""
        # A clone: autograd may save the ratio (for beta's gradient), and a later training
        # forward updates the buffer in place.
        state = aion_core.AionState(self.ratio_ema.clone(), self.step_count, self.nonfinite_count)
        if self.training:
            out, new, stats = aion_core.train_step(
                x, y, x_norm, self.alpha0, self.beta, state, self.config, xp=xp,
                update=self._phase == 0, replica_mean=replica_mean_or_none(), stop_gradient=_detach)
            with torch.no_grad():
                self.ratio_ema.copy_(new.ratio_ema)
                self.step_count.copy_(new.step_count)
                self.nonfinite_count.copy_(new.nonfinite_count)
            if self.config.k_update > 1:
                self._phase = (self._phase + 1) % self.config.k_update
        else:
            out, stats = aion_core.eval_step(x, y, self.alpha0, self.beta, state, x_norm=x_norm,
                                             xp=xp, stop_gradient=_detach)
        return (out, stats) if return_stats else out

    def _upgrade_state_dict(self, state_dict, prefix, *args, **kwargs):
        # aion-torch 1.0.2 checkpoints (spec section 9): alpha_cached is derived state here
        # (eval alpha is recomputed from alpha0, beta and ratio_ema), nonfinite_count is new.
        for name in aion_core.portable.IGNORED_ENTRIES:
            state_dict.pop(prefix + name, None)
        for name, value in aion_core.portable.DEFAULTS.items():
            state_dict.setdefault(prefix + name, torch.tensor(value))
        for name, (dtype, _, _) in aion_core.STATE_SPEC.items():
            if prefix + name in state_dict:
                state_dict[prefix + name] = state_dict[prefix + name].to(getattr(torch, dtype))

    def _resync_phase(self, incompatible_keys):
        self._phase = int(self.step_count) % self.config.k_update  # one sync, at load time

    def extra_repr(self) -> str:
        # The constructor's values (the current parameters are self.alpha0, self.beta):
        # reading a parameter here would be a host sync, and fails on meta tensors.
        return ", ".join(f"{k}={v}" for k, v in self.config.to_dict().items())


class AionBlock(nn.Module):
    """Pre-norm residual block ``x + alpha * layer(LayerNorm(x))``, ratio taken on ``LayerNorm(x)``.

    Same constructor and ``state_dict`` keys (``norm.*``, ``layer.*``, ``aion.*``) as aion-torch 1.0.2.
    """

    def __init__(self, layer: nn.Module, dim: int, alpha0: float = 0.1, beta: float = 0.05,
                 ema_gamma: float = 0.99, epsilon: float = 1e-8, k_update: int = 1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layer = layer
        self.aion = AionResidual(alpha0, beta, ema_gamma, epsilon, k_update)

    @property
    def config(self) -> aion_core.AionConfig:
        """The validated hyper-parameters of the block's :class:`AionResidual`."""
        return self.aion.config

    def forward(self, x: torch.Tensor,
                return_stats: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_norm = self.norm(x)
        return self.aion(x, self.layer(x_norm), x_norm=x_norm, return_stats=return_stats)
