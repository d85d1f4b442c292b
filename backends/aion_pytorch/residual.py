"""``AionResidual`` and ``AionBlock``: parameters, buffers, train/eval and checkpoints."""

from __future__ import annotations

import array_api_compat.torch as xp
import torch
import torch.distributed as dist
from torch import nn

import aion_core
import aion_torch_ops
from aion_core import adapter
from aion_pytorch import checks, closed_form
from aion_pytorch.distributed import replica_mean_or_none


def _wrap_int32(n: int) -> int:
    """``n`` wrapped to int32's range, as the step_count buffer's increment wraps (spec section 3)."""
    return (n + 2**31) % 2**32 - 2**31


def _detach(t: torch.Tensor) -> torch.Tensor:
    return t.detach()


def _functorch_transforms_active() -> bool:
    # torch.func.grad / vmap / jvp: they trace standard ops; a Python autograd node would
    # need setup_context and a vmap rule.
    return bool(torch._C._functorch.get_interpreter_stack())


class _Shared:
    """A process group held by reference: deep copies of a layer share it (a group cannot be
    copied, and a copy, e.g. an EMA model, runs in the same group); pickling drops it (a group
    exists in its process only)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return _Shared, (None,)


_PER_EXAMPLE_STATE = (
    "AION in training mode under torch.func.vmap over examples: each example would get its own batch "
    "ratio and new running state, and the layer holds one. For per-example work (per-sample gradients) "
    "call model.eval() first, as for BatchNorm; to train an ensemble, vmap over stacked buffers too "
    "(torch.func.stack_module_state, functional_call with the batched buffers).")


def _version(t: torch.Tensor) -> int | None:
    # The host-side counter torch bumps on every in-place write of ``t``; an inference
    # tensor (made under torch.inference_mode) has none.
    return None if t.is_inference() else t._version


class AionResidual(nn.Module):
    """AION as a ``torch.nn.Module``: ``out = x + alpha * y``, alpha shrinking as the smoothed energy ratio grows.

    Parameters
    ----------
    alpha0, beta, ema_gamma, epsilon, k_update
        As :class:`aion_core.AionConfig`, which validates them (the attribute ``config``);
        ``alpha0`` and ``beta`` are float32 parameters.
    sync_ratio : bool
        Under ``torch.distributed`` (DDP, FSDP): True (default) averages the batch ratio
        over the ranks of ``process_group`` (an all-reduce in the forward, one of its
        gradient in the backward), so training equals one process holding the whole batch;
        False keeps each rank's own batch ratio and issues no collective, as ``BatchNorm``
        against ``SyncBatchNorm`` (spec section 7).
    process_group : torch.distributed.ProcessGroup, optional
        The data-parallel replicas of this layer, as ``SyncBatchNorm``'s: None (default) is
        the default group, right when every rank holds this layer and a share of the batch
        (DDP, FSDP, HSDP; tensor and sequence parallel ranks too, whose ``DTensor`` inputs
        give the ratio of the whole tensor). Pipeline stages and
        other meshes where ranks hold different layers pass the layer's data-parallel group,
        e.g. ``mesh["dp"].get_group()``; :func:`~aion_pytorch.set_process_group` sets it on a
        whole model. A runtime setting: not in ``config``, ``state_dict`` or ``repr``.

    Notes
    -----
    Buffers: ``ratio_ema`` (float32), ``step_count`` and ``nonfinite_count`` (int32).
    ``forward`` never reads a value on the host; ``return_stats=True`` returns 0-d tensors.
    Under ``torch.distributed`` the batch ratio is averaged over ranks unless
    ``sync_ratio=False``; DDP's buffer sync (``forward_sync_buffers``, ``broadcast_buffers``
    before torch 2.13; on by default) then still copies rank 0's buffers to every rank
    before each forward.

    With ``k_update > 1`` an eager layer keeps a copy of ``step_count`` on the host (wrapping
    in int32 as the buffer does), so choosing the step needs no sync. A ``step_count`` written from outside (an
    in-place op such as ``fill_`` or ``copy_``, a new buffer, ``load_state_dict``, a move to
    another device) is noticed from the buffer's version counter and read once, on the next
    training forward. Not noticed: writes that bypass the version counter (through ``.data``
    or a numpy view). Compiled, the step is chosen on the device from ``step_count``.

    Activation checkpointing: a training forward that runs during a backward pass (a
    recomputation) replays the state and step its first run read and writes nothing
    (spec section 6a, :class:`aion_core.adapter.ReplayLog`).
    ``alpha_cached`` (read-only) is the eval alpha, as aion-torch 1.0.2 users log it.

    Examples
    --------
    >>> layer = AionResidual(alpha0=0.2, beta=0.1)
    >>> layer
    AionResidual(alpha0=0.2, beta=0.1, ema_gamma=0.99, epsilon=1e-08, k_update=1, sync_ratio=True)
    >>> layer.alpha_cached  # the eval alpha; ratio_ema = 1.0 when fresh
    tensor(0.1818)
    """

    def __init__(self, alpha0: float = 0.1, beta: float = 0.05, ema_gamma: float = 0.99,
                 epsilon: float = 1e-8, k_update: int = 1, sync_ratio: bool = True,
                 process_group: dist.ProcessGroup | None = None):
        super().__init__()
        self.config = aion_core.AionConfig(alpha0, beta, ema_gamma, epsilon, k_update, sync_ratio)
        self._group = _Shared(process_group)
        self.alpha0 = nn.Parameter(torch.tensor(self.config.alpha0, dtype=torch.float32))
        self.beta = nn.Parameter(torch.tensor(self.config.beta, dtype=torch.float32))
        for name, (dtype, _, value) in aion_core.STATE_SPEC.items():
            self.register_buffer(name, torch.tensor(value, dtype=getattr(torch, dtype)))
        # A host-side copy of step_count (int32, wrapping as the buffer does: spec section 3),
        # so choosing the step of the k_update schedule needs no sync. Eager only.
        self._count = 0
        # The step_count buffer the copy belongs to and its version after the layer's own
        # last write: any other buffer or version means step_count was written from outside.
        self._count_mark = (self.step_count, _version(self.step_count))
        # Training forwards that activation checkpointing may recompute (aion_core.adapter.ReplayLog).
        self._replays = adapter.ReplayLog()
        self._register_load_state_dict_pre_hook(self._upgrade_state_dict)
        self.register_load_state_dict_post_hook(AionResidual._resync_count)

    @property
    def process_group(self) -> dist.ProcessGroup | None:
        """The ranks whose batch ratios ``sync_ratio`` averages (None: the default group); settable."""
        return self._group.value

    @process_group.setter
    def process_group(self, group: dist.ProcessGroup | None) -> None:
        self._group = _Shared(group)

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
    def sync_ratio(self) -> bool:
        return self.config.sync_ratio

    @property
    def alpha_cached(self) -> torch.Tensor:
        """The eval alpha from the current parameters and ``ratio_ema``: a new detached 0-d float32 tensor.

        aion-torch 1.0.2 kept it as a buffer holding the alpha of the last training forward;
        here it is computed on the layer's device from the current parameters and the
        stored ratio (no host read), so it is never stale. With ``k_update = 1`` and
        finite float32 inputs it equals 1.0.2's value after every training forward. Read-only:
        writing to the returned tensor does not change the layer.
        """
        with torch.no_grad():
            return adapter.alpha_from_ratio(xp, self.alpha0.detach(), self.beta.detach(), self.ratio_ema)

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_norm: torch.Tensor | None = None,
                return_stats: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x + alpha * y``; with ``return_stats`` also ``{"alpha", "ratio", "ratio_ema"}`` tensors."""
        return self._step(x, y, x_norm, return_stats)

    def _step(self, x, y, x_norm, return_stats):
        # x None: the scale-only form (AionScale). Checked here, compile-safe, and nowhere
        # else: every core call below takes check=False.
        stand_in = checks.check_inputs(x, y, x_norm)
        if stand_in is not None:  # only while torch.compile traces bad input: it raises when run
            return (stand_in, {}) if return_stats else stand_in
        if not self.training:
            # A copy: autograd may save the ratio, and a later training forward writes the buffer.
            # (A standard op: an exported eval graph needs nothing of this package.)
            state = aion_core.AionState(self.ratio_ema.clone(), self.step_count, self.nonfinite_count)
            out, stats = aion_core.eval_step(x, y, self.alpha0, self.beta, state, x_norm=x_norm,
                                             xp=xp, stop_gradient=_detach, check=False)
            return (out, stats) if return_stats else out
        compiling = torch.compiler.is_compiling()
        tracing = not compiling and (torch.jit.is_tracing() or _functorch_transforms_active())
        if tracing or compiling:
            # Standard ops: Inductor fuses them itself, and neither the TorchScript-based ONNX
            # exporter nor torch.func can take a Python autograd node. The schedule is chosen
            # on the device and, compiled, the state read through snapshot_state: a
            # recomputation replays both.
            state = (aion_core.AionState(self.ratio_ema.clone(), self.step_count, self.nonfinite_count) if tracing
                     else aion_torch_ops.snapshot_state(y, self.ratio_ema, self.step_count, self.nonfinite_count))
            out, new, stats = adapter.scheduled_train_step(
                x, y, x_norm, self.alpha0, self.beta, state, self.config, xp=xp,
                replica_mean=replica_mean_or_none(group=self._group.value), stop_gradient=_detach, check=False)
            self._write_state(new)
            return (out, stats) if return_stats else out
        replica_mean = replica_mean_or_none(False, self._group.value)
        # On the CPU the node is one C++ kernel each way (aion_pytorch.kernels): it reads the
        # state from the buffers and writes the new state into them itself.
        kernel = closed_form.uses_kernel(x, y, x_norm, self.config, replica_mean)
        # A checkpoint's recomputation replays the state and step its first run read, and writes nothing.
        record = self._replays.find(aion_torch_ops.fingerprint(y)) if aion_torch_ops.in_recomputation() else None
        buffers = aion_core.AionState(self.ratio_ema, self.step_count, self.nonfinite_count)
        if record is not None:
            state, phase = record.state, record.phase
        else:
            if self.config.k_update > 1:
                self._check_count()
            phase = self._count % self.config.k_update
            logged = aion_torch_ops.may_be_recomputed()
            # A copy: autograd may save the ratio (for beta's gradient), and this or a later
            # training forward updates the buffer in place; the replay log keeps it. The
            # kernel reads the buffer before it writes it, so it needs a copy for the log only.
            state = buffers if kernel and not logged else buffers._replace(ratio_ema=self.ratio_ema.clone())
        # One autograd node with the closed-form gradient; the phase is step_count % k_update,
        # so the core's schedule rule applied to it picks the step the counter would.
        out, new, stats = closed_form.train_step(x, y, x_norm, self.alpha0, self.beta, state, self.config,
                                                 update=aion_core.is_update_step(phase, self.config.k_update),
                                                 replica_mean=replica_mean, kernel=kernel,
                                                 write_to=buffers if record is None else None)
        if record is None:
            if not kernel:
                self._write_state(new)
            if self.config.k_update > 1:
                self._count = _wrap_int32(self._count + 1)
                self._count_mark = (self.step_count, _version(self.step_count))
            if logged:
                self._replays.push(state, phase, aion_torch_ops.fingerprint(y))
        return (out, stats) if return_stats else out

    def _write_state(self, new: aion_core.AionState) -> None:
        with torch.no_grad():
            try:
                self.ratio_ema.copy_(new.ratio_ema)
            except RuntimeError as error:  # (the first write fails before any is done)
                if _functorch_transforms_active() and str(error).startswith("vmap: inplace"):
                    raise RuntimeError(_PER_EXAMPLE_STATE) from error
                raise
            self.step_count.copy_(new.step_count)
            self.nonfinite_count.copy_(new.nonfinite_count)

    def _apply(self, fn, recurse=True):
        # .half(), .bfloat16(), .double() and .to(dtype) cast every floating tensor of a
        # module; AION's own tensors keep their spec dtypes (float32 parameters and ratio,
        # int32 counters), as Keras' mixed policies keep them: a float16 ratio_ema
        # overflows to inf, and 0.1 is not a float16 number. A move to another device
        # still applies, from the original values (no round trip through 16 bits).
        def keep_dtype(t: torch.Tensor) -> torch.Tensor:
            moved = fn(t)
            return moved if moved.dtype == t.dtype else t.to(device=moved.device)

        return super()._apply(keep_dtype, recurse)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """torch's ``load_state_dict``, all or nothing: a load that raises leaves the layer as it
        was (:func:`aion_pytorch.checkpoint.load_state_dict`)."""
        from aion_pytorch.checkpoint import load_state_dict

        return load_state_dict(self, state_dict, strict, assign)

    def _upgrade_state_dict(self, state_dict, prefix, *args, **kwargs):
        # aion-torch 1.0.2 checkpoints (spec section 9): alpha_cached is derived state here
        # (eval alpha is recomputed from alpha0, beta and ratio_ema), nonfinite_count is new.
        # Each 0-d entry is checked as aion_core.portable reads it (complex, non-integral or
        # out-of-range counters, a non-finite ratio) before any of this layer's entries is
        # written: torch would keep a complex value's real part, truncate 3.7 to 3 and store
        # a NaN ratio; it would take a 1-element 1-d entry as its value. Other checks (missing,
        # unexpected) are torch's. (A host read, at load time only.)
        for name in aion_core.portable.ENTRY_DTYPES:
            value = state_dict.get(prefix + name)
            if isinstance(value, torch.Tensor) and value.dim() != 0:
                raise ValueError(f"checkpoint entry {prefix + name!r} must be 0-d, got shape {tuple(value.shape)}")
            if isinstance(value, torch.Tensor) and not value.is_meta:
                number = value.detach().cpu()
                number = number.double() if number.is_floating_point() else number  # numpy has no bfloat16
                aion_core.portable.entry(name, number.numpy(), key=prefix + name)
        for name in aion_core.portable.IGNORED_ENTRIES:
            state_dict.pop(prefix + name, None)
        for name, value in aion_core.portable.DEFAULTS.items():
            state_dict.setdefault(prefix + name, torch.tensor(value))
        for name, (dtype, _, _) in aion_core.STATE_SPEC.items():
            if isinstance(state_dict.get(prefix + name), torch.Tensor):
                state_dict[prefix + name] = state_dict[prefix + name].to(getattr(torch, dtype))

    def _check_count(self) -> None:
        # Eager only (compiled steps choose on the device). Reads only host-side counters;
        # the device only after an outside write.
        buffer, version = self._count_mark
        if buffer is not self.step_count or version is None or version != _version(self.step_count):
            self._resync_count(None)

    def _resync_count(self, incompatible_keys):
        # One sync: at load time (a post-hook) or after an outside write. A meta tensor holds
        # no value to read: the copy stays.
        if self.config.k_update > 1 and self.step_count.device.type != "meta":
            self._count = int(self.step_count)
        self._count_mark = (self.step_count, _version(self.step_count))

    def extra_repr(self) -> str:
        # The constructor's values (the current parameters are self.alpha0, self.beta):
        # reading a parameter here would be a host sync, and fails on meta tensors.
        return ", ".join(f"{k}={v}" for k, v in self.config.to_dict().items())


class AionScale(AionResidual):
    """AION's scale alone, ``alpha * y``, for blocks that add the residual themselves.

    The same parameters, state, ``state_dict`` keys, train/eval and checkpointing behaviour
    as :class:`AionResidual`; ``x_norm`` (the branch's normalised input, whose energy is the
    ratio's denominator) is required. ``x + scale(y, x_norm)`` equals
    ``AionResidual()(x, y, x_norm)`` up to the rounding of one addition. For model zoos whose
    blocks write ``x + branch(norm(x))`` (Hugging Face GPT-2 and Llama, timm): wrap the
    branch, see ``docs/ecosystem.md``.

    Examples
    --------
    >>> scale = AionScale(alpha0=0.1, beta=0.05)
    >>> x_norm = torch.nn.functional.layer_norm(torch.randn(4, 8), (8,))
    >>> y = torch.randn(4, 8)
    >>> scale(y, x_norm).shape, int(scale.step_count)
    (torch.Size([4, 8]), 1)
    """

    def forward(self, y: torch.Tensor, x_norm: torch.Tensor,  # type: ignore[override]
                return_stats: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``alpha * y``; with ``return_stats`` also ``{"alpha", "ratio", "ratio_ema"}`` tensors."""
        return self._step(None, y, x_norm, return_stats)


class AionBlock(nn.Module):
    """Pre-norm residual block ``x + alpha * layer(LayerNorm(x))``, ratio taken on ``LayerNorm(x)``.

    Same constructor (plus ``sync_ratio``, as for :class:`AionResidual`) and ``state_dict`` keys
    (``norm.*``, ``layer.*``, ``aion.*``) as aion-torch 1.0.2.
    """

    def __init__(self, layer: nn.Module, dim: int, alpha0: float = 0.1, beta: float = 0.05,
                 ema_gamma: float = 0.99, epsilon: float = 1e-8, k_update: int = 1,
                 sync_ratio: bool = True, process_group: dist.ProcessGroup | None = None):
        super().__init__()
        self.dim = adapter.check_dim(dim)
        self.norm = nn.LayerNorm(dim)
        self.layer = layer
        self.aion = AionResidual(alpha0, beta, ema_gamma, epsilon, k_update, sync_ratio, process_group)

    @property
    def config(self) -> aion_core.AionConfig:
        """The validated hyper-parameters of the block's :class:`AionResidual`."""
        return self.aion.config

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """torch's ``load_state_dict``; a load that raises leaves the block's AION layer as it
        was (:func:`aion_pytorch.checkpoint.load_state_dict`)."""
        from aion_pytorch.checkpoint import load_state_dict

        return load_state_dict(self, state_dict, strict, assign)

    def forward(self, x: torch.Tensor,
                return_stats: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        stand_in = checks.check_block_input(x, self.dim)
        if stand_in is not None:  # only while torch.compile traces bad input: it raises when run
            return (stand_in, {}) if return_stats else stand_in
        x_norm = self.norm(x)
        return self.aion(x, self.layer(x_norm), x_norm=x_norm, return_stats=return_stats)
