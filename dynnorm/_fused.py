"""Fast paths for the two large-tensor pieces of every dynnorm layer: per-(n, c) moments and the normalize.

Every layer reduces to ``y = x * scale[n, c] + shift[n, c]`` with ``scale``/``shift`` computed from the
per-(n, c) mean and variance by a little math on ``(N, C)``/``(C,)`` tensors. Only two steps touch the
whole input, and only they get custom :class:`torch.autograd.Function` s here; the small math stays in
ordinary autograd:

- :func:`instance_moments` (``x -> mean, var, alias of x``): ``sum(x)``, then the sum of squares of
  ``x - mean`` (two passes: a one-pass ``E[x^2] - E[x]^2`` would lose the variance to cancellation when
  ``|mean| >> std``; on CPU the centered values are formed chunk by chunk in a small reused buffer, not
  in an input-sized temporary). Its backward is the analytic ``dx = (g_mean + 2 g_var (x - mean)) / L``.
- :func:`scale_shift` (``x, scale, shift -> y``): one pass. Its backward needs two per-(n, c) sums,
  ``sum(dy)`` and ``sum(dy * x)`` (the gradients of ``shift`` and ``scale``), computed in one pass, and
  ``dx = dy * scale``.

The layers normalize the alias returned with the moments, so the normalize's ``dx`` reaches the moments'
backward as the alias's gradient and the moments' term is added to it in place: backward allocates one
input-sized tensor, as BatchNorm does. Autograd saves only the input (one storage shared by the two
Functions) and ``(N, C)`` statistics.

The passes run on ATen's BatchNorm kernels applied to the input viewed as ``(1, N * C, L)``, a "batch"
of one sample whose channels are the (n, c) pairs: ``native_batch_norm_backward`` given ``mean = 0`` and
``invstd = 1`` computes exactly ``sum(dy)`` and ``sum(dy * x)`` per channel (as ``grad_bias`` /
``grad_weight``), and evaluation-mode ``batch_norm`` computes ``x * weight + bias``. These kernels are
vectorized, parallel over channels, accumulate bf16/fp16 inputs in float32 and exist on CPU and CUDA.
Channels-last inputs use one kernel call per sample for the sums and a broadcast ``addcmul`` for the
normalize. On CUDA with Triton installed, :mod:`dynnorm._triton` computes the moments in one read and the
in-place gradient accumulation in one pass.

The straightforward implementation (:func:`dynnorm.functional.instance_moments_reference`,
:func:`dynnorm.functional.scale_shift_reference`) stays as the oracle: :mod:`dynnorm.functional`
dispatches here when :func:`applies` is true, and :func:`set_fast_path` (or ``DYNNORM_FAST_PATH=0`` in the
environment) switches to the reference. Double backward (``create_graph=True``) is supported: the
backward formulas are then evaluated with differentiable PyTorch ops.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import Tensor

from ._common import accumulation_dtype, spatial_size

_aten = torch.ops.aten
_fast_path_enabled = os.environ.get("DYNNORM_FAST_PATH", "1") not in ("0", "false", "False")



def _triton_kernels(x: Tensor):
    """:mod:`dynnorm._triton` when its kernels apply to ``x``, else ``None``. Imported on first use with a CUDA
    tensor only, so ``import dynnorm`` (and CPU use) never loads Triton."""
    if not x.is_cuda:
        return None
    from . import _triton

    return _triton if _triton.available(x) else None

def set_fast_path(enabled: bool) -> None:
    """Use the fused kernels (``True``, the default) or the straightforward reference ops (``False``)."""
    global _fast_path_enabled
    _fast_path_enabled = bool(enabled)


def fast_path_enabled() -> bool:
    """Whether :func:`instance_moments` and :func:`scale_shift` dispatch to the fused kernels."""
    return _fast_path_enabled


@contextlib.contextmanager
def fast_path(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_fast_path`; restores the previous setting on exit."""
    previous = _fast_path_enabled
    set_fast_path(enabled)
    try:
        yield
    finally:
        set_fast_path(previous)


# -- layout dispatch -------------------------------------------------------------------------------------


def _is_channels_last(x: Tensor) -> bool:
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def applies(x: Tensor, coefficient_dtype: torch.dtype | None = None) -> bool:
    """Whether the fused kernels apply (and are enabled): a non-empty contiguous or channels-last float input whose
    coefficients are in its accumulation dtype (float32 for bf16/fp16/float32, float64 for float64)."""
    if not _fast_path_enabled or x.dim() < 2 or x.numel() == 0:
        return False
    if x.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        return False
    if coefficient_dtype is not None and coefficient_dtype != accumulation_dtype(x.dtype):
        return False
    if x.device.type not in ("cpu", "cuda"):
        return False
    return x.is_contiguous() or _is_channels_last(x)


def _rows(x: Tensor) -> Tensor:
    """A contiguous ``(N, C, *)`` tensor as ``(1, N * C, L)``: one BatchNorm "channel" per (n, c)."""
    return x.view(1, x.shape[0] * x.shape[1], -1)


def _row_sums(dy: Tensor, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(sum(dy), sum(dy * x))`` per (n, c), each ``(N, C)`` in ``dtype`` (float32 or float64).

    One pass over ``dy`` and ``x`` (same shape and layout), by ``native_batch_norm_backward`` given the
    saved statistics ``mean = 0``, ``invstd = 1``: its ``grad_bias`` and ``grad_weight`` are then exactly
    these sums (the input gradient, whose formula would assume batch statistics, is not requested).
    """
    n, c = x.shape[0], x.shape[1]
    if x.is_contiguous():
        zeros = torch.zeros(n * c, dtype=dtype, device=x.device)
        ones = torch.ones(n * c, dtype=dtype, device=x.device)
        _, weighted, plain = _aten.native_batch_norm_backward(
            _rows(dy), _rows(x), ones, zeros, ones, zeros, ones, True, 0.0, [False, True, True]
        )
        return plain.view(n, c), weighted.view(n, c)
    # Channels last: each sample is a channels-last (1, C, *) tensor, which the kernel handles natively.
    zeros = torch.zeros(c, dtype=dtype, device=x.device)
    ones = torch.ones(c, dtype=dtype, device=x.device)
    plains, weighteds = [], []
    for i in range(n):
        _, weighted, plain = _aten.native_batch_norm_backward(
            dy[i : i + 1], x[i : i + 1], ones, zeros, ones, zeros, ones, True, 0.0, [False, True, True]
        )
        plains.append(plain)
        weighteds.append(weighted)
    return torch.stack(plains), torch.stack(weighteds)


def _affine(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x * scale + shift`` with ``(N, C)`` coefficients, computed in their dtype, returned in ``x.dtype``,
    in ``x``'s layout; one pass (evaluation-mode BatchNorm over ``(1, N * C, L)`` for contiguous inputs)."""
    n, c = x.shape[0], x.shape[1]
    if x.is_contiguous():
        factory = {"dtype": scale.dtype, "device": scale.device}
        out = torch.batch_norm(
            _rows(x), scale.reshape(n * c), shift.reshape(n * c), torch.zeros(n * c, **factory),
            torch.ones(n * c, **factory), False, 0.0, 0.0, False,
        )
        return out if out.shape == x.shape else out.view(x.shape)
    view = (n, c) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.reshape(view), x, scale.reshape(view)).to(x.dtype)


# -- autograd Functions ----------------------------------------------------------------------------------


# Eager CPU: the centered values are formed in chunks of about this many bytes in a reused buffer. A
# temporary as large as the input costs more than the pass itself there (fresh pages fault in).
_CENTERED_CHUNK_BYTES = 1 << 20


def _one_pass_moments(x: Tensor, acc: torch.dtype) -> tuple[Tensor, Tensor]:
    """``E[x]`` and ``E[x^2] - E[x]^2`` per (n, c), each ``(N, C)`` in ``acc``, of a contiguous input.

    float32/float64: ``sum`` and ``vector_norm`` of the rows, no temporary. bf16/fp16: one read by
    the BatchNorm-backward kernel (:func:`_row_sums`), which accumulates in ``acc`` without the
    converted copy of ``x`` that ``sum(dtype=acc)`` makes. The variance may cancel: see :func:`_moments`.
    """
    n, c, count = x.shape[0], x.shape[1], spatial_size(x)
    if x.dtype == acc:
        rows = x.view(n * c, count)
        total, square_total = rows.sum(1), torch.linalg.vector_norm(rows, dim=1).square()
    else:
        total, square_total = _row_sums(x, x, acc)
    mean = total.view(n, c) / count
    return mean, square_total.view(n, c) / count - mean.square()


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) mean and biased variance ``(N, C)`` in the accumulation dtype, without autograd.

    ``sum(x)``, then the sum of squares of ``x - mean``. ``E[x^2] - E[x]^2`` loses about
    ``(mean / std)^2`` ulps to cancellation, so on contiguous CPU inputs in eager mode it is used only
    when every row has ``mean^2 <= var`` (then within about twice the two-pass rounding, and never
    negative); it saves the pass that forms ``x - mean``. Any other input takes the two-pass route,
    which compiled code always takes.
    """
    n, c, count = x.shape[0], x.shape[1], spatial_size(x)
    acc = accumulation_dtype(x.dtype)
    if count == 1:
        mean = x.reshape(n, c).to(acc)
        return mean, torch.zeros_like(mean)
    triton_kernels = _triton_kernels(x)
    if triton_kernels is not None:  # CUDA: one read, Welford-style merge in float32
        return triton_kernels.row_moments(x)
    eager_cpu = x.device.type == "cpu" and not torch.compiler.is_compiling()
    if eager_cpu and x.is_contiguous():
        mean, var = _one_pass_moments(x, acc)
        if bool((mean.square() <= var).all()):
            return mean, var
    else:
        mean = x.sum(tuple(range(2, x.dim())), dtype=acc) / count
    if x.is_contiguous():
        rows, row_means = x.view(n * c, count), mean.view(n * c, 1)
        if not eager_cpu:
            return mean, torch.linalg.vector_norm(rows - row_means, dim=1).square().view(n, c) / count
        step = max(1, _CENTERED_CHUNK_BYTES // (count * torch.empty((), dtype=acc).element_size()))
        buffer = torch.empty((min(step, n * c), count), dtype=acc, device=x.device)
        norms = torch.empty(n * c, dtype=acc, device=x.device)
        for start in range(0, n * c, step):
            stop = min(start + step, n * c)
            centered = torch.sub(rows[start:stop], row_means[start:stop], out=buffer[: stop - start])
            torch.linalg.vector_norm(centered, dim=1, out=norms[start:stop])
        return mean, norms.square().view(n, c) / count
    # Channels last: one BatchNorm-kernel call per sample gives sum(t) and sum(t * t) of t = x - mean.
    view = (1, c) + (1,) * (x.dim() - 2)
    if eager_cpu:
        buffer = torch.empty_like(x[:1], dtype=acc)
        residuals, square_totals = [], []
        for i in range(n):
            centered = torch.sub(x[i : i + 1], mean[i].view(view), out=buffer)
            residual, square_total = _row_sums(centered, centered, acc)
            residuals.append(residual)
            square_totals.append(square_total)
        residual, square_total = torch.cat(residuals), torch.cat(square_totals)
    else:
        centered = x - mean.view((n,) + view[1:])
        residual, square_total = _row_sums(centered, centered, acc)
    return mean, (square_total / count - (residual / count).square()).clamp_min(0)


class _InstanceMoments(torch.autograd.Function):
    """``x -> (mean, var, x)``: per-(n, c) moments in the accumulation dtype, and ``x`` passed through.

    Pass the returned ``x`` (an alias) to :class:`_ScaleShift`: the normalize's input gradient then
    reaches this backward as the alias's gradient, and the moments' term is added to it in place, so
    backward allocates one input-sized gradient instead of three (two terms and their sum).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        mean, var = _moments(x)
        ctx.save_for_backward(x, mean)
        ctx.count = spatial_size(x)
        ctx.set_materialize_grads(False)
        return mean, var, x

    @staticmethod
    def backward(ctx, grad_mean: Tensor | None, grad_var: Tensor | None, grad_alias: Tensor | None) -> Tensor:  # type: ignore[override]
        x, mean = ctx.saved_tensors
        if grad_mean is None and grad_var is None:
            return grad_alias
        # d mean / dx = 1 / L, d var / dx = 2 (x - mean) / L  =>  dx = a * x + b per (n, c)
        a = torch.zeros_like(mean) if grad_var is None else grad_var * (2.0 / ctx.count)
        b = -a * mean if grad_mean is None else grad_mean / ctx.count - a * mean
        view = a.shape + (1,) * (x.dim() - 2)
        if torch.is_grad_enabled():  # double backward: differentiable ops
            term = torch.addcmul(b.reshape(view), x.to(a.dtype), a.reshape(view)).to(x.dtype)
            return term if grad_alias is None else grad_alias + term
        if grad_alias is None:
            return _affine(x, a, b)
        if not (grad_alias.is_contiguous() or _is_channels_last(grad_alias)):  # e.g. an expanded gradient
            return grad_alias + _affine(x, a, b)
        # grad_alias is the normalize's fresh input gradient: accumulate into it.
        triton_kernels = _triton_kernels(grad_alias)
        if triton_kernels is not None and x.is_contiguous() and a.dtype == torch.float32:
            return triton_kernels.accumulate_affine_(grad_alias, x, a, b)
        if grad_alias.dtype != a.dtype:  # bf16/fp16: a mixed-dtype addcmul_ would convert whole tensors
            return grad_alias.add_(_affine(x, a, b))
        return grad_alias.addcmul_(x, a.reshape(view)).add_(b.reshape(view))


class _ScaleShift(torch.autograd.Function):
    """``(x, scale, shift) -> x * scale + shift`` with ``(N, C)`` coefficients; output in ``x.dtype``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, scale)
        return _affine(x, scale, shift)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[override]
        x, scale = ctx.saved_tensors
        need_x, need_scale, need_shift = ctx.needs_input_grad
        if torch.is_grad_enabled():  # double backward: differentiable ops
            view = scale.shape + (1,) * (x.dim() - 2)
            dims = tuple(range(2, x.dim()))
            grad_acc = grad_out.to(scale.dtype)
            grad_x = (grad_acc * scale.reshape(view)).to(x.dtype) if need_x else None
            grad_scale = (grad_acc * x.to(scale.dtype)).sum(dims) if need_scale else None
            grad_shift = grad_acc.sum(dims) if need_shift else None
            return grad_x, grad_scale, grad_shift
        grad_out = grad_out.contiguous(memory_format=_memory_format(x))
        grad_scale = grad_shift = None
        if need_scale or need_shift:
            grad_shift, grad_scale = _row_sums(grad_out, x, scale.dtype)
        grad_x = _affine(grad_out, scale, torch.zeros_like(scale)) if need_x else None
        return grad_x, grad_scale if need_scale else None, grad_shift if need_shift else None


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last if x.dim() == 4 else torch.channels_last_3d


# -- entry points (call them where :func:`applies` is true) ------------------------------------------------


def instance_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, var, x)``: per-(n, c) mean and biased variance, each ``(N, C)`` in float32 (float64 for
    float64 inputs), and an alias of ``x`` to normalize with :func:`scale_shift` (see :class:`_InstanceMoments`)."""
    if not (torch.is_grad_enabled() and x.requires_grad):  # nothing to differentiate: no Function
        return (*_moments(x), x)
    return _InstanceMoments.apply(x)


def scale_shift(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x * scale + shift`` with ``(N, C)`` or ``(1, C)`` coefficients, returned in ``x.dtype`` and layout."""
    n, c = x.shape[0], x.shape[1]
    scale, shift = scale.expand(n, c), shift.expand(n, c)
    if not (torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad or shift.requires_grad)):
        return _affine(x, scale, shift)  # nothing to differentiate: no Function
    if not x.is_contiguous():
        return _ScaleShift.apply(x, scale, shift)
    # On the (1, N * C, L) rows, so that the Function's output is not a view (the reshape back happens
    # outside it): in-place ops on the layer's output (ReLU(inplace=True)) then work.
    rows = _ScaleShift.apply(_rows(x), scale.reshape(1, n * c), shift.reshape(1, n * c))
    return rows.view(x.shape)
