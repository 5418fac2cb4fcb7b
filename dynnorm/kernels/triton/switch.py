"""Switchable Normalization (SN) and Sparse SN (SSN) as Triton kernels: three launches forward, three backward.

The ``(N, C)`` math is :func:`dynnorm.functional.switch_norm`'s: IN, LN (and BN) moments mixed by two sets of
weights, ``scale = weight / sqrt(sum_k wv_k var_k + eps)``, ``shift = bias + scale * (wm_LN (mean - mean_LN) +
wm_BN (mean - mean_BN))``; the backward is the closed form of ``SwitchNorm`` in ``dynnorm/csrc/layers.h``. SN's
weights are the softmax of logits or given simplex weights; SSN's are SparsestMax of its logits, or the one-hot
vector at ``selected`` once a mixture is fixed, and a ``freeze`` call fixes a mixture whose SparsestMax is one-hot
(on the device: the ``state`` output). With one value per (n, c) IN is left out of both mixtures.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import passes
from .passes import (backward_epilogue, backward_prologue, forward_prologue, nc_tile, stats_regions,
                     store_channel_gradients, work_regions)
from .runtime import empty
from .small import (channel_moments, columns, masked_softmax, pick, sparsestmax, without_instance_term,
                    without_instance_term_backward)

__all__ = ["sparse_switch_norm", "sparse_switch_norm_backward", "switch_norm", "switch_norm_backward"]


# ---- mixture weights ----------------------------------------------------------------------------------------

@triton.jit
def _given_mixture(ptr, K: tl.constexpr, LOGITS: tl.constexpr, SINGLE: tl.constexpr, acc):
    """SN's weights: softmax of logits (IN masked out for ``SINGLE``) or given weights (renormalized without IN)."""
    k = tl.arange(0, 4)
    weights = tl.load(ptr + k, mask=k < K, other=0.0).to(acc)
    if LOGITS:
        valid = k < K
        if SINGLE:
            valid = valid & (k > 0)
        weights = masked_softmax(weights, valid)
    elif SINGLE:
        weights = without_instance_term(weights)
    return weights


@triton.jit
def _given_mixture_backward(ptr, weights, g_weights, out_ptr, K: tl.constexpr, LOGITS: tl.constexpr,
                            SINGLE: tl.constexpr):
    k = tl.arange(0, 4)
    if LOGITS:
        grad = weights * (g_weights - tl.sum(weights * g_weights, 0))
    elif SINGLE:
        grad = without_instance_term_backward(tl.load(ptr + k, mask=k < K, other=0.0).to(weights.dtype), g_weights)
    else:
        grad = g_weights
    tl.store(out_ptr + k, grad.to(out_ptr.dtype.element_ty), mask=k < K)


@triton.jit
def _sparse_weights(logits_ptr, radius_ptr, K: tl.constexpr, acc):
    """SparsestMax of the logits and its Jacobian; non-finite logits give NaN weights."""
    k = tl.arange(0, 4)
    valid = k < K
    z = tl.load(logits_ptr + k, mask=valid, other=0.0).to(acc)
    weights, J = sparsestmax(z, tl.load(radius_ptr), valid, K)
    finite = tl.sum((valid & ~((z == z) & (tl.abs(z) < float("inf")))).to(tl.int32), 0) == 0
    return tl.where(finite, weights, float("nan")), J, finite


@triton.jit
def _sparse_mixture(logits_ptr, radius_ptr, fixed_ptr, selected_ptr, K: tl.constexpr, FREEZE: tl.constexpr, acc):
    """SSN's weights, fixed flag and selected entry after this call (a fixed mixture is one-hot at ``selected``;
    with ``FREEZE`` a mixture whose finite SparsestMax is one-hot becomes fixed at its argmax)."""
    k = tl.arange(0, 4)
    weights, _, finite = _sparse_weights(logits_ptr, radius_ptr, K, acc)
    fixed = tl.load(fixed_ptr) != 0
    selected = tl.load(selected_ptr)
    if FREEZE:
        top = tl.max(tl.where(k < K, weights, -1.0), 0)
        argmax = tl.min(tl.where((k < K) & (weights == top), k, 4), 0)
        newly = finite & ~fixed & (top >= 1 - 1e-6)
        fixed = fixed | newly
        selected = tl.where(newly, argmax.to(selected.dtype), selected)
    return tl.where(fixed, (k == selected).to(acc), weights), fixed, selected


@triton.jit
def _sparse_mixture_backward(logits_ptr, radius_ptr, fixed, g_weights, out_ptr, K: tl.constexpr,
                             SINGLE: tl.constexpr):
    """Gradient of SSN's logits from the gradient of the weights used: zero for a fixed mixture and for
    non-finite logits (whose NaN weights do not depend on them)."""
    k = tl.arange(0, 4)
    weights, J, finite = _sparse_weights(logits_ptr, radius_ptr, K, g_weights.dtype)
    if SINGLE:
        g_weights = without_instance_term_backward(weights, g_weights)
    grad = tl.sum(J * g_weights[:, None], 0)
    tl.store(out_ptr + k, tl.where(fixed | ~finite, 0.0, grad).to(out_ptr.dtype.element_ty), mask=k < K)


# ---- the (N, C) math ----------------------------------------------------------------------------------------

@triton.jit
def _coefficients(stats_ptr, coef_ptr, weight_ptr, bias_ptr, wm, wv, N, C, eps, HAS_WEIGHT: tl.constexpr,
                  HAS_BIAS: tl.constexpr, HAS_BN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """scale/shift of every (n, c) from the stats buffer and the mixture weights ``wm``/``wv`` (IN, LN, BN)."""
    mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, _ = stats_regions(stats_ptr, N, C)
    wm1, wm2 = pick(wm, 1), pick(wm, 2)
    wv0, wv1, wv2 = pick(wv, 0), pick(wv, 1), pick(wv, 2)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        ln_mean, ln_var = channel_moments(mean_ptr, var_ptr, n, n < N, C, BLOCK_C)
        for c0 in range(0, C, BLOCK_C):
            n, c, j, mask = nc_tile(n0, c0, N, C, BLOCK_N, BLOCK_C)
            mean = tl.load(mean_ptr + j, mask=mask, other=0.0)
            mixed_var = wv0 * tl.load(var_ptr + j, mask=mask, other=0.0) + wv1 * ln_var[:, None]
            deviation = wm1 * (mean - ln_mean[:, None])
            if HAS_BN:
                mixed_var += wv2 * tl.load(bn_var_ptr + c, mask=c < C, other=0.0)[None, :]
                deviation += wm2 * (mean - tl.load(bn_mean_ptr + c, mask=c < C, other=0.0)[None, :])
            scale = 1.0 / tl.sqrt(mixed_var + eps)
            if HAS_WEIGHT:
                scale = scale * tl.load(weight_ptr + c, mask=c < C, other=1.0).to(scale.dtype)[None, :]
            shift = deviation * scale
            if HAS_BIAS:
                shift += tl.load(bias_ptr + c, mask=c < C, other=0.0).to(scale.dtype)[None, :]
            tl.store(coef_ptr + j, scale, mask=mask)
            tl.store(coef_ptr + N * C + j, shift, mask=mask)


@triton.jit
def _terms(stats_ptr, work_ptr, weight_ptr, ln_mean, ln_var, n0, c0, N, C, wm1, wm2, wv0, wv1, wv2, eps,
           HAS_WEIGHT: tl.constexpr, HAS_BN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """The per-(n, c) quantities of the backward on the tile at ``(n0, c0)`` (zero outside the mask)."""
    mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, _ = stats_regions(stats_ptr, N, C)
    g_shift_ptr, g_scale_ptr, _, _, _, _, _ = work_regions(work_ptr, N, C)
    n, c, j, mask = nc_tile(n0, c0, N, C, BLOCK_N, BLOCK_C)
    mean = tl.load(mean_ptr + j, mask=mask, other=0.0)
    var = tl.load(var_ptr + j, mask=mask, other=0.0)
    g_shift = tl.load(g_shift_ptr + j, mask=mask, other=0.0)
    g_scale = tl.load(g_scale_ptr + j, mask=mask, other=0.0)
    to_ln = mean - ln_mean[:, None]
    mixed_var = wv0 * var + wv1 * ln_var[:, None]
    deviation = wm1 * to_ln
    if HAS_BN:
        bn_var = tl.load(bn_var_ptr + c, mask=c < C, other=0.0)[None, :]
        to_bn = mean - tl.load(bn_mean_ptr + c, mask=c < C, other=0.0)[None, :]
        mixed_var += wv2 * bn_var
        deviation += wm2 * to_bn
    else:
        bn_var = tl.zeros_like(mean)
        to_bn = tl.zeros_like(mean)
    rstd = 1.0 / tl.sqrt(mixed_var + eps)
    gamma = tl.full([BLOCK_N, BLOCK_C], 1.0, mean.dtype)
    if HAS_WEIGHT:
        gamma = gamma * tl.load(weight_ptr + c, mask=c < C, other=1.0).to(mean.dtype)[None, :]
    scale = rstd * gamma
    g_total_scale = tl.where(mask, g_scale + g_shift * deviation, 0.0)
    g_var = -0.5 * rstd * rstd * rstd * g_total_scale * gamma  # of the mixed variance
    g_deviation = g_shift * scale
    return j, mask, var, bn_var, to_ln, to_bn, rstd, scale, g_shift, g_total_scale, g_var, g_deviation


@triton.jit
def _backward_math(stats_ptr, work_ptr, scratch_ptr, weight_ptr, d_weight_ptr, d_bias_ptr, wm, wv, N, C, eps,
                   HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_BN: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    """SN's closed-form backward: writes scale, g_mean, g_var (N*C), g_bn_mean, g_bn_var (C), d_weight, d_bias;
    returns the gradients of the mixture weights (4-vectors). ``scratch``: LN moments and their gradients (4N)."""
    acc = stats_ptr.dtype.element_ty
    mean_ptr, var_ptr, _, _, _ = stats_regions(stats_ptr, N, C)
    _, _, scale_ptr, g_mean_ptr, g_var_ptr, _, _ = work_regions(work_ptr, N, C)
    wm1, wm2 = pick(wm, 1), pick(wm, 2)
    wv0, wv1, wv2 = pick(wv, 0), pick(wv, 1), pick(wv, 2)
    g_wv0 = tl.zeros([BLOCK_N, BLOCK_C], acc)
    g_wv1 = tl.zeros([BLOCK_N, BLOCK_C], acc)
    g_wv2 = tl.zeros([BLOCK_N, BLOCK_C], acc)
    g_wm1 = tl.zeros([BLOCK_N, BLOCK_C], acc)
    g_wm2 = tl.zeros([BLOCK_N, BLOCK_C], acc)
    # per sample: LN moments and their gradients (reductions over channels), the mixtures' gradients
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < N
        ln_mean, ln_var = channel_moments(mean_ptr, var_ptr, n, n_ok, C, BLOCK_C)
        g_ln_mean = tl.zeros([BLOCK_N, BLOCK_C], acc)
        g_ln_var = tl.zeros([BLOCK_N, BLOCK_C], acc)
        for c0 in range(0, C, BLOCK_C):
            j, mask, var, bn_var, to_ln, to_bn, rstd, scale, g_shift, g_total_scale, g_var, g_deviation = _terms(
                stats_ptr, work_ptr, weight_ptr, ln_mean, ln_var, n0, c0, N, C, wm1, wm2, wv0, wv1, wv2, eps,
                HAS_WEIGHT, HAS_BN, BLOCK_N, BLOCK_C)
            g_ln_mean -= wm1 * g_deviation
            g_ln_var += wv1 * g_var
            g_wv0 += g_var * var
            g_wv1 += g_var * ln_var[:, None]
            g_wm1 += g_deviation * to_ln
            if HAS_BN:
                g_wv2 += g_var * bn_var
                g_wm2 += g_deviation * to_bn
        tl.store(scratch_ptr + n, ln_mean, mask=n_ok)
        tl.store(scratch_ptr + N + n, ln_var, mask=n_ok)
        tl.store(scratch_ptr + 2 * N + n, tl.sum(g_ln_mean, 1), mask=n_ok)
        tl.store(scratch_ptr + 3 * N + n, tl.sum(g_ln_var, 1), mask=n_ok)
    tl.debug_barrier()
    # per channel: parameter and BN gradients (reductions over samples); per (n, c): g_mean, g_var, scale
    for c0 in range(0, C, BLOCK_C):
        c, c_ok = columns(c0, C, BLOCK_C)
        d_weight = tl.zeros([BLOCK_N, BLOCK_C], acc)
        d_bias = tl.zeros([BLOCK_N, BLOCK_C], acc)
        g_bn_mean = tl.zeros([BLOCK_N, BLOCK_C], acc)
        g_bn_var = tl.zeros([BLOCK_N, BLOCK_C], acc)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            n_ok = n < N
            ln_mean = tl.load(scratch_ptr + n, mask=n_ok, other=0.0)
            ln_var = tl.load(scratch_ptr + N + n, mask=n_ok, other=0.0)
            g_ln_mean = tl.load(scratch_ptr + 2 * N + n, mask=n_ok, other=0.0)[:, None] / C
            g_ln_var = tl.load(scratch_ptr + 3 * N + n, mask=n_ok, other=0.0)[:, None] / C
            j, mask, var, bn_var, to_ln, to_bn, rstd, scale, g_shift, g_total_scale, g_var, g_deviation = _terms(
                stats_ptr, work_ptr, weight_ptr, ln_mean, ln_var, n0, c0, N, C, wm1, wm2, wv0, wv1, wv2, eps,
                HAS_WEIGHT, HAS_BN, BLOCK_N, BLOCK_C)
            d_weight += g_total_scale * rstd
            d_bias += g_shift
            g_bn_mean -= wm2 * g_deviation
            g_bn_var += wv2 * g_var
            tl.store(scale_ptr + j, scale, mask=mask)
            tl.store(g_var_ptr + j, wv0 * g_var + g_ln_var, mask=mask)
            tl.store(g_mean_ptr + j, (wm1 + wm2) * g_deviation + g_ln_mean + 2 * g_ln_var * to_ln, mask=mask)
        store_channel_gradients(work_ptr, N, C, c, c_ok, d_weight_ptr, d_bias_ptr, tl.sum(d_weight, 0),
                                tl.sum(d_bias, 0), tl.sum(g_bn_mean, 0), tl.sum(g_bn_var, 0), HAS_WEIGHT, HAS_BIAS)
    k = tl.arange(0, 4)
    g_wm = tl.where(k == 1, tl.sum(tl.sum(g_wm1, 1), 0), 0.0) + tl.where(k == 2, tl.sum(tl.sum(g_wm2, 1), 0), 0.0)
    g_wv = (tl.where(k == 0, tl.sum(tl.sum(g_wv0, 1), 0), 0.0) + tl.where(k == 1, tl.sum(tl.sum(g_wv1, 1), 0), 0.0)
            + tl.where(k == 2, tl.sum(tl.sum(g_wv2, 1), 0), 0.0))
    return g_wm, g_wv


# ---- kernels ------------------------------------------------------------------------------------------------

@triton.jit
def _switch_norm_forward_kernel(part_ptr, first_ptr, running_mean_ptr, running_var_ptr, stats_ptr, batch_ptr,
                                coef_ptr, scratch_ptr, N, C, L, S, weight_ptr, bias_ptr, mean_mixture_ptr, var_mixture_ptr,
                                eps, HAS_BN: tl.constexpr, USE_RUNNING: tl.constexpr, BLOCK_N: tl.constexpr,
                                BLOCK_C: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                                K: tl.constexpr, LOGITS: tl.constexpr, SINGLE: tl.constexpr):
    forward_prologue(part_ptr, first_ptr, running_mean_ptr, running_var_ptr, stats_ptr, batch_ptr, N, C, L, S,
                     HAS_BN, USE_RUNNING, BLOCK_N, BLOCK_C)
    acc = stats_ptr.dtype.element_ty
    wm = _given_mixture(mean_mixture_ptr, K, LOGITS, SINGLE, acc)
    wv = _given_mixture(var_mixture_ptr, K, LOGITS, SINGLE, acc)
    _coefficients(stats_ptr, coef_ptr, weight_ptr, bias_ptr, wm, wv, N, C, eps, HAS_WEIGHT, HAS_BIAS, HAS_BN,
                  BLOCK_N, BLOCK_C)


@triton.jit
def _switch_norm_backward_kernel(part_ptr, stats_ptr, work_ptr, scratch_ptr, N, C, L, S, weight_ptr,
                                 mean_mixture_ptr, var_mixture_ptr, d_weight_ptr, d_bias_ptr, d_mean_mixture_ptr,
                                 d_var_mixture_ptr, eps, FOLD_BN: tl.constexpr, BLOCK_N: tl.constexpr,
                                 BLOCK_C: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                                 K: tl.constexpr, LOGITS: tl.constexpr, SINGLE: tl.constexpr):
    backward_prologue(part_ptr, work_ptr, N, C, S, BLOCK_N, BLOCK_C)
    acc = stats_ptr.dtype.element_ty
    wm = _given_mixture(mean_mixture_ptr, K, LOGITS, SINGLE, acc)
    wv = _given_mixture(var_mixture_ptr, K, LOGITS, SINGLE, acc)
    g_wm, g_wv = _backward_math(stats_ptr, work_ptr, scratch_ptr, weight_ptr, d_weight_ptr, d_bias_ptr, wm, wv, N,
                                C, eps, HAS_WEIGHT, HAS_BIAS, K == 3, BLOCK_N, BLOCK_C)
    _given_mixture_backward(mean_mixture_ptr, wm, g_wm, d_mean_mixture_ptr, K, LOGITS, SINGLE)
    _given_mixture_backward(var_mixture_ptr, wv, g_wv, d_var_mixture_ptr, K, LOGITS, SINGLE)
    backward_epilogue(stats_ptr, work_ptr, N, C, L, FOLD_BN, BLOCK_N, BLOCK_C)


@triton.jit
def _sparse_switch_norm_forward_kernel(part_ptr, first_ptr, running_mean_ptr, running_var_ptr, stats_ptr,
                                       batch_ptr, coef_ptr, scratch_ptr, N, C, L, S, weight_ptr, bias_ptr,
                                       mean_weight_ptr, var_weight_ptr, radius_ptr, mean_fixed_ptr, var_fixed_ptr,
                                       mean_selected_ptr, var_selected_ptr, mixtures_ptr, state_ptr, eps,
                                       HAS_BN: tl.constexpr,
                                       USE_RUNNING: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                                       HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, K: tl.constexpr,
                                       FREEZE: tl.constexpr, SINGLE: tl.constexpr):
    forward_prologue(part_ptr, first_ptr, running_mean_ptr, running_var_ptr, stats_ptr, batch_ptr, N, C, L, S,
                     HAS_BN, USE_RUNNING, BLOCK_N, BLOCK_C)
    acc = stats_ptr.dtype.element_ty
    wm, mean_fixed, mean_selected = _sparse_mixture(mean_weight_ptr, radius_ptr, mean_fixed_ptr, mean_selected_ptr,
                                                    K, FREEZE, acc)
    wv, var_fixed, var_selected = _sparse_mixture(var_weight_ptr, radius_ptr, var_fixed_ptr, var_selected_ptr, K,
                                                  FREEZE, acc)
    if SINGLE:
        wm = without_instance_term(wm)
        wv = without_instance_term(wv)
    k = tl.arange(0, 4)
    tl.store(mixtures_ptr + k, wm, mask=k < K)
    tl.store(mixtures_ptr + K + k, wv, mask=k < K)
    state = tl.where(k == 0, mean_fixed.to(tl.int64), tl.where(k == 1, var_fixed.to(tl.int64),
                                                                tl.where(k == 2, mean_selected, var_selected)))
    tl.store(state_ptr + k, state)
    _coefficients(stats_ptr, coef_ptr, weight_ptr, bias_ptr, wm, wv, N, C, eps, HAS_WEIGHT, HAS_BIAS, HAS_BN,
                  BLOCK_N, BLOCK_C)


@triton.jit
def _sparse_switch_norm_backward_kernel(part_ptr, stats_ptr, work_ptr, scratch_ptr, N, C, L, S, weight_ptr,
                                        mean_weight_ptr, var_weight_ptr, radius_ptr, mixtures_ptr, state_ptr,
                                        d_weight_ptr, d_bias_ptr, d_mean_weight_ptr, d_var_weight_ptr, eps,
                                        FOLD_BN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                                        HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, K: tl.constexpr,
                                        SINGLE: tl.constexpr):
    backward_prologue(part_ptr, work_ptr, N, C, S, BLOCK_N, BLOCK_C)
    acc = stats_ptr.dtype.element_ty
    k = tl.arange(0, 4)
    wm = tl.load(mixtures_ptr + k, mask=k < K, other=0.0).to(acc)
    wv = tl.load(mixtures_ptr + K + k, mask=k < K, other=0.0).to(acc)
    g_wm, g_wv = _backward_math(stats_ptr, work_ptr, scratch_ptr, weight_ptr, d_weight_ptr, d_bias_ptr, wm, wv, N,
                                C, eps, HAS_WEIGHT, HAS_BIAS, K == 3, BLOCK_N, BLOCK_C)
    _sparse_mixture_backward(mean_weight_ptr, radius_ptr, tl.load(state_ptr) != 0, g_wm, d_mean_weight_ptr, K,
                             SINGLE)
    _sparse_mixture_backward(var_weight_ptr, radius_ptr, tl.load(state_ptr + 1) != 0, g_wv, d_var_weight_ptr, K,
                             SINGLE)
    backward_epilogue(stats_ptr, work_ptr, N, C, L, FOLD_BN, BLOCK_N, BLOCK_C)


# ---- the functions of the operator contract ------------------------------------------------------------------

def _mixture_size(mean: Tensor, var: Tensor, name: str) -> int:
    if mean.dim() != 1 or mean.numel() not in (2, 3) or var.shape != mean.shape:
        raise ValueError(f"{name}: the mean and variance mixtures must both be (2,) (IN, LN) or (3,) (IN, LN, BN), "
                         f"got {list(mean.shape)} and {list(var.shape)}")
    return mean.numel()


def switch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, mean_mixture: Tensor, var_mixture: Tensor,
                running_mean: Tensor | None, running_var: Tensor | None, training: bool, eps: float,
                mixture_logits: bool) -> tuple[Tensor, Tensor, Tensor]:
    """SN forward: ``(y, stats, batch)``; see the package's docstring."""
    K = _mixture_size(mean_mixture, var_mixture, "switch_norm")
    plan = passes.Forward(x, has_bn=K == 3, running_mean=running_mean, running_var=running_var, training=training)
    plan.launch_math(_switch_norm_forward_kernel, passes.optional(weight, plan.stats),
                     passes.optional(bias, plan.stats), mean_mixture, var_mixture, float(eps),
                     **passes.affine_meta(weight, bias), K=K, LOGITS=bool(mixture_logits), SINGLE=plan.geometry.L == 1)
    return plan.outputs()


def switch_norm_backward(grad_y: Tensor, x: Tensor, stats: Tensor, weight: Tensor | None, bias: Tensor | None,
                         mean_mixture: Tensor, var_mixture: Tensor, batch_from_input: bool, eps: float,
                         mixture_logits: bool, input_grad: bool
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """SN backward: ``(dx, d_weight, d_bias, d_mean_mixture, d_var_mixture)``."""
    K = _mixture_size(mean_mixture, var_mixture, "switch_norm_backward")
    plan = passes.Backward(grad_y, x, stats, fold_bn=batch_from_input and K == 3, input_grad=input_grad,
                           scratch=4 * x.shape[0])
    d_weight, d_bias = passes.grad_like(weight, stats), passes.grad_like(bias, stats)
    d_mean, d_var = passes.grad_like(mean_mixture, stats), passes.grad_like(var_mixture, stats)
    plan.launch_math(_switch_norm_backward_kernel, passes.optional(weight, stats), mean_mixture, var_mixture,
                     d_weight, d_bias, d_mean, d_var, float(eps), **passes.affine_meta(weight, bias), K=K,
                     LOGITS=bool(mixture_logits), SINGLE=plan.geometry.L == 1)
    return plan.outputs(d_weight, d_bias, d_mean, d_var)


def sparse_switch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, mean_weight: Tensor,
                       var_weight: Tensor, radius: Tensor, mean_fixed: Tensor, var_fixed: Tensor,
                       mean_selected: Tensor, var_selected: Tensor, running_mean: Tensor | None,
                       running_var: Tensor | None, training: bool, eps: float, freeze: bool
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """SSN forward: ``(y, stats, batch, mixtures (2, K), state (4,) long)``."""
    K = _mixture_size(mean_weight, var_weight, "sparse_switch_norm")
    plan = passes.Forward(x, has_bn=K == 3, running_mean=running_mean, running_var=running_var, training=training)
    mixtures = empty("mixtures", (2, K), dtype=plan.stats.dtype, device=x.device)
    state = empty("state", (4,), dtype=torch.long, device=x.device)
    plan.launch_math(_sparse_switch_norm_forward_kernel, passes.optional(weight, plan.stats),
                     passes.optional(bias, plan.stats), mean_weight, var_weight, radius, mean_fixed, var_fixed,
                     mean_selected, var_selected, mixtures, state, float(eps), **passes.affine_meta(weight, bias),
                     K=K, FREEZE=bool(freeze), SINGLE=plan.geometry.L == 1)
    return plan.outputs(mixtures, state)


def sparse_switch_norm_backward(grad_y: Tensor, x: Tensor, stats: Tensor, weight: Tensor | None,
                                bias: Tensor | None, mean_weight: Tensor, var_weight: Tensor, radius: Tensor,
                                mixtures: Tensor, state: Tensor, batch_from_input: bool, eps: float,
                                input_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """SSN backward: ``(dx, d_weight, d_bias, d_mean_weight, d_var_weight)`` (a fixed mixture's logits get 0)."""
    K = _mixture_size(mean_weight, var_weight, "sparse_switch_norm_backward")
    plan = passes.Backward(grad_y, x, stats, fold_bn=batch_from_input and K == 3, input_grad=input_grad,
                           scratch=4 * x.shape[0])
    d_weight, d_bias = passes.grad_like(weight, stats), passes.grad_like(bias, stats)
    d_mean, d_var = passes.grad_like(mean_weight, stats), passes.grad_like(var_weight, stats)
    plan.launch_math(_sparse_switch_norm_backward_kernel, passes.optional(weight, stats), mean_weight, var_weight,
                     radius, mixtures, state, d_weight, d_bias, d_mean, d_var, float(eps),
                     **passes.affine_meta(weight, bias), K=K, SINGLE=plan.geometry.L == 1)
    return plan.outputs(d_weight, d_bias, d_mean, d_var)
