"""The math of every dynnorm layer as stateless functions of tensors, written with plain PyTorch ops.

This is the reference implementation: the fused CPU operators (:mod:`dynnorm.kernels`) compute the same
values and gradients, and the layers fall back to these functions wherever the operators do not run
(CUDA, ``torch.compile``/``torch.export``/ONNX, tracing, ``torch.func`` transforms, synchronized batch
statistics, ``dynnorm.fast_path(False)``). Like ``torch.nn.functional.batch_norm``, the layer functions
take the parameters and buffers as arguments and update the running statistics in place in training.

Every layer has the form ``y = (x - mean) * scale + shift`` with the per-(sample, channel) instance mean
``mean`` and ``(N, C)`` coefficients computed from the instance moments: the statistics of larger sets
(layer, group, batch) are pooled from them with the law of total variance,
``Var = E[var] + Var[mean]``, which cannot cancel. Means are carried relative to a reference value ``R``
of the call (a value of the input, detached), ``x - mean`` is formed as ``(x - R) - (mean - R)`` and
shifts from differences of means, so a large common offset of the input costs no precision: the output is
independent of ``R`` (every formula uses differences of means), which is why ``R`` needs no gradient. Statistics accumulate in float32 (float64 for
float64 inputs) whatever the input dtype, and there is no Python branch on tensor values, so traces and
exported graphs are right for every input.

Shared arguments of the layer functions (all keyword-only after ``x``):
    x: ``(N, C, *)`` input, ``N >= 1``.
    weight, bias: ``(C,)`` affine parameters, or ``None``.
    running_mean, running_var: ``(C,)`` running statistics (the variance stored unbiased), or ``None``.
    num_batches_tracked: ``()`` long tensor counting training batches, or ``None``.
    training: use (and track) the statistics of the batch; in evaluation the BN term uses the running
        statistics when they are given.
    momentum: weight of the batch in the running statistics (torch's meaning); ``None`` for a cumulative
        average.
    eps: added to every variance.
    batch_moments: how ``(N, C)`` instance moments become batch statistics; ``None`` for this batch
        alone, or :func:`dynnorm.distributed.synchronized_batch_moments` across processes.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.autograd.forward_ad
from torch import Tensor

#: ``(mean - R (N, C), var (N, C), R (), values per (n, c)) -> (mean - R (1, C), var (1, C), values per channel)``.
BatchMoments = Callable[[Tensor, Tensor, Tensor, int], tuple[Tensor, Tensor, int]]

__all__ = [
    "BatchMoments", "accumulation_dtype", "associate_norm", "capturing", "dynamic_affine_norm", "dynamic_norm",
    "exemplar_norm", "group_moments", "instance_moments", "one_hot", "one_hot_of_argmax", "pooled_moments",
    "sparse_switch_norm", "sparsemax", "sparsestmax", "spatial_size", "switch_norm", "update_running_stats",
]

_ONE_HOT_TOLERANCE = 1e-6


def capturing() -> bool:
    """Whether the current call is being captured or transformed (``torch.compile``/``torch.export``, tracing,
    ``torch.func`` transforms, forward-mode AD): no host reads of tensor values then."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch._C._are_functorch_transforms_active()
        or torch.autograd.forward_ad._current_level >= 0
    )


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are computed in: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def spatial_size(x: Tensor) -> int:
    """Number of values per (sample, channel) of an ``(N, C, *)`` tensor."""
    size = 1
    for s in x.shape[2:]:
        size *= s
    return size


def instance_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(sample, channel) mean and biased variance, each ``(N, C)`` in :func:`accumulation_dtype`."""
    reference, mean, var = relative_moments(x)
    return mean + reference, var


def relative_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(R, mean - R, var)``: a reference value ``R`` (``()``, detached: the average of the finite first values of
    the (n, c) rows, which for an input with a common offset is close to every value), and the per-(sample, channel)
    mean relative to it and biased variance, each ``(N, C)`` in :func:`accumulation_dtype`. ``x - R`` is exact
    for values near ``R``, so the relative mean keeps all its digits however large the offset."""
    flat = x.reshape(x.shape[0], x.shape[1], spatial_size(x)).to(accumulation_dtype(x.dtype))
    first = flat[:, :, 0].detach()
    finite = torch.isfinite(first)  # a non-finite value reaches only the statistics that contain it
    reference = torch.where(finite, first, 0).sum() / finite.sum().clamp_min(1)  # 0 for an empty batch
    var, mean = torch.var_mean(flat - reference, dim=2, correction=0)  # the backward also sees x - R
    return reference, mean, var


def pooled_moments(mean: Tensor, var: Tensor, dim: int | tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and variance of the union of equally sized sets from the per-set moments, over ``dim`` (kept).

    ``Var = E[var] + E[(mean - E[mean])^2]`` (law of total variance). Pooling ``(N, C)`` instance moments
    over ``dim=1`` gives layer statistics ``(N, 1)``, over ``dim=0`` batch statistics ``(1, C)``.
    """
    pooled_mean = mean.mean(dim, keepdim=True)
    pooled_var = var.mean(dim, keepdim=True) + (mean - pooled_mean).square().mean(dim, keepdim=True)
    return pooled_mean, pooled_var


def group_moments(mean: Tensor, var: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Group statistics ``(N, G)`` from ``(N, C)`` instance moments (contiguous groups of ``C // G`` channels)."""
    n, c = mean.shape
    grouped_mean, grouped_var = pooled_moments(
        mean.reshape(n, num_groups, c // num_groups), var.reshape(n, num_groups, c // num_groups), dim=2
    )
    return grouped_mean.squeeze(2), grouped_var.squeeze(2)


def _autocast_off(x: Tensor) -> torch.autocast:
    """Autocast off on ``x``'s device: the layers' small heads run in the statistics' float32."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _normalize(values: Tensor, reference: Tensor, mean: Tensor, scale: Tensor, shift: Tensor,
               dtype: torch.dtype) -> Tensor:
    """``((x - R) - mean) * scale + shift`` (``mean`` relative to ``R``) with ``(N, C)``-broadcastable
    coefficients, from the input in the accumulation dtype (``values``, the same tensor the moments were taken
    from, so a half-precision input's gradient is rounded once), returned in ``dtype`` and ``values``' memory
    format."""
    n, c = values.shape[0], values.shape[1]
    view = (n, c) + (1,) * (values.dim() - 2)
    centered = (values - reference) - mean.reshape(view)
    return torch.addcmul(shift.expand(n, c).reshape(view), centered, scale.expand(n, c).reshape(view)).to(dtype)


def _local_batch_moments(mean: Tensor, var: Tensor, reference: Tensor, values_per_sample: int
                         ) -> tuple[Tensor, Tensor, int]:
    batch_mean, batch_var = pooled_moments(mean, var, dim=0)
    return batch_mean, batch_var, mean.shape[0] * values_per_sample


def _batch_term(
    x: Tensor, reference: Tensor, mean: Tensor, var: Tensor, running_mean: Tensor | None,
    running_var: Tensor | None, num_batches_tracked: Tensor | None, training: bool, momentum: float | None,
    batch_moments: BatchMoments | None,
) -> tuple[Tensor, Tensor]:
    """The ``(1, C)`` mean (relative to ``R``, as ``mean``) and variance of the BN term, updating the running
    statistics in training."""
    if not training and running_mean is not None:
        return (running_mean.to(mean.dtype) - reference).unsqueeze(0), running_var.to(mean.dtype).unsqueeze(0)
    batch_mean, batch_var, count = (batch_moments or _local_batch_moments)(mean, var, reference, spatial_size(x))
    if training:
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
        if running_mean is not None:
            with torch.no_grad():
                update_running_stats(running_mean, running_var, num_batches_tracked, batch_mean[0] + reference,
                                     batch_var[0] * (count / (count - 1)), momentum)
    return batch_mean, batch_var


def update_running_stats(
    running_mean: Tensor, running_var: Tensor, num_batches_tracked: Tensor | None, batch_mean: Tensor,
    batch_var: Tensor, momentum: float | None,
) -> None:
    """Average a batch's statistics into the running statistics, in place, on their device (no host read):
    ``running = lerp(running, batch, factor)``, as ``nn.BatchNorm`` does; ``momentum=None`` weights the batch
    by ``1 / num_batches_tracked``. The one implementation of this update, used by the reference ops and by the
    fused operators (which return the batch statistics instead of writing the buffers). The batch statistics
    must not require gradients (call it under ``torch.no_grad()`` otherwise).

    Args:
        running_mean, running_var: ``(C,)`` buffers, updated in place.
        num_batches_tracked: ``()`` long buffer counting the updates, or ``None``.
        batch_mean, batch_var: ``(C,)`` mean and unbiased variance of the batch (the variance is stored
            unbiased, as ``nn.BatchNorm`` stores it).
        momentum: weight of the batch, or ``None`` for a cumulative average.
    """
    factor: float | Tensor = momentum if momentum is not None else 0.0
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
        if momentum is None:
            factor = 1.0 / num_batches_tracked.to(running_mean.dtype)
    for running, batch in ((running_mean, batch_mean), (running_var, batch_var)):
        running.lerp_(batch if batch.dtype == running.dtype else batch.to(running.dtype), factor)


def _without_instance_term(weights: Tensor) -> Tensor:
    """Mixture weights ``(K,)`` (IN first) renormalized without IN, undefined for one value per (n, c)."""
    kept = torch.cat([weights.new_zeros(1), weights[1:]])
    total = kept.sum()
    if not capturing() and bool(total == 0):
        raise ValueError("the mixture selected IN only, which is undefined for inputs with one value per "
                         "(sample, channel)")
    return kept / total


def _mixture(given: Tensor, logits: bool, single_value: bool, dtype: torch.dtype) -> Tensor:
    """Mixture weights from logits (softmax) or given weights; IN left out for one value per (n, c)."""
    given = given.to(dtype)
    if logits:
        if single_value:
            given = torch.cat([given.new_full((1,), float("-inf")), given[1:]])
        return torch.softmax(given, dim=0)
    return _without_instance_term(given) if single_value else given


def switch_norm(
    x: Tensor, *, weight: Tensor | None, bias: Tensor | None, mean_mixture: Tensor, var_mixture: Tensor,
    running_mean: Tensor | None, running_var: Tensor | None, num_batches_tracked: Tensor | None,
    training: bool, momentum: float | None, eps: float, mixture_logits: bool = True,
    batch_moments: BatchMoments | None = None,
) -> Tensor:
    r"""Switchable Normalization: IN, LN (and BN) statistics mixed by two sets of weights.

    .. math::
        y = \gamma \frac{x - \sum_k w_k \mu_k}{\sqrt{\sum_k w'_k \sigma^2_k + \epsilon}} + \beta

    ``mean_mixture``/``var_mixture``: ``(3,)`` (IN, LN, BN) or ``(2,)`` (IN, LN) logits, or simplex weights
    with ``mixture_logits=False``. For one value per (n, c) IN is left out of both mixtures. The mean is
    computed as ``mu_IN - sum_{k >= 1} w_k (mu_IN - mu_k)``, equal to ``sum_k w_k mu_k`` on the simplex.
    """
    values = x.to(accumulation_dtype(x.dtype))
    reference, mean, var = relative_moments(values)
    mean_w = _mixture(mean_mixture, mixture_logits, spatial_size(x) == 1, mean.dtype)
    var_w = _mixture(var_mixture, mixture_logits, spatial_size(x) == 1, mean.dtype)
    mean_ln, var_ln = pooled_moments(mean, var, dim=1)
    mixed_var = var_w[0] * var + var_w[1] * var_ln
    deviation = mean_w[1] * (mean - mean_ln)
    if mean_mixture.shape[0] == 3:
        mean_bn, var_bn = _batch_term(x, reference, mean, var, running_mean, running_var, num_batches_tracked,
                                      training, momentum, batch_moments)
        mixed_var = mixed_var + var_w[2] * var_bn
        deviation = deviation + mean_w[2] * (mean - mean_bn)
    scale = torch.rsqrt(mixed_var + eps)
    if weight is not None:
        scale = scale * weight.to(scale.dtype)
    shift = deviation * scale
    if bias is not None:
        shift = shift + bias.to(scale.dtype)
    return _normalize(values, reference, mean, scale, shift, x.dtype)


def sparsemax(logits: Tensor) -> Tensor:
    """Euclidean projection of a 1-D vector onto the probability simplex (Martins & Astudillo, 2016).

    Branch-free (sort, cumulative sum, gather), so it traces, compiles and exports.
    """
    sorted_logits, _ = torch.sort(logits, descending=True)
    ranks = torch.arange(1, logits.numel() + 1, device=logits.device, dtype=logits.dtype)
    cumulative = sorted_logits.cumsum(0) - 1
    support_size = (sorted_logits - cumulative / ranks > 0).sum().clamp_min(1)
    threshold = cumulative.gather(0, (support_size - 1).reshape(1)) / support_size.to(logits.dtype)
    return (logits - threshold).clamp_min(0)


def one_hot(index: int | Tensor, size: int, dtype: torch.dtype, device: torch.device | None = None) -> Tensor:
    """``(size,)`` one-hot vector at ``index`` (an int or a ``()`` tensor, read on its device), in ``dtype``."""
    return (torch.arange(size, device=device) == index).to(dtype)


def one_hot_of_argmax(values: Tensor) -> Tensor:
    """``(K,)`` one-hot vector at the largest entry of ``values`` (first one on ties), in its dtype."""
    return one_hot(values.argmax(), values.numel(), values.dtype, values.device)


def sparsestmax(logits: Tensor, radius: float | Tensor) -> Tensor:
    """SparsestMax: sparsemax pushed away from the centre of its face onto a circle of ``radius``.

    ``radius=0`` is plain sparsemax; as the radius grows towards ``sqrt((K-1)/K)`` (the centre-to-vertex
    distance of the simplex) the output becomes one-hot. Each round either finishes or projects the pushed
    point back with sparsemax onto a smaller face, with the radius reduced by the distance between the two
    face centres, so ``K`` rounds suffice. The rounds are computed for all ``K`` steps and selected with
    ``torch.where`` (no Python branch on values), so the function traces, compiles and exports; gradients
    flow through the selected branch. Non-finite logits give NaN weights (as ``torch.softmax`` does for NaN):
    a diverged parameter shows up in the output.
    """
    dtype = logits.dtype
    finite = torch.isfinite(logits).all()
    logits = torch.where(finite, logits, torch.zeros_like(logits))  # keeps the rounds' arithmetic finite
    radius = torch.as_tensor(radius, dtype=dtype, device=logits.device)
    point = sparsemax(logits)
    result = torch.zeros_like(point)
    done = torch.zeros((), dtype=torch.bool, device=logits.device)
    previous_centre = None
    for _ in range(logits.numel()):
        support = (point > 0).to(dtype)
        centre = support / support.sum()
        if previous_centre is not None:
            radius = torch.sqrt((radius.square() - (centre - previous_centre).square().sum()).clamp_min(0))
        offset = point - centre
        distance = torch.linalg.vector_norm(offset)
        finished = (point.max() >= 1 - _ONE_HOT_TOLERANCE) | (distance == 0) | (distance >= radius)
        pushed = centre + radius * offset / torch.where(distance > 0, distance, torch.ones_like(distance))
        inside = pushed.min() >= 0
        result = torch.where(done, result, torch.where(finished, point, pushed.clamp(0, 1)))
        done = done | finished | inside
        point = torch.where(done, point, sparsemax(pushed))
        previous_centre = centre
    return torch.where(finite, torch.where(done, result, point), torch.full_like(point, float("nan")))


def _sparse_mixture(logits: Tensor, radius: Tensor, fixed: Tensor, selected: Tensor, freeze: bool) -> Tensor:
    """SSN mixture weights ``(K,)`` in the accumulation dtype: SparsestMax of ``logits``, or the one-hot vector at
    ``selected`` once ``fixed``. With ``freeze`` a mixture that became one-hot is frozen: its flag is set and its
    selection recorded (buffers; the logits are left alone). Eagerly a frozen mixture has no graph, so its
    logits get no gradient (``grad`` stays ``None`` and optimizers leave them alone)."""
    acc, size, device = accumulation_dtype(logits.dtype), logits.numel(), logits.device
    if not capturing() and bool(fixed):
        return one_hot(selected, size, acc, device)
    # A copy of the flag: the freezing step below updates it in place.
    weights = torch.where(fixed.clone(), one_hot(selected, size, acc, device),
                          sparsestmax(logits.to(acc), radius.to(acc)))
    if not freeze:
        return weights
    with torch.no_grad():
        newly = (weights.max() >= 1 - _ONE_HOT_TOLERANCE) & ~fixed  # False for NaN weights
        selected.copy_(torch.where(newly, weights.argmax(), selected))
        fixed.copy_(fixed | newly)
    if not capturing() and bool(fixed):
        return one_hot(selected, size, acc, device)
    return torch.where(fixed.clone(), one_hot(selected.clone(), size, acc, device), weights)


def sparse_switch_norm(
    x: Tensor, *, weight: Tensor | None, bias: Tensor | None, mean_weight: Tensor, var_weight: Tensor,
    radius: Tensor, mean_fixed: Tensor, var_fixed: Tensor, mean_selected: Tensor, var_selected: Tensor,
    running_mean: Tensor | None, running_var: Tensor | None, num_batches_tracked: Tensor | None, training: bool,
    momentum: float | None, eps: float, freeze: bool, batch_moments: BatchMoments | None = None,
) -> Tensor:
    """Sparse Switchable Normalization: :func:`switch_norm` with mixtures ``sparsestmax(logits, radius)``.

    ``radius``: ``()`` tensor; ``mean_fixed``/``var_fixed``: ``()`` bool tensors and ``mean_selected``/
    ``var_selected``: ``()`` long tensors: a fixed mixture is the one-hot vector at its selection. With
    ``freeze`` (a training step), a mixture whose SparsestMax is one-hot is frozen: its flag is set and its
    argmax recorded as its selection (both updated in place; the logits are not written).
    """
    mean_mixture = _sparse_mixture(mean_weight, radius, mean_fixed, mean_selected, freeze)
    var_mixture = _sparse_mixture(var_weight, radius, var_fixed, var_selected, freeze)
    return switch_norm(x, weight=weight, bias=bias, mean_mixture=mean_mixture, var_mixture=var_mixture,
                       running_mean=running_mean, running_var=running_var, num_batches_tracked=num_batches_tracked,
                       training=training, momentum=momentum, eps=eps, mixture_logits=False,
                       batch_moments=batch_moments)


def exemplar_norm(
    x: Tensor, *, weight: Tensor | None, bias: Tensor | None, ratio_w1: Tensor, ratio_b1: Tensor,
    ratio_w2: Tensor, ratio_b2: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
    num_batches_tracked: Tensor | None, training: bool, momentum: float | None, eps: float,
    batch_moments: BatchMoments | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Exemplar Normalization: IN-, LN- and BN-normalized outputs mixed with per-sample ratios.

    .. math::
        y_n = \gamma \sum_k \lambda_{n,k} \frac{x_n - \mu_k}{\sqrt{\sigma^2_k + \epsilon}} + \beta, \quad
        \lambda_n = \mathrm{softmax}(W_2 \mathrm{ReLU}(W_1 d_n + b_1) + b_2)

    with the scale-invariant descriptor ``d_n = [(mu_IN - mu_BN) / s_BN ; s_IN / s_BN - 1]`` (``2C``;
    ``s = sqrt(var + eps)``), ``ratio_w1 (H, 2C)``, ``ratio_b1 (H,)``, ``ratio_w2 (3, H)``, ``ratio_b2 (3,)``.

    Returns:
        ``(y, ratios)``: the output and the batch-averaged ratios ``(3,)`` (IN, LN, BN), detached.
    """
    values = x.to(accumulation_dtype(x.dtype))
    reference, mean, var = relative_moments(values)
    mean_ln, var_ln = pooled_moments(mean, var, dim=1)
    mean_bn, var_bn = _batch_term(x, reference, mean, var, running_mean, running_var, num_batches_tracked,
                                  training, momentum, batch_moments)
    rstd_in, rstd_ln, rstd_bn = torch.rsqrt(var + eps), torch.rsqrt(var_ln + eps), torch.rsqrt(var_bn + eps)
    descriptor = torch.cat([(mean - mean_bn) * rstd_bn, rstd_bn / rstd_in - 1], dim=1)
    with _autocast_off(x):
        hidden = torch.relu(descriptor @ ratio_w1.to(mean.dtype).t() + ratio_b1.to(mean.dtype))
        logits = hidden @ ratio_w2.to(mean.dtype).t() + ratio_b2.to(mean.dtype)
    if spatial_size(x) == 1:
        logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], dim=1)
    ratios = torch.softmax(logits, dim=1)
    r_in, r_ln, r_bn = ratios[:, 0:1], ratios[:, 1:2], ratios[:, 2:3]
    scale = r_in * rstd_in + r_ln * rstd_ln + r_bn * rstd_bn
    shift = r_ln * (mean - mean_ln) * rstd_ln + r_bn * (mean - mean_bn) * rstd_bn
    if weight is not None:
        scale = scale * weight.to(scale.dtype)
        shift = shift * weight.to(scale.dtype)
    if bias is not None:
        shift = shift + bias.to(scale.dtype)
    return _normalize(values, reference, mean, scale, shift, x.dtype), ratios.detach().mean(0)


def _mix_with_batch(mean: Tensor, var: Tensor, batch_mean: Tensor, batch_var: Tensor, gate: Tensor
                    ) -> tuple[Tensor, Tensor]:
    """Each (n, c) distribution mixed with its channel's batch distribution (weight ``gate``)."""
    deviation = mean - batch_mean
    mixed_var = torch.lerp(var, batch_var.expand_as(var), gate) + gate * (1 - gate) * deviation.square()
    return mean - gate * deviation, mixed_var


def _mix_along(mean: Tensor, var: Tensor, axis: int, gate: Tensor) -> tuple[Tensor, Tensor]:
    """Each distribution mixed with the uniform mixture of the distributions along ``axis`` (weight ``gate``):
    ``mean' = lerp(m, avg m, g)``, ``var' = lerp(v, avg v + spread, g) + g (1 - g) (m - avg m)^2``."""
    average = mean.mean(axis, keepdim=True)
    deviation = mean - average
    pooled_var = var.mean(axis, keepdim=True) + deviation.square().mean(axis, keepdim=True)
    mixed_var = torch.lerp(var, pooled_var.expand_as(var), gate) + gate * (1 - gate) * deviation.square()
    return mean - gate * deviation, mixed_var


def dynamic_norm(
    x: Tensor, *, weight: Tensor | None, bias: Tensor | None, mean_gate_logits: Tensor, var_gate_logits: Tensor,
    mean_batch_logit: Tensor, var_batch_logit: Tensor, factors: Sequence[int], running_mean: Tensor | None,
    running_var: Tensor | None, num_batches_tracked: Tensor | None, training: bool, momentum: float | None,
    eps: float, batch_moments: BatchMoments | None = None,
) -> Tensor:
    r"""Dynamic Normalization: statistics pooled by a learned Kronecker product of averaging matrices.

    ``mu = A mu_IN`` and ``sigma^2`` the variance of the mixture ``A'`` of the instance distributions, with
    ``A = B kron U_1 kron ... kron U_K``, ``U_i = g_i J/s_i + (1 - g_i) I`` over the channel factors
    ``factors`` (``prod = C``) and ``B`` the batch factor (towards the BN statistics); gates are the sigmoids
    of the logits (``(K,)`` channel gates, ``()`` batch gate, separate for the mean and the variance). Each
    factor is applied as a mixture of distributions, ``var' = lerp(v, avg v + spread, g) + g (1 - g) d^2``,
    so the pooled variance is a sum of non-negative terms and never cancels; means are pooled relative to
    their average (pooling is equivariant to a common shift).
    """
    values = x.to(accumulation_dtype(x.dtype))
    reference, relative, var = relative_moments(values)
    batch_relative, var_bn = _batch_term(x, reference, relative, var, running_mean, running_var,
                                         num_batches_tracked, training, momentum, batch_moments)
    dtype = relative.dtype
    shape = (x.shape[0], *factors)
    # mean: B then the channel factors
    pooled_mean = torch.lerp(relative, batch_relative.expand_as(relative), torch.sigmoid(mean_batch_logit.to(dtype)))
    pooled_mean = pooled_mean.reshape(shape)
    for axis, gate in enumerate(torch.sigmoid(mean_gate_logits.to(dtype)), start=1):
        pooled_mean = torch.lerp(pooled_mean, pooled_mean.mean(axis, keepdim=True).expand_as(pooled_mean), gate)
    # variance: the mixture of distributions under the variance's own matrix
    var_mean, pooled_var = _mix_with_batch(relative, var, batch_relative, var_bn,
                                           torch.sigmoid(var_batch_logit.to(dtype)))
    var_mean, pooled_var = var_mean.reshape(shape), pooled_var.reshape(shape)
    for axis, gate in enumerate(torch.sigmoid(var_gate_logits.to(dtype)), start=1):
        var_mean, pooled_var = _mix_along(var_mean, pooled_var, axis, gate)
    scale = torch.rsqrt(pooled_var.reshape_as(var) + eps)
    if weight is not None:
        scale = scale * weight.to(dtype)
    shift = (relative - pooled_mean.reshape_as(relative)) * scale
    if bias is not None:
        shift = shift + bias.to(dtype)
    return _normalize(values, reference, relative, scale, shift, x.dtype)


def dynamic_affine_norm(
    x: Tensor, *, weight: Tensor | None, bias: Tensor | None, sc_w1: Tensor, sc_b1: Tensor, sc_w2: Tensor,
    sc_b2: Tensor, running_mean: Tensor | None, running_var: Tensor | None, num_batches_tracked: Tensor | None,
    training: bool, momentum: float | None, eps: float, per_sample: bool,
    batch_moments: BatchMoments | None = None,
) -> Tensor:
    r"""DN-B (``per_sample=True``) / DN-C: BN standardization with a generated scale and shift.

    .. math::
        [\Delta\gamma, \Delta\beta] = \tanh(W_2 \mathrm{ReLU}(W_1 s + b_1) + b_2), \quad
        y = (\gamma + \Delta\gamma) \frac{x - \mu_{BN}}{\sqrt{\sigma^2_{BN} + \epsilon}} + \beta + \Delta\beta

    ``s`` (``2C``): DN-B, per sample, ``[(mu_IN - mu_BN) / s_BN ; s_IN / s_BN]`` (``s = sqrt(var + eps)``);
    DN-C, per batch, ``[mu_BN ; s_BN]``. ``sc_w1 (H, 2C)``, ``sc_b1 (H,)``, ``sc_w2 (2C, H)``, ``sc_b2 (2C,)``.
    """
    values = x.to(accumulation_dtype(x.dtype))
    reference, mean, var = relative_moments(values)
    mean_bn, var_bn = _batch_term(x, reference, mean, var, running_mean, running_var, num_batches_tracked,
                                  training, momentum, batch_moments)
    rstd_bn = torch.rsqrt(var_bn + eps)
    if per_sample:
        generator_input = torch.cat([(mean - mean_bn) * rstd_bn, torch.sqrt(var + eps) * rstd_bn], dim=1)
    else:  # the raw batch statistics
        generator_input = torch.cat([mean_bn + reference, torch.sqrt(var_bn + eps)], dim=1)
    dtype, c = mean.dtype, x.shape[1]
    with _autocast_off(x):
        hidden = torch.relu(generator_input @ sc_w1.to(dtype).t() + sc_b1.to(dtype))
        delta = torch.tanh(hidden @ sc_w2.to(dtype).t() + sc_b2.to(dtype))
    gamma = delta[:, :c] + (1.0 if weight is None else weight.to(dtype))
    beta = delta[:, c:] + (0.0 if bias is None else bias.to(dtype))
    scale = gamma * rstd_bn
    return _normalize(values, reference, mean, scale, beta + (mean - mean_bn) * scale, x.dtype)


def associate_norm(
    x: Tensor, *, weight: Tensor, bias: Tensor, encoder_weight: Tensor, scale_decoder_weight: Tensor,
    shift_decoder_weight: Tensor, num_groups: int, eps: float, scale_from_mean: bool = True,
) -> Tensor:
    r"""Associate Normalization (equations 3-6 of the paper): GN standardization and a rescaling predicted by
    an auto-encoder on the group statistics.

    .. math::
        \omega = \mathrm{sigmoid}(W_2 \mathrm{ReLU}(W_1 \mu)) + B_\omega, \quad
        \beta = \tanh(W_3 \mathrm{ReLU}(W_1 \sigma^2)) + B_\beta, \quad
        y = \omega \frac{x - \mu_{GN}}{\sqrt{\sigma^2_{GN} + \epsilon}} + \beta

    ``mu``, ``sigma^2``: ``(N, G)`` group statistics (swapped with ``scale_from_mean=False``, ILM Norm);
    ``encoder_weight (E, G)``, decoders ``(G, E)``; ``weight``/``bias`` ``(C,)`` are ``B_omega``/``B_beta``.
    """
    values = x.to(accumulation_dtype(x.dtype))
    reference, mean, var = relative_moments(values)
    group_mean, group_var = group_moments(mean, var, num_groups)
    key_mean = group_mean + reference  # the key feature is the raw group mean
    scale_key, shift_key = (key_mean, group_var) if scale_from_mean else (group_var, key_mean)
    dtype, size = mean.dtype, x.shape[1] // num_groups
    encoder = encoder_weight.to(dtype)
    with _autocast_off(x):
        omega = torch.sigmoid(torch.relu(scale_key @ encoder.t()) @ scale_decoder_weight.to(dtype).t())
        beta = torch.tanh(torch.relu(shift_key @ encoder.t()) @ shift_decoder_weight.to(dtype).t())
    scale = (omega.repeat_interleave(size, dim=1) + weight.to(dtype)) * torch.rsqrt(group_var + eps).repeat_interleave(
        size, dim=1)
    shift = beta.repeat_interleave(size, dim=1) + bias.to(dtype) + (mean - group_mean.repeat_interleave(size, dim=1)) * scale
    return _normalize(values, reference, mean, scale, shift, x.dtype)
