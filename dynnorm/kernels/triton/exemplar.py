"""Exemplar Normalization's ``(N, C)``-sized math in Triton.

The forward math reads the statistics buffer (instance means relative to ``R`` and variances, the BN term's mean
relative to ``R`` and variance) and writes ``scale``/``shift`` of ``y = ((x - R) - mean) * scale + shift`` and the
batch-averaged ratios; the backward math, given ``g_shift = sum(dy)`` and ``g_scale = sum(dy * ((x - R) - mean))``
per (n, c), writes ``scale``, the gradients of the instance moments and of the BN term's statistics and every
parameter's gradient, in the closed form of ``ExemplarNorm`` in ``dynnorm/csrc/layers.h`` (the formulas of
:func:`dynnorm.functional.exemplar_norm`).

Layout of the work: ``[BLOCK_N, BLOCK_C]`` tiles with masks on both axes; the ratio head loops over its hidden
units one at a time (a hidden unit's pre-activations for all samples go to the layer's scratch); values one phase
needs from another phase's reductions go through scratch behind a ``tl.debug_barrier()``. One program; no atomics.
"""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from . import passes
from .passes import (backward_epilogue, backward_prologue, forward_prologue, stats_regions, store_channel_gradients,
                     work_regions)
from .runtime import empty
from .small import (batch_columns, channel_moments, hidden_column, instance_tile, relu, rows, rsqrt,
                    standardized_columns, store_cast, tile)

__all__ = ["exemplar_norm", "exemplar_norm_backward"]


# ---- Exemplar Normalization ----------------------------------------------------------------------------------------
# scratch: hidden pre-activations (N * H, unit-major: h * N + n), hidden gradients (N * H, the same), then the
# per-sample values below (N each).
_LN_MEAN = tl.constexpr(0)
_RSTD_LN = tl.constexpr(1)
_RATIO = tl.constexpr(2)       # 3 values: IN, LN, BN
_G_LN_MEAN = tl.constexpr(5)
_G_LN_VAR = tl.constexpr(6)
_G_LOGIT = tl.constexpr(7)     # 3 values
_SAMPLE_VALUES = tl.constexpr(10)


def _exemplar_scratch(n: int, hidden: int) -> int:
    """Scratch values (statistics' dtype) of the EN math for ``n`` samples and ``hidden`` hidden units."""
    return n * (2 * hidden + _SAMPLE_VALUES.value)


@triton.jit
def _exemplar_descriptor(mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, reference_ptr, n, n_mask, c, c_mask, C, eps,
                         OPTION: tl.constexpr):
    """The descriptor's halves on a tile: ``(mu - mu_BN) / s_BN`` and ``s_IN / s_BN - 1`` (0 where masked)."""
    offsets, mask = tile(n, n_mask, c, c_mask, C)
    mean, var = instance_tile(mean_ptr, var_ptr, offsets, mask)
    bn_mean, rstd_bn = batch_columns(bn_mean_ptr, bn_var_ptr, c, c_mask, eps)
    relative_mean = (mean - bn_mean[None, :]) * rstd_bn[None, :]
    relative_std = tl.sqrt(var + eps) * rstd_bn[None, :] - 1.0
    return tl.where(mask, relative_mean, 0.0), tl.where(mask, relative_std, 0.0)


@triton.jit
def _exemplar_samples(stats_ptr, scratch_ptr, N, C, w1_ptr, b1_ptr, w2_ptr, b2_ptr, H, eps, n0,
                      SINGLE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """A block of samples' LN statistics and ratios: ``(ln_mean, rstd_ln, r_in, r_ln, r_bn)``, each
    ``(BLOCK_N,)``; the hidden pre-activations go to scratch."""
    mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, reference_ptr = stats_regions(stats_ptr, N, C)
    DT = stats_ptr.dtype.element_ty
    n, n_mask = rows(n0, N, BLOCK_N)
    for unit in range(H):
        hidden_column(w1_ptr, 2 * C, 0, C, b1_ptr, unit, scratch_ptr + unit * N, n0, N, C, _exemplar_descriptor,
                      mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, reference_ptr, eps, 0, BLOCK_N, BLOCK_C)
    ln_mean, ln_var = channel_moments(mean_ptr, var_ptr, n, n_mask, C, BLOCK_C)
    rstd_ln = rsqrt(ln_var + eps)
    tl.debug_barrier()
    logit_in = tl.zeros([BLOCK_N], DT) + tl.load(b2_ptr).to(DT)
    logit_ln = tl.zeros([BLOCK_N], DT) + tl.load(b2_ptr + 1).to(DT)
    logit_bn = tl.zeros([BLOCK_N], DT) + tl.load(b2_ptr + 2).to(DT)
    for unit in range(H):
        hidden = relu(tl.load(scratch_ptr + unit * N + n, mask=n_mask, other=0.0))
        logit_in += tl.load(w2_ptr + unit).to(DT) * hidden
        logit_ln += tl.load(w2_ptr + H + unit).to(DT) * hidden
        logit_bn += tl.load(w2_ptr + 2 * H + unit).to(DT) * hidden
    top = tl.maximum(logit_ln, logit_bn)
    if not SINGLE:
        top = tl.maximum(top, logit_in)
    e_ln = tl.exp(logit_ln - top)
    e_bn = tl.exp(logit_bn - top)
    if SINGLE:  # IN left out for one value per (n, c)
        e_in = tl.zeros_like(e_ln)
    else:
        e_in = tl.exp(logit_in - top)
    norm = e_in + e_ln + e_bn
    return ln_mean, rstd_ln, e_in / norm, e_ln / norm, e_bn / norm


@triton.jit
def _exemplar_math(stats_ptr, coef_ptr, scratch_ptr, N, C, weight_ptr, bias_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                   ratios_ptr, H, eps, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, SINGLE: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """EN forward math: ``scale = gamma * (r_IN rstd_IN + r_LN rstd_LN + r_BN rstd_BN)`` and
    ``shift = beta + gamma * (r_LN (mu - mu_LN) rstd_LN + r_BN (mu - mu_BN) rstd_BN)`` into ``coef``
    (``scale | shift``), the batch-averaged ratios ``(3,)`` into ``ratios``. ``w1 (H, 2C)``, ``b1 (H,)``,
    ``w2 (3, H)``, ``b2 (3,)``; scratch: :func:`_exemplar_scratch`."""
    mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, reference_ptr = stats_regions(stats_ptr, N, C)
    DT = stats_ptr.dtype.element_ty
    sum_in = tl.zeros([BLOCK_N], DT)
    sum_ln = tl.zeros([BLOCK_N], DT)
    sum_bn = tl.zeros([BLOCK_N], DT)
    for n0 in range(0, N, BLOCK_N):
        n, n_mask = rows(n0, N, BLOCK_N)
        ln_mean, rstd_ln, r_in, r_ln, r_bn = _exemplar_samples(stats_ptr, scratch_ptr, N, C, w1_ptr, b1_ptr, w2_ptr,
                                                               b2_ptr, H, eps, n0, SINGLE, BLOCK_N, BLOCK_C)
        sum_in += tl.where(n_mask, r_in, 0.0)
        sum_ln += tl.where(n_mask, r_ln, 0.0)
        sum_bn += tl.where(n_mask, r_bn, 0.0)
        for c0 in range(0, C, BLOCK_C):
            c, c_mask, bn_mean, rstd_bn, gamma, beta = standardized_columns(
                c0, C, bn_mean_ptr, bn_var_ptr, weight_ptr, bias_ptr, eps, DT, HAS_WEIGHT, HAS_BIAS, BLOCK_C)
            offsets, mask = tile(n, n_mask, c, c_mask, C)
            mean, var = instance_tile(mean_ptr, var_ptr, offsets, mask)
            scale = gamma[None, :] * (r_in[:, None] * rsqrt(var + eps) + (r_ln * rstd_ln)[:, None]
                                      + r_bn[:, None] * rstd_bn[None, :])
            shift = beta[None, :] + gamma[None, :] * ((r_ln * rstd_ln)[:, None] * (mean - ln_mean[:, None])
                                                      + r_bn[:, None] * (mean - bn_mean[None, :]) * rstd_bn[None, :])
            tl.store(coef_ptr + offsets, scale, mask=mask)
            tl.store(coef_ptr + N * C + offsets, shift, mask=mask)
    store_cast(ratios_ptr, 0, True, tl.sum(sum_in, axis=0) / N)
    store_cast(ratios_ptr, 1, True, tl.sum(sum_ln, axis=0) / N)
    store_cast(ratios_ptr, 2, True, tl.sum(sum_bn, axis=0) / N)


@triton.jit
def _exemplar_sample_backward(stats_ptr, work_ptr, scratch_ptr, N, C, weight_ptr, bias_ptr, w1_ptr, b1_ptr, w2_ptr,
                              b2_ptr, H, eps, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                              SINGLE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per block of samples: the gradients of the ratios (sums over the sample's channels), back through the
    softmax and the head; leaves the per-sample values and the hidden gradients in scratch."""
    mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, reference_ptr = stats_regions(stats_ptr, N, C)
    g_shift_ptr, g_scale_ptr, scale_ptr, g_mean_ptr, g_var_ptr, g_bn_mean_ptr, g_bn_var_ptr = work_regions(
        work_ptr, N, C)
    DT = stats_ptr.dtype.element_ty
    samples_ptr = scratch_ptr + 2 * N * H
    for n0 in range(0, N, BLOCK_N):
        n, n_mask = rows(n0, N, BLOCK_N)
        ln_mean, rstd_ln, r_in, r_ln, r_bn = _exemplar_samples(stats_ptr, scratch_ptr, N, C, w1_ptr, b1_ptr, w2_ptr,
                                                               b2_ptr, H, eps, n0, SINGLE, BLOCK_N, BLOCK_C)
        to_in = tl.zeros([BLOCK_N, BLOCK_C], DT)   # gA rstd_IN
        to_ln = tl.zeros([BLOCK_N, BLOCK_C], DT)   # gA + gB (mu - mu_LN)
        to_bn = tl.zeros([BLOCK_N, BLOCK_C], DT)   # (gA + gB (mu - mu_BN)) rstd_BN
        sum_gb = tl.zeros([BLOCK_N, BLOCK_C], DT)
        for c0 in range(0, C, BLOCK_C):
            c, c_mask, bn_mean, rstd_bn, gamma, beta = standardized_columns(
                c0, C, bn_mean_ptr, bn_var_ptr, weight_ptr, bias_ptr, eps, DT, HAS_WEIGHT, HAS_BIAS, BLOCK_C)
            offsets, mask = tile(n, n_mask, c, c_mask, C)
            mean, var = instance_tile(mean_ptr, var_ptr, offsets, mask)
            g_a = tl.load(g_scale_ptr + offsets, mask=mask, other=0.0) * gamma[None, :]
            g_b = tl.load(g_shift_ptr + offsets, mask=mask, other=0.0) * gamma[None, :]
            to_in += g_a * rsqrt(var + eps)
            to_ln += g_a + g_b * (mean - ln_mean[:, None])
            to_bn += (g_a + g_b * (mean - bn_mean[None, :])) * rstd_bn[None, :]
            sum_gb += g_b
        g_r_in = tl.sum(to_in, axis=1)
        g_r_ln = tl.sum(to_ln, axis=1) * rstd_ln
        g_r_bn = tl.sum(to_bn, axis=1)
        dot = r_in * g_r_in + r_ln * g_r_ln + r_bn * g_r_bn
        values = (ln_mean, rstd_ln, r_in, r_ln, r_bn, -r_ln * rstd_ln * tl.sum(sum_gb, axis=1),
                  -0.5 * rstd_ln * rstd_ln * rstd_ln * r_ln * tl.sum(to_ln, axis=1),
                  r_in * (g_r_in - dot), r_ln * (g_r_ln - dot), r_bn * (g_r_bn - dot))
        for k in tl.static_range(_SAMPLE_VALUES):
            tl.store(samples_ptr + k * N + n, values[k], mask=n_mask)
        for unit in range(H):
            pre = tl.load(scratch_ptr + unit * N + n, mask=n_mask, other=0.0)
            g_hidden = (values[_G_LOGIT] * tl.load(w2_ptr + unit).to(DT)
                        + values[_G_LOGIT + 1] * tl.load(w2_ptr + H + unit).to(DT)
                        + values[_G_LOGIT + 2] * tl.load(w2_ptr + 2 * H + unit).to(DT))
            tl.store(scratch_ptr + (H + unit) * N + n, tl.where(pre <= 0, 0.0, g_hidden), mask=n_mask)


@triton.jit
def _exemplar_head_backward(stats_ptr, scratch_ptr, N, H, g_b1_ptr, g_w2_ptr, g_b2_ptr, BLOCK_N: tl.constexpr):
    """The head's parameter gradients except ``W1``: sums over samples of the scratch values."""
    DT = stats_ptr.dtype.element_ty
    samples_ptr = scratch_ptr + 2 * N * H
    for k in tl.static_range(3):
        acc = tl.zeros([BLOCK_N], DT)
        for n0 in range(0, N, BLOCK_N):
            n, n_mask = rows(n0, N, BLOCK_N)
            acc += tl.load(samples_ptr + (_G_LOGIT + k) * N + n, mask=n_mask, other=0.0)
        store_cast(g_b2_ptr, k, True, tl.sum(acc, axis=0))
    for unit in range(H):
        g_b1 = tl.zeros([BLOCK_N], DT)
        g_w2_in = tl.zeros([BLOCK_N], DT)
        g_w2_ln = tl.zeros([BLOCK_N], DT)
        g_w2_bn = tl.zeros([BLOCK_N], DT)
        for n0 in range(0, N, BLOCK_N):
            n, n_mask = rows(n0, N, BLOCK_N)
            hidden = relu(tl.load(scratch_ptr + unit * N + n, mask=n_mask, other=0.0))
            g_b1 += tl.load(scratch_ptr + (H + unit) * N + n, mask=n_mask, other=0.0)
            g_w2_in += hidden * tl.load(samples_ptr + _G_LOGIT * N + n, mask=n_mask, other=0.0)
            g_w2_ln += hidden * tl.load(samples_ptr + (_G_LOGIT + 1) * N + n, mask=n_mask, other=0.0)
            g_w2_bn += hidden * tl.load(samples_ptr + (_G_LOGIT + 2) * N + n, mask=n_mask, other=0.0)
        store_cast(g_b1_ptr, unit, True, tl.sum(g_b1, axis=0))
        store_cast(g_w2_ptr, unit, True, tl.sum(g_w2_in, axis=0))
        store_cast(g_w2_ptr, H + unit, True, tl.sum(g_w2_ln, axis=0))
        store_cast(g_w2_ptr, 2 * H + unit, True, tl.sum(g_w2_bn, axis=0))


@triton.jit
def _exemplar_math_backward(stats_ptr, work_ptr, scratch_ptr, N, C, weight_ptr, bias_ptr, w1_ptr, b1_ptr, w2_ptr,
                            b2_ptr, g_weight_ptr, g_bias_ptr, g_w1_ptr, g_b1_ptr, g_w2_ptr, g_b2_ptr, H, eps,
                            HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, SINGLE: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """EN backward math: from ``g_shift``/``g_scale`` in ``work`` to ``scale``, ``g_mean``, ``g_var``,
    ``g_bn_mean``, ``g_bn_var`` in ``work`` and every parameter's gradient (the weight's and bias's when
    present), the closed form of ``ExemplarNorm::backward``."""
    mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, reference_ptr = stats_regions(stats_ptr, N, C)
    g_shift_ptr, g_scale_ptr, scale_ptr, g_mean_ptr, g_var_ptr, _, _ = work_regions(work_ptr, N, C)
    DT = stats_ptr.dtype.element_ty
    _exemplar_sample_backward(stats_ptr, work_ptr, scratch_ptr, N, C, weight_ptr, bias_ptr, w1_ptr, b1_ptr, w2_ptr,
                              b2_ptr, H, eps, HAS_WEIGHT, HAS_BIAS, SINGLE, BLOCK_N, BLOCK_C)
    tl.debug_barrier()
    _exemplar_head_backward(stats_ptr, scratch_ptr, N, H, g_b1_ptr, g_w2_ptr, g_b2_ptr, BLOCK_N)
    samples_ptr = scratch_ptr + 2 * N * H
    for c0 in range(0, C, BLOCK_C):
        c, c_mask, bn_mean, rstd_bn, gamma, beta = standardized_columns(
            c0, C, bn_mean_ptr, bn_var_ptr, weight_ptr, bias_ptr, eps, DT, HAS_WEIGHT, HAS_BIAS, BLOCK_C)
        g_weight = tl.zeros([BLOCK_N, BLOCK_C], DT)
        g_bias = tl.zeros([BLOCK_N, BLOCK_C], DT)
        g_bn_mean = tl.zeros([BLOCK_N, BLOCK_C], DT)
        g_rstd_bn = tl.zeros([BLOCK_N, BLOCK_C], DT)
        for n0 in range(0, N, BLOCK_N):
            n, n_mask = rows(n0, N, BLOCK_N)
            offsets, mask = tile(n, n_mask, c, c_mask, C)
            ln_mean = tl.load(samples_ptr + _LN_MEAN * N + n, mask=n_mask, other=0.0)[:, None]
            rstd_ln = tl.load(samples_ptr + _RSTD_LN * N + n, mask=n_mask, other=0.0)[:, None]
            r_in = tl.load(samples_ptr + _RATIO * N + n, mask=n_mask, other=0.0)[:, None]
            r_ln = tl.load(samples_ptr + (_RATIO + 1) * N + n, mask=n_mask, other=0.0)[:, None]
            r_bn = tl.load(samples_ptr + (_RATIO + 2) * N + n, mask=n_mask, other=0.0)[:, None]
            g_ln_mean = tl.load(samples_ptr + _G_LN_MEAN * N + n, mask=n_mask, other=0.0)[:, None]
            g_ln_var = tl.load(samples_ptr + _G_LN_VAR * N + n, mask=n_mask, other=0.0)[:, None]
            g_relative_mean = tl.zeros([BLOCK_N, BLOCK_C], DT)
            g_relative_std = tl.zeros([BLOCK_N, BLOCK_C], DT)
            for unit in range(H):
                g_hidden = tl.load(scratch_ptr + (H + unit) * N + n, mask=n_mask, other=0.0)[:, None]
                w1_mean = tl.load(w1_ptr + unit * 2 * C + c, mask=c_mask, other=0.0).to(DT)
                w1_std = tl.load(w1_ptr + unit * 2 * C + C + c, mask=c_mask, other=0.0).to(DT)
                g_relative_mean += g_hidden * w1_mean[None, :]
                g_relative_std += g_hidden * w1_std[None, :]
            mean, var = instance_tile(mean_ptr, var_ptr, offsets, mask)
            g_scale = tl.load(g_scale_ptr + offsets, mask=mask, other=0.0)
            g_shift = tl.load(g_shift_ptr + offsets, mask=mask, other=0.0)
            rstd_in = rsqrt(var + eps)
            to_ln = mean - ln_mean
            to_bn = mean - bn_mean[None, :]
            a = r_in * rstd_in + r_ln * rstd_ln + r_bn * rstd_bn[None, :]
            g_weight += g_scale * a + g_shift * (r_ln * to_ln * rstd_ln + r_bn * to_bn * rstd_bn[None, :])
            g_bias += g_shift
            g_a = g_scale * gamma[None, :]
            g_b = g_shift * gamma[None, :]
            g_bn_mean -= (g_b * r_bn + g_relative_mean) * rstd_bn[None, :]
            g_rstd_bn += r_bn * (g_a + g_b * to_bn) + g_relative_mean * to_bn + g_relative_std / rstd_in
            g_mean = (g_b * (r_ln * rstd_ln + r_bn * rstd_bn[None, :]) + g_relative_mean * rstd_bn[None, :]
                      + (g_ln_mean + 2.0 * g_ln_var * to_ln) / C)
            g_rstd_in = g_a * r_in - g_relative_std * rstd_bn[None, :] / (rstd_in * rstd_in)
            g_var = -0.5 * rstd_in * rstd_in * rstd_in * g_rstd_in + g_ln_var / C
            tl.store(scale_ptr + offsets, gamma[None, :] * a, mask=mask)
            tl.store(g_mean_ptr + offsets, g_mean, mask=mask)
            tl.store(g_var_ptr + offsets, g_var, mask=mask)
        store_channel_gradients(work_ptr, N, C, c, c_mask, g_weight_ptr, g_bias_ptr, tl.sum(g_weight, axis=0),
                                tl.sum(g_bias, axis=0), tl.sum(g_bn_mean, axis=0),
                                -0.5 * rstd_bn * rstd_bn * rstd_bn * tl.sum(g_rstd_bn, axis=0), HAS_WEIGHT, HAS_BIAS)
        for unit in range(H):  # W1: the hidden gradients times the descriptor, summed over samples
            g_w1_mean = tl.zeros([BLOCK_N, BLOCK_C], DT)
            g_w1_std = tl.zeros([BLOCK_N, BLOCK_C], DT)
            for n0 in range(0, N, BLOCK_N):
                n, n_mask = rows(n0, N, BLOCK_N)
                g_hidden = tl.load(scratch_ptr + (H + unit) * N + n, mask=n_mask, other=0.0)[:, None]
                relative_mean, relative_std = _exemplar_descriptor(mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr,
                                                                   reference_ptr, n, n_mask, c, c_mask, C, eps, 0)
                g_w1_mean += g_hidden * relative_mean
                g_w1_std += g_hidden * relative_std
            store_cast(g_w1_ptr + unit * 2 * C, c, c_mask, tl.sum(g_w1_mean, axis=0))
            store_cast(g_w1_ptr + unit * 2 * C + C, c, c_mask, tl.sum(g_w1_std, axis=0))


# ---- kernels and the functions of the operator contract ----------------------------------------------------------

@triton.jit
def _exemplar_norm_forward_kernel(part_ptr, first_ptr, running_mean_ptr, running_var_ptr, stats_ptr, batch_ptr,
                                  coef_ptr, scratch_ptr, N, C, L, S, weight_ptr, bias_ptr, w1_ptr, b1_ptr, w2_ptr,
                                  b2_ptr, ratios_ptr, H, eps, HAS_BN: tl.constexpr, USE_RUNNING: tl.constexpr,
                                  BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                                  HAS_BIAS: tl.constexpr, SINGLE: tl.constexpr):
    forward_prologue(part_ptr, first_ptr, running_mean_ptr, running_var_ptr, stats_ptr, batch_ptr, N, C, L, S,
                     HAS_BN, USE_RUNNING, BLOCK_N, BLOCK_C)
    _exemplar_math(stats_ptr, coef_ptr, scratch_ptr, N, C, weight_ptr, bias_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                   ratios_ptr, H, eps, HAS_WEIGHT, HAS_BIAS, SINGLE, BLOCK_N, BLOCK_C)


@triton.jit
def _exemplar_norm_backward_kernel(part_ptr, stats_ptr, work_ptr, scratch_ptr, N, C, L, S, weight_ptr, bias_ptr,
                                   w1_ptr, b1_ptr, w2_ptr, b2_ptr, g_weight_ptr, g_bias_ptr, g_w1_ptr, g_b1_ptr,
                                   g_w2_ptr, g_b2_ptr, H, eps, FOLD_BN: tl.constexpr, BLOCK_N: tl.constexpr,
                                   BLOCK_C: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                                   SINGLE: tl.constexpr):
    backward_prologue(part_ptr, work_ptr, N, C, S, BLOCK_N, BLOCK_C)
    _exemplar_math_backward(stats_ptr, work_ptr, scratch_ptr, N, C, weight_ptr, bias_ptr, w1_ptr, b1_ptr, w2_ptr,
                            b2_ptr, g_weight_ptr, g_bias_ptr, g_w1_ptr, g_b1_ptr, g_w2_ptr, g_b2_ptr, H, eps,
                            HAS_WEIGHT, HAS_BIAS, SINGLE, BLOCK_N, BLOCK_C)
    backward_epilogue(stats_ptr, work_ptr, N, C, L, FOLD_BN, BLOCK_N, BLOCK_C)


def exemplar_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, ratio_w1: Tensor, ratio_b1: Tensor,
                  ratio_w2: Tensor, ratio_b2: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                  training: bool, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EN forward: ``(y, stats, batch, ratios)``, ``ratios`` the batch-averaged ``(3,)`` (IN, LN, BN) ratios."""
    C = x.shape[1] if x.dim() >= 2 else 0
    hidden, ratio_w1, ratio_w2 = passes.check_head("exemplar_norm", ratio_w1, ratio_b1, ratio_w2, ratio_b2, 2 * C, 3)
    plan = passes.Forward(x, has_bn=True, running_mean=running_mean, running_var=running_var, training=training,
                          scratch=_exemplar_scratch(x.shape[0], hidden))
    ratios = empty("ratios", (3,), dtype=plan.stats.dtype, device=x.device)
    plan.launch_math(_exemplar_norm_forward_kernel, passes.optional(weight, plan.stats),
                     passes.optional(bias, plan.stats), ratio_w1, ratio_b1, ratio_w2, ratio_b2, ratios, hidden,
                     float(eps), **passes.affine_meta(weight, bias), SINGLE=plan.geometry.L == 1)
    return plan.outputs(ratios)


def exemplar_norm_backward(grad_y: Tensor, x: Tensor, stats: Tensor, weight: Tensor | None, bias: Tensor | None,
                           ratio_w1: Tensor, ratio_b1: Tensor, ratio_w2: Tensor, ratio_b2: Tensor,
                           batch_from_input: bool, eps: float, input_grad: bool) -> tuple[Tensor, ...]:
    """EN backward: ``(dx, d_weight, d_bias, d_w1, d_b1, d_w2, d_b2)``."""
    hidden, ratio_w1, ratio_w2 = passes.check_head("exemplar_norm_backward", ratio_w1, ratio_b1, ratio_w2, ratio_b2,
                                                   2 * x.shape[1], 3)
    plan = passes.Backward(grad_y, x, stats, fold_bn=batch_from_input, input_grad=input_grad,
                           scratch=_exemplar_scratch(x.shape[0], hidden))
    grads = [passes.grad_like(p, stats) for p in (weight, bias, ratio_w1, ratio_b1, ratio_w2, ratio_b2)]
    plan.launch_math(_exemplar_norm_backward_kernel, passes.optional(weight, stats), passes.optional(bias, stats),
                     ratio_w1, ratio_b1, ratio_w2, ratio_b2, *grads, hidden, float(eps),
                     **passes.affine_meta(weight, bias), SINGLE=plan.geometry.L == 1)
    return plan.outputs(*grads)
