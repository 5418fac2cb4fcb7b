"""Pure math shared by the dynnorm layers: moments, pooled statistics, running-statistics updates.

Everything here is stateless. Layers own parameters and buffers and pass them in, as ``torch.nn.functional``
does for ``batch_norm``. Statistics are accumulated in float32 (float64 for float64 inputs) whatever the
input dtype, so bf16/fp16 activations under autocast never produce negative or overflowing variances.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _fused
from ._common import accumulation_dtype, spatial_size  # noqa: F401  (part of this module's API)
from ._fused import fast_path, fast_path_enabled, set_fast_path  # noqa: F401  (the switch, re-exported)


def autocast_disabled(x: Tensor) -> torch.autocast:
    """A context that turns autocast off on ``x``'s device: the layers' small heads (matmuls on statistics)
    run in the statistics' float32 rather than the autocast dtype."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def instance_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(sample, channel) mean and biased variance.

    Runs the fused kernels of :mod:`dynnorm._fused` (analytic backward, saves only ``x``) when they apply,
    otherwise :func:`instance_moments_reference`; both give the same values and gradients.

    Args:
        x: ``(N, C, *)`` input.

    Returns:
        ``(mean, var)``, each ``(N, C)`` in :func:`accumulation_dtype`.
    """
    mean, var, _ = normalization_moments(x)
    return mean, var


def normalization_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`instance_moments` of an input that is then normalized: ``(mean, var, x)``.

    Pass the returned ``x`` (and only to) :func:`scale_shift`. With the fused kernels it is an alias of
    the input through which the normalize's input gradient reaches the moments' backward, which adds its
    own term in place: backward then allocates one input-sized gradient, as BatchNorm does, instead of
    three. With the reference ops it is ``x`` itself.
    """
    if _fused.applies(x):
        return _fused.instance_moments(x)
    return (*instance_moments_reference(x), x)


def instance_moments_reference(x: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`instance_moments` with plain PyTorch ops (``torch.var_mean``): the oracle of the fast path."""
    flat = x.reshape(x.shape[0], x.shape[1], spatial_size(x)).to(accumulation_dtype(x.dtype))
    var, mean = torch.var_mean(flat, dim=2, correction=0)
    return mean, var


def pooled_moments(mean: Tensor, var: Tensor, dim: int | tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and variance of the union of equally sized sets, from the per-set moments.

    Uses the law of total variance, ``Var = E[var] + Var[mean]``, which unlike ``E[x^2] - E[x]^2`` cannot
    go negative through cancellation. Pooling ``(N, C)`` instance moments over ``dim=1`` gives layer-norm
    statistics ``(N, 1)``; over ``dim=0`` batch-norm statistics ``(1, C)``.
    """
    pooled_mean = mean.mean(dim, keepdim=True)
    pooled_var = var.mean(dim, keepdim=True) + (mean - pooled_mean).square().mean(dim, keepdim=True)
    return pooled_mean, pooled_var


def group_moments(mean: Tensor, var: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Group-norm statistics ``(N, G)`` from ``(N, C)`` instance moments (contiguous groups of ``C // G``)."""
    n, c = mean.shape
    grouped_mean, grouped_var = pooled_moments(
        mean.reshape(n, num_groups, c // num_groups), var.reshape(n, num_groups, c // num_groups), dim=2
    )
    return grouped_mean.squeeze(2), grouped_var.squeeze(2)


def mask_instance_logit(logits: Tensor) -> Tensor:
    """``logits`` (``(..., K)``, IN first) with the IN entry at ``-inf``: IN is undefined for one value per (n, c)."""
    index = torch.arange(logits.shape[-1], device=logits.device)
    return logits.masked_fill(index == 0, float("-inf"))


def scale_shift(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x * scale + shift`` with per-(sample, channel) ``(N, C)`` (or ``(1, C)``) coefficients.

    Computed in the coefficients' dtype and returned in ``x.dtype``; keeps ``x``'s memory format. Runs the
    fused one-pass kernel of :mod:`dynnorm._fused` (analytic backward, saves only ``x``) when it applies,
    otherwise :func:`scale_shift_reference`.
    """
    if _fused.applies(x, scale.dtype) and shift.dtype == scale.dtype:
        return _fused.scale_shift(x, scale, shift)
    return scale_shift_reference(x, scale, shift)


def scale_shift_reference(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """:func:`scale_shift` with plain broadcasting PyTorch ops: the oracle of the fast path."""
    view = (scale.shape[0], scale.shape[1]) + (1,) * (x.dim() - 2)
    out = torch.addcmul(shift.reshape(view), x.to(scale.dtype), scale.reshape(view))
    return out.to(x.dtype)


def standardize_coefficients(
    mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    """Fold ``weight * (x - mean) / sqrt(var + eps) + bias`` into ``x * scale + shift``.

    ``mean``/``var`` broadcast against each other (``(N, C)``, ``(N, 1)`` or ``(1, C)``); ``weight`` and
    ``bias`` are ``(C,)`` or ``None``. Returns ``scale``, ``shift`` of the broadcast shape.
    """
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.to(scale.dtype)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.to(scale.dtype)
    return scale, shift


def check_batch_statistics_size(count: int, x: Tensor) -> None:
    """Raise as ``F.batch_norm`` does when a batch statistic would be computed from one value per channel."""
    if count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")


def exponential_average_factor(momentum: float | None, num_batches_tracked: Tensor | None) -> float:
    """The weight of the new batch in the running statistics, with torch's meaning of ``momentum``.

    ``momentum=None`` gives the cumulative moving average ``1 / num_batches_tracked``.
    """
    if momentum is not None:
        return momentum
    assert num_batches_tracked is not None
    return 1.0 / float(num_batches_tracked.item())


@torch.no_grad()
def update_running_stats_(
    running_mean: Tensor, running_var: Tensor, batch_mean: Tensor, batch_var: Tensor, count: int, factor: float
) -> None:
    """In-place EMA ``running = (1 - factor) * running + factor * batch``.

    As in ``nn.BatchNorm``, the stored variance is the unbiased one, ``batch_var * count / (count - 1)``,
    where ``count`` is the number of values each batch statistic was computed from.
    """
    unbiased_var = batch_var * (count / max(count - 1, 1))
    running_mean.lerp_(batch_mean.to(running_mean.dtype), factor)
    running_var.lerp_(unbiased_var.to(running_var.dtype), factor)
