"""Dynamic Normalization's ``(N, C)``-sized math in Triton: statistics pooled by a learned Kronecker product of
averaging matrices, ``A = B kron U_1 kron ... kron U_K`` over the channel factors ``factors`` (``prod = C``) and the
batch, with separate matrices (gates) for the mean and the variance.

The closed form is ``DynamicNorm`` of ``dynnorm/csrc/layers.h`` (the formulas of
:func:`dynnorm.functional.dynamic_norm`): the batch factor mixes each (n, c) distribution with its channel's BN
distribution, then each channel factor mixes it with the uniform mixture of the distributions along its axis
(``var' = lerp(v, avg v + spread, g) + g (1 - g) (m - avg m)^2``); the mean has its own, linear, pooling. Every
step's result goes to scratch (the backward needs each step's input); an axis step works on tiles of whole groups
(the ``size`` elements ``stride`` apart that it averages) over all samples at once. One program; no atomics.
"""
from __future__ import annotations

from collections.abc import Sequence

import triton
import triton.language as tl
from torch import Tensor

from . import passes
from .passes import (backward_epilogue, backward_prologue, forward_prologue, stats_regions, store_channel_gradients,
                     work_regions)
from .small import (affine_columns, columns, group_moments, group_tile, instance_tile, pow2, rows, rsqrt, sigmoid,
                    store_cast, tile, tile_rows)

__all__ = ["dynamic_norm", "dynamic_norm_backward"]


# ---- groups along one axis --------------------------------------------------------------------------------------

@triton.constexpr_function
def _stride(factors, axis):
    """Elements between neighbours along channel factor ``axis``: the product of the later factors."""
    stride = 1
    for size in factors[axis + 1:]:
        stride *= size
    return stride


# ---- the pooling steps ---------------------------------------------------------------------------------------------
# scratch (NC = N * C values each, K = len(factors)): pooled means after the batch factor and after each channel
# factor (K + 1), the variance path's means (K + 1) and variances (K + 1); the backward adds six gradient buffers.

def _dynamic_scratch(n: int, c: int, factors: Sequence[int], backward: bool) -> int:
    return n * c * (3 * (len(factors) + 1) + (6 if backward else 0))


@triton.jit
def _dynamic_steps(stats_ptr, scratch_ptr, N, C, mean_gates_ptr, var_gates_ptr, mean_batch_ptr, var_batch_ptr,
                   FACTORS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Every pooling step into scratch: the batch factor, then the channel factors in order. Returns the pointers to
    the pooled means and variances (the last step's)."""
    mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, reference_ptr = stats_regions(stats_ptr, N, C)
    DT = stats_ptr.dtype.element_ty
    K: tl.constexpr = len(FACTORS)
    NC = N * C
    var_means_ptr = scratch_ptr + (K + 1) * NC
    vars_ptr = scratch_ptr + 2 * (K + 1) * NC
    b_mean = sigmoid(tl.load(mean_batch_ptr).to(DT))
    b_var = sigmoid(tl.load(var_batch_ptr).to(DT))
    for n0 in range(0, N, BLOCK_N):
        n, n_mask = rows(n0, N, BLOCK_N)
        for c0 in range(0, C, BLOCK_C):
            c, c_mask = columns(c0, C, BLOCK_C)
            offsets, mask = tile(n, n_mask, c, c_mask, C)
            mean, var = instance_tile(mean_ptr, var_ptr, offsets, mask)
            bn_mean = tl.load(bn_mean_ptr + c, mask=c_mask, other=0.0)[None, :]
            bn_var = tl.load(bn_var_ptr + c, mask=c_mask, other=0.0)[None, :]
            deviation = mean - bn_mean
            tl.store(scratch_ptr + offsets, mean - b_mean * deviation, mask=mask)
            tl.store(var_means_ptr + offsets, mean - b_var * deviation, mask=mask)
            tl.store(vars_ptr + offsets, (1.0 - b_var) * var + b_var * bn_var
                     + b_var * (1.0 - b_var) * deviation * deviation, mask=mask)
    tl.debug_barrier()
    for axis in tl.static_range(K):
        _pool_axis(scratch_ptr + axis * NC, var_means_ptr + axis * NC, vars_ptr + axis * NC, NC,
                   sigmoid(tl.load(mean_gates_ptr + axis).to(DT)), sigmoid(tl.load(var_gates_ptr + axis).to(DT)),
                   FACTORS[axis], _stride(FACTORS, axis), BLOCK_N * BLOCK_C)
        tl.debug_barrier()
    return scratch_ptr + K * NC, vars_ptr + K * NC


@triton.jit
def _pool_axis(means_ptr, var_means_ptr, vars_ptr, NC, g_mean, g_var, SIZE: tl.constexpr, STRIDE: tl.constexpr,
               TILE: tl.constexpr):
    """One channel factor's step, from the step before (at the pointers) to the next (``NC`` further): the mean
    path's ``lerp(m, avg m, g_mean)``, the variance path's mixture of distributions with weight ``g_var``."""
    BLOCK_K: tl.constexpr = pow2(SIZE)
    BLOCK_Q: tl.constexpr = tile_rows(TILE, BLOCK_K)
    for q0 in range(0, NC // SIZE, BLOCK_Q):
        offsets, mask = group_tile(q0, NC // SIZE, SIZE, STRIDE, BLOCK_Q, BLOCK_K)
        values = tl.load(means_ptr + offsets, mask=mask, other=0.0)
        average = tl.sum(values, axis=1)[:, None] / SIZE
        tl.store(means_ptr + NC + offsets, values + g_mean * (average - values), mask=mask)
        m = tl.load(var_means_ptr + offsets, mask=mask, other=0.0)
        v = tl.load(vars_ptr + offsets, mask=mask, other=0.0)
        m_pooled, v_pooled, d = group_moments(m, v, mask, SIZE)
        tl.store(var_means_ptr + NC + offsets, m - g_var * d, mask=mask)
        tl.store(vars_ptr + NC + offsets, (1.0 - g_var) * v + g_var * v_pooled[:, None]
                 + g_var * (1.0 - g_var) * d * d, mask=mask)


@triton.jit
def _dynamic_math(stats_ptr, coef_ptr, scratch_ptr, N, C, weight_ptr, bias_ptr, mean_gates_ptr, var_gates_ptr,
                  mean_batch_ptr, var_batch_ptr, eps, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                  FACTORS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """DN forward math: ``scale = gamma rsqrt(pooled var + eps)``, ``shift = beta + (mu - pooled mean) scale`` into
    ``coef``; scratch: :func:`_dynamic_scratch`."""
    mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, reference_ptr = stats_regions(stats_ptr, N, C)
    DT = stats_ptr.dtype.element_ty
    pooled_mean_ptr, pooled_var_ptr = _dynamic_steps(stats_ptr, scratch_ptr, N, C, mean_gates_ptr, var_gates_ptr,
                                                     mean_batch_ptr, var_batch_ptr, FACTORS, BLOCK_N, BLOCK_C)
    for n0 in range(0, N, BLOCK_N):
        n, n_mask = rows(n0, N, BLOCK_N)
        for c0 in range(0, C, BLOCK_C):
            c, c_mask = columns(c0, C, BLOCK_C)
            offsets, mask = tile(n, n_mask, c, c_mask, C)
            gamma, beta = affine_columns(weight_ptr, bias_ptr, c, c_mask, DT, HAS_WEIGHT, HAS_BIAS)
            scale = gamma[None, :] * rsqrt(tl.load(pooled_var_ptr + offsets, mask=mask, other=1.0) + eps)
            deviation = tl.load(mean_ptr + offsets, mask=mask, other=0.0) - tl.load(pooled_mean_ptr + offsets,
                                                                                   mask=mask, other=0.0)
            tl.store(coef_ptr + offsets, scale, mask=mask)
            tl.store(coef_ptr + N * C + offsets, beta[None, :] + deviation * scale, mask=mask)


@triton.jit
def _dynamic_axes_backward(scratch_ptr, N, C, mean_gates_ptr, var_gates_ptr, g_mean_gates_ptr, g_var_gates_ptr,
                           FACTORS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Back through the channel factors, last first: the gradients of each step's means and variances (ping-pong
    buffers in scratch) and of the channel gates' logits."""
    DT = scratch_ptr.dtype.element_ty
    K: tl.constexpr = len(FACTORS)
    NC = N * C
    var_means_ptr = scratch_ptr + (K + 1) * NC
    vars_ptr = scratch_ptr + 2 * (K + 1) * NC
    grads_ptr = scratch_ptr + 3 * (K + 1) * NC  # [mean path, var path mean, var path var] x [even, odd step]
    for axis in tl.static_range(K - 1, -1, -1):  # the gradients of step K - axis are at parity (K - 1 - axis) % 2
        g_mean = sigmoid(tl.load(mean_gates_ptr + axis).to(DT))
        g_var = sigmoid(tl.load(var_gates_ptr + axis).to(DT))
        g_logit_mean, g_logit_var = _pool_axis_backward(
            scratch_ptr + axis * NC, var_means_ptr + axis * NC, vars_ptr + axis * NC,
            grads_ptr + ((K - 1 - axis) % 2) * NC, grads_ptr + ((K - axis) % 2) * NC, NC, g_mean, g_var,
            FACTORS[axis], _stride(FACTORS, axis), BLOCK_N * BLOCK_C)
        store_cast(g_mean_gates_ptr, axis, True, g_logit_mean * g_mean * (1.0 - g_mean))
        store_cast(g_var_gates_ptr, axis, True, g_logit_var * g_var * (1.0 - g_var))
        tl.debug_barrier()


@triton.jit
def _pool_axis_backward(means_ptr, var_means_ptr, vars_ptr, out_grads_ptr, in_grads_ptr, NC, g_mean, g_var,
                        SIZE: tl.constexpr, STRIDE: tl.constexpr, TILE: tl.constexpr):
    """Back through one channel factor's step (its inputs at the pointers): from the gradients of its outputs
    (mean path, variance path's means, variances at ``out_grads + {0, 2, 4} NC``) to those of its inputs (at
    ``in_grads + ...``); returns the gradients of the two gates."""
    DT = means_ptr.dtype.element_ty
    BLOCK_K: tl.constexpr = pow2(SIZE)
    BLOCK_Q: tl.constexpr = tile_rows(TILE, BLOCK_K)
    sum_g_mean = tl.zeros([BLOCK_Q, BLOCK_K], DT)
    sum_g_var = tl.zeros([BLOCK_Q, BLOCK_K], DT)
    for q0 in range(0, NC // SIZE, BLOCK_Q):
        offsets, mask = group_tile(q0, NC // SIZE, SIZE, STRIDE, BLOCK_Q, BLOCK_K)
        # the mean path: out = lerp(values, average, g)
        values = tl.load(means_ptr + offsets, mask=mask, other=0.0)
        g_out = tl.load(out_grads_ptr + offsets, mask=mask, other=0.0)
        average = tl.sum(values, axis=1)[:, None] / SIZE
        tl.store(in_grads_ptr + offsets, (1.0 - g_mean) * g_out + g_mean * tl.sum(g_out, axis=1)[:, None] / SIZE,
                 mask=mask)
        sum_g_mean += tl.where(mask, g_out * (average - values), 0.0)
        # the variance path: the mixture of distributions
        m = tl.load(var_means_ptr + offsets, mask=mask, other=0.0)
        v = tl.load(vars_ptr + offsets, mask=mask, other=0.0)
        gm_out = tl.load(out_grads_ptr + 2 * NC + offsets, mask=mask, other=0.0)
        gv_out = tl.load(out_grads_ptr + 4 * NC + offsets, mask=mask, other=0.0)
        m_pooled, v_pooled, d = group_moments(m, v, mask, SIZE)
        sum_gv = tl.sum(gv_out, axis=1)[:, None]
        sum_g_var += tl.where(mask, -gm_out * d + gv_out * (v_pooled[:, None] - v + (1.0 - 2.0 * g_var) * d * d), 0.0)
        g_d = 2.0 * g_var * (1.0 - g_var) * d * gv_out + g_var * sum_gv * 2.0 * d / SIZE  # 0 where masked
        gm = ((1.0 - g_var) * gm_out + g_var * tl.sum(gm_out, axis=1)[:, None] / SIZE + g_d
              - tl.sum(g_d, axis=1)[:, None] / SIZE)
        tl.store(in_grads_ptr + 2 * NC + offsets, gm, mask=mask)
        tl.store(in_grads_ptr + 4 * NC + offsets, (1.0 - g_var) * gv_out + g_var * sum_gv / SIZE, mask=mask)
    return tl.sum(tl.sum(sum_g_mean, axis=1), axis=0), tl.sum(tl.sum(sum_g_var, axis=1), axis=0)


@triton.jit
def _dynamic_math_backward(stats_ptr, work_ptr, scratch_ptr, N, C, weight_ptr, bias_ptr, mean_gates_ptr,
                           var_gates_ptr, mean_batch_ptr, var_batch_ptr, g_weight_ptr, g_bias_ptr, g_mean_gates_ptr,
                           g_var_gates_ptr, g_mean_batch_ptr, g_var_batch_ptr, eps, HAS_WEIGHT: tl.constexpr,
                           HAS_BIAS: tl.constexpr, FACTORS: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_C: tl.constexpr):
    """DN backward math: from ``g_shift``/``g_scale`` in ``work`` to ``scale``, ``g_mean``, ``g_var``,
    ``g_bn_mean``, ``g_bn_var`` in ``work`` and the gradients of the affine parameters and of the four gate logits
    (``DynamicNorm::backward``)."""
    mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, reference_ptr = stats_regions(stats_ptr, N, C)
    g_shift_ptr, g_scale_ptr, scale_ptr, g_mean_ptr, g_var_ptr, _, _ = work_regions(work_ptr, N, C)
    DT = stats_ptr.dtype.element_ty
    K: tl.constexpr = len(FACTORS)
    NC = N * C
    pooled_mean_ptr, pooled_var_ptr = _dynamic_steps(stats_ptr, scratch_ptr, N, C, mean_gates_ptr, var_gates_ptr,
                                                     mean_batch_ptr, var_batch_ptr, FACTORS, BLOCK_N, BLOCK_C)
    grads_ptr = scratch_ptr + 3 * (K + 1) * NC
    for n0 in range(0, N, BLOCK_N):  # the gradients of the last step's means and variances
        n, n_mask = rows(n0, N, BLOCK_N)
        for c0 in range(0, C, BLOCK_C):
            c, c_mask = columns(c0, C, BLOCK_C)
            offsets, mask = tile(n, n_mask, c, c_mask, C)
            gamma, beta = affine_columns(weight_ptr, bias_ptr, c, c_mask, DT, HAS_WEIGHT, HAS_BIAS)
            rstd = rsqrt(tl.load(pooled_var_ptr + offsets, mask=mask, other=1.0) + eps)
            g_shift = tl.load(g_shift_ptr + offsets, mask=mask, other=0.0)
            deviation = tl.load(mean_ptr + offsets, mask=mask, other=0.0) - tl.load(pooled_mean_ptr + offsets,
                                                                                   mask=mask, other=0.0)
            g_total_scale = tl.load(g_scale_ptr + offsets, mask=mask, other=0.0) + g_shift * deviation
            tl.store(grads_ptr + offsets, -g_shift * gamma[None, :] * rstd, mask=mask)
            tl.store(grads_ptr + 2 * NC + offsets, tl.zeros([BLOCK_N, BLOCK_C], DT), mask=mask)
            tl.store(grads_ptr + 4 * NC + offsets, -0.5 * rstd * rstd * rstd * g_total_scale * gamma[None, :],
                     mask=mask)
    tl.debug_barrier()
    _dynamic_axes_backward(scratch_ptr, N, C, mean_gates_ptr, var_gates_ptr, g_mean_gates_ptr, g_var_gates_ptr,
                           FACTORS, BLOCK_N, BLOCK_C)
    final_ptr = grads_ptr + (K % 2) * NC  # after the first channel factor's backward
    b_mean = sigmoid(tl.load(mean_batch_ptr).to(DT))
    b_var = sigmoid(tl.load(var_batch_ptr).to(DT))
    g_b_mean = tl.zeros([BLOCK_N, BLOCK_C], DT)
    g_b_var = tl.zeros([BLOCK_N, BLOCK_C], DT)
    for c0 in range(0, C, BLOCK_C):  # the batch factor's backward, and the per-channel gradients
        c, c_mask = columns(c0, C, BLOCK_C)
        gamma, beta = affine_columns(weight_ptr, bias_ptr, c, c_mask, DT, HAS_WEIGHT, HAS_BIAS)
        bn_mean = tl.load(bn_mean_ptr + c, mask=c_mask, other=0.0)[None, :]
        bn_var = tl.load(bn_var_ptr + c, mask=c_mask, other=0.0)[None, :]
        g_weight = tl.zeros([BLOCK_N, BLOCK_C], DT)
        g_bias = tl.zeros([BLOCK_N, BLOCK_C], DT)
        g_bn_mean = tl.zeros([BLOCK_N, BLOCK_C], DT)
        g_bn_var = tl.zeros([BLOCK_N, BLOCK_C], DT)
        for n0 in range(0, N, BLOCK_N):
            n, n_mask = rows(n0, N, BLOCK_N)
            offsets, mask = tile(n, n_mask, c, c_mask, C)
            mean, var = instance_tile(mean_ptr, var_ptr, offsets, mask)
            rstd = rsqrt(tl.load(pooled_var_ptr + offsets, mask=mask, other=1.0) + eps)
            scale = gamma[None, :] * rstd
            g_shift = tl.load(g_shift_ptr + offsets, mask=mask, other=0.0)
            g_weight += (tl.load(g_scale_ptr + offsets, mask=mask, other=0.0) + g_shift * (
                mean - tl.load(pooled_mean_ptr + offsets, mask=mask, other=0.0))) * rstd
            g_bias += g_shift
            g_mean_path = tl.load(final_ptr + offsets, mask=mask, other=0.0)
            gm = tl.load(final_ptr + 2 * NC + offsets, mask=mask, other=0.0)
            gv = tl.load(final_ptr + 4 * NC + offsets, mask=mask, other=0.0)
            e = mean - bn_mean
            spread = 2.0 * b_var * (1.0 - b_var) * e * gv
            tl.store(scale_ptr + offsets, scale, mask=mask)
            tl.store(g_mean_ptr + offsets, g_shift * scale + (1.0 - b_mean) * g_mean_path + (1.0 - b_var) * gm + spread,
                     mask=mask)
            tl.store(g_var_ptr + offsets, (1.0 - b_var) * gv, mask=mask)
            g_bn_mean += b_mean * g_mean_path + b_var * gm - spread
            g_bn_var += b_var * gv
            g_b_mean -= g_mean_path * e
            g_b_var += tl.where(mask, -gm * e + gv * (bn_var - var + (1.0 - 2.0 * b_var) * e * e), 0.0)
        store_channel_gradients(work_ptr, N, C, c, c_mask, g_weight_ptr, g_bias_ptr, tl.sum(g_weight, axis=0),
                                tl.sum(g_bias, axis=0), tl.sum(g_bn_mean, axis=0), tl.sum(g_bn_var, axis=0),
                                HAS_WEIGHT, HAS_BIAS)
    store_cast(g_mean_batch_ptr, 0, True, tl.sum(tl.sum(g_b_mean, axis=1), axis=0) * b_mean * (1.0 - b_mean))
    store_cast(g_var_batch_ptr, 0, True, tl.sum(tl.sum(g_b_var, axis=1), axis=0) * b_var * (1.0 - b_var))


# ---- kernels and the functions of the operator contract ----------------------------------------------------------

@triton.jit
def _dynamic_norm_forward_kernel(part_ptr, first_ptr, running_mean_ptr, running_var_ptr, stats_ptr, batch_ptr, coef_ptr,
                                 scratch_ptr, N, C, L, S, weight_ptr, bias_ptr, mean_gates_ptr, var_gates_ptr,
                                 mean_batch_ptr, var_batch_ptr, eps, HAS_BN: tl.constexpr, USE_RUNNING: tl.constexpr,
                                 BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                                 HAS_BIAS: tl.constexpr, FACTORS: tl.constexpr):
    forward_prologue(part_ptr, first_ptr, running_mean_ptr, running_var_ptr, stats_ptr, batch_ptr, N, C, L, S,
                     HAS_BN, USE_RUNNING, BLOCK_N, BLOCK_C)
    _dynamic_math(stats_ptr, coef_ptr, scratch_ptr, N, C, weight_ptr, bias_ptr, mean_gates_ptr, var_gates_ptr,
                  mean_batch_ptr, var_batch_ptr, eps, HAS_WEIGHT, HAS_BIAS, FACTORS, BLOCK_N, BLOCK_C)


@triton.jit
def _dynamic_norm_backward_kernel(part_ptr, stats_ptr, work_ptr, scratch_ptr, N, C, L, S, weight_ptr, bias_ptr,
                                  mean_gates_ptr, var_gates_ptr, mean_batch_ptr, var_batch_ptr, g_weight_ptr,
                                  g_bias_ptr, g_mean_gates_ptr, g_var_gates_ptr, g_mean_batch_ptr, g_var_batch_ptr,
                                  eps, FOLD_BN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                                  HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, FACTORS: tl.constexpr):
    backward_prologue(part_ptr, work_ptr, N, C, S, BLOCK_N, BLOCK_C)
    _dynamic_math_backward(stats_ptr, work_ptr, scratch_ptr, N, C, weight_ptr, bias_ptr, mean_gates_ptr,
                           var_gates_ptr, mean_batch_ptr, var_batch_ptr, g_weight_ptr, g_bias_ptr, g_mean_gates_ptr,
                           g_var_gates_ptr, g_mean_batch_ptr, g_var_batch_ptr, eps, HAS_WEIGHT, HAS_BIAS, FACTORS,
                           BLOCK_N, BLOCK_C)
    backward_epilogue(stats_ptr, work_ptr, N, C, L, FOLD_BN, BLOCK_N, BLOCK_C)


def _check_factors(name: str, x: Tensor, factors: Sequence[int], mean_gate_logits: Tensor, var_gate_logits: Tensor,
                   mean_batch_logit: Tensor, var_batch_logit: Tensor) -> tuple[int, ...]:
    """``factors`` as a tuple of ints (the kernels' compile-time constant); clear errors for bad values."""
    factors = tuple(int(f) for f in factors)
    C = x.shape[1] if x.dim() >= 2 else 0
    product = 1
    for size in factors:
        product *= size
    if any(size < 1 for size in factors) or product != C:
        raise ValueError(f"{name}: factors {list(factors)} must be positive with product C = {C}")
    K = len(factors)
    if mean_gate_logits.shape != (K,) or var_gate_logits.shape != (K,):
        raise ValueError(f"{name}: the gate logits must be ({K},) tensors (one per factor), got "
                         f"{list(mean_gate_logits.shape)} and {list(var_gate_logits.shape)}")
    if mean_batch_logit.numel() != 1 or var_batch_logit.numel() != 1:
        raise ValueError(f"{name}: the batch logits must have one value, got {list(mean_batch_logit.shape)} and "
                         f"{list(var_batch_logit.shape)}")
    return factors


def dynamic_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, mean_gate_logits: Tensor,
                 var_gate_logits: Tensor, mean_batch_logit: Tensor, var_batch_logit: Tensor, factors: Sequence[int],
                 running_mean: Tensor | None, running_var: Tensor | None, training: bool, eps: float
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """DN forward: ``(y, stats, batch)``."""
    factors = _check_factors("dynamic_norm", x, factors, mean_gate_logits, var_gate_logits, mean_batch_logit,
                             var_batch_logit)
    plan = passes.Forward(x, has_bn=True, running_mean=running_mean, running_var=running_var, training=training,
                          scratch=_dynamic_scratch(x.shape[0], x.shape[1], factors, backward=False))
    plan.launch_math(_dynamic_norm_forward_kernel, passes.optional(weight, plan.stats),
                     passes.optional(bias, plan.stats), mean_gate_logits, var_gate_logits, mean_batch_logit,
                     var_batch_logit, float(eps), **passes.affine_meta(weight, bias), FACTORS=factors)
    return plan.outputs()


def dynamic_norm_backward(grad_y: Tensor, x: Tensor, stats: Tensor, weight: Tensor | None, bias: Tensor | None,
                          mean_gate_logits: Tensor, var_gate_logits: Tensor, mean_batch_logit: Tensor,
                          var_batch_logit: Tensor, factors: Sequence[int], batch_from_input: bool, eps: float,
                          input_grad: bool) -> tuple[Tensor, ...]:
    """DN backward: ``(dx, d_weight, d_bias, d_mean_gates, d_var_gates, d_mean_batch, d_var_batch)``."""
    factors = _check_factors("dynamic_norm_backward", x, factors, mean_gate_logits, var_gate_logits,
                             mean_batch_logit, var_batch_logit)
    plan = passes.Backward(grad_y, x, stats, fold_bn=batch_from_input, input_grad=input_grad,
                           scratch=_dynamic_scratch(x.shape[0], x.shape[1], factors, backward=True))
    grads = [passes.grad_like(p, stats) for p in (weight, bias, mean_gate_logits, var_gate_logits, mean_batch_logit,
                                                  var_batch_logit)]
    plan.launch_math(_dynamic_norm_backward_kernel, passes.optional(weight, stats), passes.optional(bias, stats),
                     mean_gate_logits, var_gate_logits, mean_batch_logit, var_batch_logit, *grads, float(eps),
                     **passes.affine_meta(weight, bias), FACTORS=factors)
    return plan.outputs(*grads)
