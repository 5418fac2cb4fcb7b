"""Associate Normalization's ``(N, C)``-sized math in Triton: GroupNorm standardization and a rescaling
``omega = sigmoid(W2 relu(W1 key_s))``, ``beta = tanh(W3 relu(W1 key_t))`` predicted by an auto-encoder on the
group statistics (``key_s``, ``key_t`` = the raw group mean and the group variance, swapped with
``SCALE_FROM_MEAN`` False). No BN term.

The closed form is ``AssociateNorm`` of ``dynnorm/csrc/layers.h`` (the formulas of
:func:`dynnorm.functional.associate_norm`). ``(N, G)`` values (group moments, ``omega``, ``beta`` and their
gradients) and ``(N, E)`` values (embeddings and their gradients) go to scratch between phases; per-group sums over
a group's channels use tiles of whole groups. One program; no atomics.
"""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from . import passes
from .passes import (backward_epilogue, backward_prologue, forward_prologue, stats_regions, store_channel_gradients,
                     work_regions)
from .small import (columns, group_moments, group_tile, pow2, relu, rows, rsqrt, sigmoid, store_cast, tanh, tile,
                    tile_rows)

__all__ = ["associate_norm", "associate_norm_backward"]

# scratch regions, in units of N * G values, then of N * E values
_GROUP_MEAN = tl.constexpr(0)
_GROUP_VAR = tl.constexpr(1)
_OMEGA = tl.constexpr(2)
_BETA = tl.constexpr(3)
_G_OMEGA = tl.constexpr(4)  # of the sigmoid's input
_G_BETA = tl.constexpr(5)   # of the tanh's input
_G_GROUP_MEAN = tl.constexpr(6)
_G_GROUP_VAR = tl.constexpr(7)
_GROUP_VALUES = tl.constexpr(8)
_SCALE_EMBEDDING = tl.constexpr(0)  # pre-activations
_SHIFT_EMBEDDING = tl.constexpr(1)
_G_SCALE_EMBEDDING = tl.constexpr(2)
_G_SHIFT_EMBEDDING = tl.constexpr(3)
_EMBEDDING_VALUES = tl.constexpr(4)


def _associate_scratch(n: int, groups: int, embedding: int) -> int:
    return n * (_GROUP_VALUES.value * groups + _EMBEDDING_VALUES.value * embedding)


@triton.jit
def _group_statistics(stats_ptr, scratch_ptr, N, C, G, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_S: tl.constexpr):
    """Each sample's group moments (contiguous groups of ``C / G`` channels) into scratch, then a barrier."""
    mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, reference_ptr = stats_regions(stats_ptr, N, C)
    BLOCK_Q: tl.constexpr = tile_rows(BLOCK_N * BLOCK_C, BLOCK_S)
    S = C // G
    NG = N * G
    for q0 in range(0, NG, BLOCK_Q):
        offsets, mask = group_tile(q0, NG, S, 1, BLOCK_Q, BLOCK_S)
        mean = tl.load(mean_ptr + offsets, mask=mask, other=0.0)
        var = tl.load(var_ptr + offsets, mask=mask, other=0.0)
        pooled_mean, pooled_var, _ = group_moments(mean, var, mask, S)
        q = q0 + tl.arange(0, BLOCK_Q)
        tl.store(scratch_ptr + _GROUP_MEAN * NG + q, pooled_mean, mask=q < NG)
        tl.store(scratch_ptr + _GROUP_VAR * NG + q, pooled_var, mask=q < NG)
    tl.debug_barrier()


@triton.jit
def _key_regions(scratch_ptr, reference, NG, SCALE_FROM_MEAN: tl.constexpr):
    """Where the key features ``key_s``, ``key_t`` are (``(N, G)`` regions of scratch) and what to add to them: the
    raw group mean (the group mean relative to ``R``, plus ``R``) and the group variance."""
    if SCALE_FROM_MEAN:
        return scratch_ptr + _GROUP_MEAN * NG, reference, scratch_ptr + _GROUP_VAR * NG, 0.0
    else:
        return scratch_ptr + _GROUP_VAR * NG, 0.0, scratch_ptr + _GROUP_MEAN * NG, reference


@triton.jit
def _offset_tile(ptr, offset, offsets, mask):
    """An ``(N, G)`` region's values on a tile plus ``offset`` (a key feature: :func:`_key_regions`), 0 where
    masked."""
    return tl.where(mask, tl.load(ptr + offsets, mask=mask, other=0.0) + offset, 0.0)


@triton.jit
def _group_contraction(a_ptr, a_offset, wa_ptr, b_ptr, b_offset, wb_ptr, first, group_stride, n, n_mask, G,
                       DT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """``sum_g (A[n, g] + a_offset) Wa[first + g group_stride]`` for samples ``n``, and the same for ``B``/``Wb``
    (``A``, ``B``: ``(N, G)``): one unit of a layer applied to the ``(N, G)`` group values."""
    a_acc = tl.zeros([BLOCK_N, BLOCK_C], DT)
    b_acc = tl.zeros([BLOCK_N, BLOCK_C], DT)
    for g0 in range(0, G, BLOCK_C):
        g, g_mask = columns(g0, G, BLOCK_C)
        offsets, mask = tile(n, n_mask, g, g_mask, G)
        a_acc += _offset_tile(a_ptr, a_offset, offsets, mask) * tl.load(
            wa_ptr + first + g * group_stride, mask=g_mask, other=0.0).to(DT)[None, :]
        b_acc += _offset_tile(b_ptr, b_offset, offsets, mask) * tl.load(
            wb_ptr + first + g * group_stride, mask=g_mask, other=0.0).to(DT)[None, :]
    return tl.sum(a_acc, axis=1), tl.sum(b_acc, axis=1)


@triton.jit
def _autoencoder(stats_ptr, scratch_ptr, N, C, G, E, encoder_ptr, scale_decoder_ptr, shift_decoder_ptr,
                 SCALE_FROM_MEAN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """The embeddings (pre-activations, ``(N, E)``) and ``omega``/``beta`` (``(N, G)``) into scratch."""
    DT = stats_ptr.dtype.element_ty
    _, _, _, _, reference_ptr = stats_regions(stats_ptr, N, C)
    reference = tl.load(reference_ptr)
    NG = N * G
    embeddings_ptr = scratch_ptr + _GROUP_VALUES * NG
    scale_key_ptr, scale_offset, shift_key_ptr, shift_offset = _key_regions(scratch_ptr, reference, NG,
                                                                            SCALE_FROM_MEAN)
    for n0 in range(0, N, BLOCK_N):
        n, n_mask = rows(n0, N, BLOCK_N)
        for unit in range(E):
            scale_embedding, shift_embedding = _group_contraction(
                scale_key_ptr, scale_offset, encoder_ptr, shift_key_ptr, shift_offset, encoder_ptr, unit * G, 1, n,
                n_mask, G, DT, BLOCK_N, BLOCK_C)
            tl.store(embeddings_ptr + (_SCALE_EMBEDDING * E + unit) * N + n, scale_embedding, mask=n_mask)
            tl.store(embeddings_ptr + (_SHIFT_EMBEDDING * E + unit) * N + n, shift_embedding, mask=n_mask)
    tl.debug_barrier()
    for n0 in range(0, N, BLOCK_N):
        n, n_mask = rows(n0, N, BLOCK_N)
        for g0 in range(0, G, BLOCK_C):
            g, g_mask = columns(g0, G, BLOCK_C)
            offsets, mask = tile(n, n_mask, g, g_mask, G)
            omega = tl.zeros([BLOCK_N, BLOCK_C], DT)
            beta = tl.zeros([BLOCK_N, BLOCK_C], DT)
            for unit in range(E):
                scale_embedding = relu(tl.load(embeddings_ptr + (_SCALE_EMBEDDING * E + unit) * N + n, mask=n_mask,
                                               other=0.0))
                shift_embedding = relu(tl.load(embeddings_ptr + (_SHIFT_EMBEDDING * E + unit) * N + n, mask=n_mask,
                                               other=0.0))
                omega += scale_embedding[:, None] * tl.load(scale_decoder_ptr + g * E + unit, mask=g_mask,
                                                            other=0.0).to(DT)[None, :]
                beta += shift_embedding[:, None] * tl.load(shift_decoder_ptr + g * E + unit, mask=g_mask,
                                                           other=0.0).to(DT)[None, :]
            tl.store(scratch_ptr + _OMEGA * NG + offsets, sigmoid(omega), mask=mask)
            tl.store(scratch_ptr + _BETA * NG + offsets, tanh(beta), mask=mask)
    tl.debug_barrier()


@triton.jit
def _group_values(stats_ptr, scratch_ptr, N, C, G, E, encoder_ptr, scale_decoder_ptr, shift_decoder_ptr,
                  SCALE_FROM_MEAN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                  BLOCK_S: tl.constexpr):
    """The forward's ``(N, G)`` values and embeddings into scratch: the group moments, then the auto-encoder's
    embeddings, ``omega`` and ``beta``."""
    _group_statistics(stats_ptr, scratch_ptr, N, C, G, BLOCK_N, BLOCK_C, BLOCK_S)
    _autoencoder(stats_ptr, scratch_ptr, N, C, G, E, encoder_ptr, scale_decoder_ptr, shift_decoder_ptr,
                 SCALE_FROM_MEAN, BLOCK_N, BLOCK_C)


@triton.jit
def _channel_groups(scratch_ptr, n, c, mask, G, S, NG, value: tl.constexpr):
    """Scratch value ``value`` (an ``(N, G)`` region) of each element's group on an ``(N, C)`` tile."""
    return tl.load(scratch_ptr + value * NG + n[:, None] * G + (c // S)[None, :], mask=mask, other=0.0)


@triton.jit
def _associate_math(stats_ptr, coef_ptr, scratch_ptr, N, C, weight_ptr, bias_ptr, encoder_ptr, scale_decoder_ptr,
                    shift_decoder_ptr, G, E, eps, SCALE_FROM_MEAN: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """AssocNorm forward math: ``scale = (omega + B_omega) rsqrt(var_GN + eps)``,
    ``shift = beta + B_beta + (mu - mu_GN) scale`` into ``coef``. ``encoder (E, G)``, decoders ``(G, E)``,
    ``weight``/``bias`` ``(C,)`` (``B_omega``/``B_beta``); scratch: :func:`_associate_scratch`."""
    mean_ptr, _, _, _, _ = stats_regions(stats_ptr, N, C)
    DT = stats_ptr.dtype.element_ty
    S = C // G
    NG = N * G
    _group_values(stats_ptr, scratch_ptr, N, C, G, E, encoder_ptr, scale_decoder_ptr, shift_decoder_ptr,
                  SCALE_FROM_MEAN, BLOCK_N, BLOCK_C, BLOCK_S)
    for n0 in range(0, N, BLOCK_N):
        n, n_mask = rows(n0, N, BLOCK_N)
        for c0 in range(0, C, BLOCK_C):
            c, c_mask = columns(c0, C, BLOCK_C)
            offsets, mask = tile(n, n_mask, c, c_mask, C)
            weight = tl.load(weight_ptr + c, mask=c_mask, other=0.0).to(DT)[None, :]
            bias = tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(DT)[None, :]
            group_mean = _channel_groups(scratch_ptr, n, c, mask, G, S, NG, _GROUP_MEAN)
            rstd = rsqrt(_channel_groups(scratch_ptr, n, c, mask, G, S, NG, _GROUP_VAR) + eps)
            scale = (_channel_groups(scratch_ptr, n, c, mask, G, S, NG, _OMEGA) + weight) * rstd
            shift = (_channel_groups(scratch_ptr, n, c, mask, G, S, NG, _BETA) + bias
                     + (tl.load(mean_ptr + offsets, mask=mask, other=0.0) - group_mean) * scale)
            tl.store(coef_ptr + offsets, scale, mask=mask)
            tl.store(coef_ptr + N * C + offsets, shift, mask=mask)


@triton.jit
def _group_sums_backward(stats_ptr, work_ptr, scratch_ptr, N, C, weight_ptr, G, eps, BLOCK_N: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Per group: the gradients of the sigmoid's and tanh's inputs, and the group moments' gradients through the
    standardization (the key features' part is added later), into scratch."""
    mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, reference_ptr = stats_regions(stats_ptr, N, C)
    g_shift_ptr, g_scale_ptr, scale_ptr, g_mean_ptr, g_var_ptr, g_bn_mean_ptr, g_bn_var_ptr = work_regions(
        work_ptr, N, C)
    DT = stats_ptr.dtype.element_ty
    BLOCK_Q: tl.constexpr = tile_rows(BLOCK_N * BLOCK_C, BLOCK_S)
    S = C // G
    NG = N * G
    for q0 in range(0, NG, BLOCK_Q):
        offsets, mask = group_tile(q0, NG, S, 1, BLOCK_Q, BLOCK_S)
        q = q0 + tl.arange(0, BLOCK_Q)
        q_mask = q < NG
        channel = (q % G)[:, None] * S + tl.arange(0, BLOCK_S)[None, :]
        weight = tl.load(weight_ptr + channel, mask=mask, other=0.0).to(DT)
        group_mean = tl.load(scratch_ptr + _GROUP_MEAN * NG + q, mask=q_mask, other=0.0)
        rstd = rsqrt(tl.load(scratch_ptr + _GROUP_VAR * NG + q, mask=q_mask, other=1.0) + eps)
        omega = tl.load(scratch_ptr + _OMEGA * NG + q, mask=q_mask, other=0.0)
        beta = tl.load(scratch_ptr + _BETA * NG + q, mask=q_mask, other=0.0)
        g_shift = tl.load(g_shift_ptr + offsets, mask=mask, other=0.0)
        g_total_scale = tl.load(g_scale_ptr + offsets, mask=mask, other=0.0) + g_shift * (
            tl.load(mean_ptr + offsets, mask=mask, other=0.0) - group_mean[:, None])
        scale = (omega[:, None] + weight) * rstd[:, None]
        g_omega = tl.sum(g_total_scale, axis=1) * rstd
        g_rstd = tl.sum(g_total_scale * (omega[:, None] + weight), axis=1)
        tl.store(scratch_ptr + _G_OMEGA * NG + q, g_omega * omega * (1.0 - omega), mask=q_mask)
        tl.store(scratch_ptr + _G_BETA * NG + q, tl.sum(g_shift, axis=1) * (1.0 - beta * beta), mask=q_mask)
        tl.store(scratch_ptr + _G_GROUP_MEAN * NG + q, -tl.sum(g_shift * scale, axis=1), mask=q_mask)
        tl.store(scratch_ptr + _G_GROUP_VAR * NG + q, -0.5 * rstd * rstd * rstd * g_rstd, mask=q_mask)
    tl.debug_barrier()


@triton.jit
def _autoencoder_backward(stats_ptr, scratch_ptr, N, C, G, E, encoder_ptr, scale_decoder_ptr, shift_decoder_ptr,
                          g_encoder_ptr, g_scale_decoder_ptr, g_shift_decoder_ptr, SCALE_FROM_MEAN: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Back through the decoders and the encoder: the embeddings' gradients, the key features' (added to the group
    moments' gradients in scratch) and the three weight matrices'."""
    DT = stats_ptr.dtype.element_ty
    _, _, _, _, reference_ptr = stats_regions(stats_ptr, N, C)
    reference = tl.load(reference_ptr)
    NG = N * G
    embeddings_ptr = scratch_ptr + _GROUP_VALUES * NG
    for n0 in range(0, N, BLOCK_N):
        n, n_mask = rows(n0, N, BLOCK_N)
        for unit in range(E):
            g_scale_embedding, g_shift_embedding = _group_contraction(
                scratch_ptr + _G_OMEGA * NG, 0.0, scale_decoder_ptr, scratch_ptr + _G_BETA * NG, 0.0,
                shift_decoder_ptr, unit, E, n, n_mask, G, DT, BLOCK_N, BLOCK_C)
            scale_pre = tl.load(embeddings_ptr + (_SCALE_EMBEDDING * E + unit) * N + n, mask=n_mask, other=0.0)
            shift_pre = tl.load(embeddings_ptr + (_SHIFT_EMBEDDING * E + unit) * N + n, mask=n_mask, other=0.0)
            tl.store(embeddings_ptr + (_G_SCALE_EMBEDDING * E + unit) * N + n,
                     tl.where(scale_pre <= 0, 0.0, g_scale_embedding), mask=n_mask)
            tl.store(embeddings_ptr + (_G_SHIFT_EMBEDDING * E + unit) * N + n,
                     tl.where(shift_pre <= 0, 0.0, g_shift_embedding), mask=n_mask)
    tl.debug_barrier()
    scale_key_ptr, scale_offset, shift_key_ptr, shift_offset = _key_regions(scratch_ptr, reference, NG,
                                                                            SCALE_FROM_MEAN)
    for g0 in range(0, G, BLOCK_C):
        g, g_mask = columns(g0, G, BLOCK_C)
        for n0 in range(0, N, BLOCK_N):  # the key features' gradients: W1^T times the embeddings' gradients
            n, n_mask = rows(n0, N, BLOCK_N)
            offsets, mask = tile(n, n_mask, g, g_mask, G)
            g_scale_key = tl.zeros([BLOCK_N, BLOCK_C], DT)
            g_shift_key = tl.zeros([BLOCK_N, BLOCK_C], DT)
            for unit in range(E):
                w = tl.load(encoder_ptr + unit * G + g, mask=g_mask, other=0.0).to(DT)[None, :]
                g_scale_key += tl.load(embeddings_ptr + (_G_SCALE_EMBEDDING * E + unit) * N + n, mask=n_mask,
                                       other=0.0)[:, None] * w
                g_shift_key += tl.load(embeddings_ptr + (_G_SHIFT_EMBEDDING * E + unit) * N + n, mask=n_mask,
                                       other=0.0)[:, None] * w
            if SCALE_FROM_MEAN:
                g_key_mean, g_key_var = g_scale_key, g_shift_key
            else:
                g_key_mean, g_key_var = g_shift_key, g_scale_key
            g_group_mean = tl.load(scratch_ptr + _G_GROUP_MEAN * NG + offsets, mask=mask, other=0.0)
            g_group_var = tl.load(scratch_ptr + _G_GROUP_VAR * NG + offsets, mask=mask, other=0.0)
            tl.store(scratch_ptr + _G_GROUP_MEAN * NG + offsets, g_group_mean + g_key_mean, mask=mask)
            tl.store(scratch_ptr + _G_GROUP_VAR * NG + offsets, g_group_var + g_key_var, mask=mask)
        for unit in range(E):  # the weight matrices: sums over samples of outer products
            g_encoder = tl.zeros([BLOCK_N, BLOCK_C], DT)
            g_scale_decoder = tl.zeros([BLOCK_N, BLOCK_C], DT)
            g_shift_decoder = tl.zeros([BLOCK_N, BLOCK_C], DT)
            for n0 in range(0, N, BLOCK_N):
                n, n_mask = rows(n0, N, BLOCK_N)
                offsets, mask = tile(n, n_mask, g, g_mask, G)
                scale_key = _offset_tile(scale_key_ptr, scale_offset, offsets, mask)
                shift_key = _offset_tile(shift_key_ptr, shift_offset, offsets, mask)
                scale_embedding = embeddings_ptr + (_SCALE_EMBEDDING * E + unit) * N + n
                shift_embedding = embeddings_ptr + (_SHIFT_EMBEDDING * E + unit) * N + n
                g_encoder += (tl.load(embeddings_ptr + (_G_SCALE_EMBEDDING * E + unit) * N + n, mask=n_mask,
                                      other=0.0)[:, None] * scale_key
                              + tl.load(embeddings_ptr + (_G_SHIFT_EMBEDDING * E + unit) * N + n, mask=n_mask,
                                        other=0.0)[:, None] * shift_key)
                g_scale_decoder += relu(tl.load(scale_embedding, mask=n_mask, other=0.0))[:, None] * tl.load(
                    scratch_ptr + _G_OMEGA * NG + offsets, mask=mask, other=0.0)
                g_shift_decoder += relu(tl.load(shift_embedding, mask=n_mask, other=0.0))[:, None] * tl.load(
                    scratch_ptr + _G_BETA * NG + offsets, mask=mask, other=0.0)
            store_cast(g_encoder_ptr + unit * G, g, g_mask, tl.sum(g_encoder, axis=0))
            store_cast(g_scale_decoder_ptr + unit, g * E, g_mask, tl.sum(g_scale_decoder, axis=0))
            store_cast(g_shift_decoder_ptr + unit, g * E, g_mask, tl.sum(g_shift_decoder, axis=0))
    tl.debug_barrier()


@triton.jit
def _associate_math_backward(stats_ptr, work_ptr, scratch_ptr, N, C, weight_ptr, bias_ptr, encoder_ptr,
                             scale_decoder_ptr, shift_decoder_ptr, g_weight_ptr, g_bias_ptr, g_encoder_ptr,
                             g_scale_decoder_ptr, g_shift_decoder_ptr, G, E, eps, SCALE_FROM_MEAN: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """AssocNorm backward math: from ``g_shift``/``g_scale`` in ``work`` to ``scale``, ``g_mean``, ``g_var`` in
    ``work`` (``g_bn_mean``/``g_bn_var`` 0: no BN term) and every parameter's gradient
    (``AssociateNorm::backward``)."""
    mean_ptr, _, _, _, _ = stats_regions(stats_ptr, N, C)
    g_shift_ptr, g_scale_ptr, scale_ptr, g_mean_ptr, g_var_ptr, _, _ = work_regions(work_ptr, N, C)
    DT = stats_ptr.dtype.element_ty
    S = C // G
    NG = N * G
    _group_values(stats_ptr, scratch_ptr, N, C, G, E, encoder_ptr, scale_decoder_ptr, shift_decoder_ptr,
                  SCALE_FROM_MEAN, BLOCK_N, BLOCK_C, BLOCK_S)
    _group_sums_backward(stats_ptr, work_ptr, scratch_ptr, N, C, weight_ptr, G, eps, BLOCK_N, BLOCK_C, BLOCK_S)
    _autoencoder_backward(stats_ptr, scratch_ptr, N, C, G, E, encoder_ptr, scale_decoder_ptr, shift_decoder_ptr,
                          g_encoder_ptr, g_scale_decoder_ptr, g_shift_decoder_ptr, SCALE_FROM_MEAN, BLOCK_N, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        c, c_mask = columns(c0, C, BLOCK_C)
        weight = tl.load(weight_ptr + c, mask=c_mask, other=0.0).to(DT)[None, :]
        g_weight = tl.zeros([BLOCK_N, BLOCK_C], DT)
        g_bias = tl.zeros([BLOCK_N, BLOCK_C], DT)
        for n0 in range(0, N, BLOCK_N):
            n, n_mask = rows(n0, N, BLOCK_N)
            offsets, mask = tile(n, n_mask, c, c_mask, C)
            to_group = tl.load(mean_ptr + offsets, mask=mask, other=0.0) - _channel_groups(
                scratch_ptr, n, c, mask, G, S, NG, _GROUP_MEAN)
            rstd = rsqrt(_channel_groups(scratch_ptr, n, c, mask, G, S, NG, _GROUP_VAR) + eps)
            scale = (_channel_groups(scratch_ptr, n, c, mask, G, S, NG, _OMEGA) + weight) * rstd
            g_shift = tl.load(g_shift_ptr + offsets, mask=mask, other=0.0)
            g_group_mean = _channel_groups(scratch_ptr, n, c, mask, G, S, NG, _G_GROUP_MEAN) / S
            g_group_var = _channel_groups(scratch_ptr, n, c, mask, G, S, NG, _G_GROUP_VAR) / S
            g_weight += (tl.load(g_scale_ptr + offsets, mask=mask, other=0.0) + g_shift * to_group) * rstd
            g_bias += g_shift
            tl.store(scale_ptr + offsets, scale, mask=mask)
            tl.store(g_mean_ptr + offsets, g_shift * scale + g_group_mean + 2.0 * g_group_var * to_group, mask=mask)
            tl.store(g_var_ptr + offsets, g_group_var, mask=mask)
        store_channel_gradients(work_ptr, N, C, c, c_mask, g_weight_ptr, g_bias_ptr, tl.sum(g_weight, axis=0),
                                tl.sum(g_bias, axis=0), tl.zeros([BLOCK_C], DT), tl.zeros([BLOCK_C], DT), True, True)


# ---- kernels and the functions of the operator contract ----------------------------------------------------------

@triton.jit
def _associate_norm_forward_kernel(part_ptr, first_ptr, running_mean_ptr, running_var_ptr, stats_ptr, batch_ptr,
                                   coef_ptr, scratch_ptr, N, C, L, S, weight_ptr, bias_ptr, encoder_ptr,
                                   scale_decoder_ptr, shift_decoder_ptr, G, E, eps, HAS_BN: tl.constexpr,
                                   USE_RUNNING: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                                   SCALE_FROM_MEAN: tl.constexpr, BLOCK_S: tl.constexpr):
    forward_prologue(part_ptr, first_ptr, running_mean_ptr, running_var_ptr, stats_ptr, batch_ptr, N, C, L, S,
                     HAS_BN, USE_RUNNING, BLOCK_N, BLOCK_C)
    _associate_math(stats_ptr, coef_ptr, scratch_ptr, N, C, weight_ptr, bias_ptr, encoder_ptr, scale_decoder_ptr,
                    shift_decoder_ptr, G, E, eps, SCALE_FROM_MEAN, BLOCK_N, BLOCK_C, BLOCK_S)


@triton.jit
def _associate_norm_backward_kernel(part_ptr, stats_ptr, work_ptr, scratch_ptr, N, C, L, S, weight_ptr, bias_ptr,
                                    encoder_ptr, scale_decoder_ptr, shift_decoder_ptr, g_weight_ptr, g_bias_ptr,
                                    g_encoder_ptr, g_scale_decoder_ptr, g_shift_decoder_ptr, G, E, eps,
                                    FOLD_BN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                                    SCALE_FROM_MEAN: tl.constexpr, BLOCK_S: tl.constexpr):
    backward_prologue(part_ptr, work_ptr, N, C, S, BLOCK_N, BLOCK_C)
    _associate_math_backward(stats_ptr, work_ptr, scratch_ptr, N, C, weight_ptr, bias_ptr, encoder_ptr,
                             scale_decoder_ptr, shift_decoder_ptr, g_weight_ptr, g_bias_ptr, g_encoder_ptr,
                             g_scale_decoder_ptr, g_shift_decoder_ptr, G, E, eps, SCALE_FROM_MEAN, BLOCK_N, BLOCK_C,
                             BLOCK_S)
    backward_epilogue(stats_ptr, work_ptr, N, C, L, FOLD_BN, BLOCK_N, BLOCK_C)


def _check_groups(name: str, x: Tensor, weight: Tensor, bias: Tensor, encoder_weight: Tensor,
                  scale_decoder_weight: Tensor, shift_decoder_weight: Tensor, num_groups: int) -> tuple:
    """``(G, E, encoder, scale decoder, shift decoder)``, the matrices row-major (the kernels index them so); clear
    errors naming bad group counts or shapes."""
    C = x.shape[1] if x.dim() >= 2 else 0
    G = int(num_groups)
    if G < 1 or C % G:
        raise ValueError(f"{name}: num_groups ({num_groups}) must be positive and divide C = {C}")
    E = encoder_weight.shape[0] if encoder_weight.dim() == 2 else 0
    if (encoder_weight.shape != (E, G) or scale_decoder_weight.shape != (G, E) or shift_decoder_weight.shape != (G, E)
            or E < 1):
        raise ValueError(f"{name}: the encoder must be (E, {G}) and the decoders ({G}, E), got "
                         f"{list(encoder_weight.shape)}, {list(scale_decoder_weight.shape)}, "
                         f"{list(shift_decoder_weight.shape)}")
    if weight is None or bias is None or weight.shape != (C,) or bias.shape != (C,):
        raise ValueError(f"{name}: weight and bias must be ({C},) tensors")
    return G, E, encoder_weight.contiguous(), scale_decoder_weight.contiguous(), shift_decoder_weight.contiguous()


def _group_block(x: Tensor, G: int) -> int:
    return pow2(x.shape[1] // G)


def associate_norm(x: Tensor, weight: Tensor, bias: Tensor, encoder_weight: Tensor, scale_decoder_weight: Tensor,
                   shift_decoder_weight: Tensor, num_groups: int, eps: float, scale_from_mean: bool
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """AssocNorm forward: ``(y, stats, batch)`` (the ``bn_*`` slots are 0)."""
    G, E, encoder_weight, scale_decoder_weight, shift_decoder_weight = _check_groups(
        "associate_norm", x, weight, bias, encoder_weight, scale_decoder_weight, shift_decoder_weight, num_groups)
    plan = passes.Forward(x, has_bn=False, running_mean=None, running_var=None, training=False,
                          scratch=_associate_scratch(x.shape[0], G, E))
    plan.launch_math(_associate_norm_forward_kernel, weight, bias, encoder_weight, scale_decoder_weight,
                     shift_decoder_weight, G, E, float(eps), SCALE_FROM_MEAN=bool(scale_from_mean),
                     BLOCK_S=_group_block(x, G))
    return plan.outputs()


def associate_norm_backward(grad_y: Tensor, x: Tensor, stats: Tensor, weight: Tensor, bias: Tensor,
                            encoder_weight: Tensor, scale_decoder_weight: Tensor, shift_decoder_weight: Tensor,
                            num_groups: int, eps: float, scale_from_mean: bool, input_grad: bool
                            ) -> tuple[Tensor, ...]:
    """AssocNorm backward: ``(dx, d_weight, d_bias, d_encoder, d_scale_decoder, d_shift_decoder)``."""
    G, E, encoder_weight, scale_decoder_weight, shift_decoder_weight = _check_groups(
        "associate_norm_backward", x, weight, bias, encoder_weight, scale_decoder_weight, shift_decoder_weight,
        num_groups)
    plan = passes.Backward(grad_y, x, stats, fold_bn=False, input_grad=input_grad,
                           scratch=_associate_scratch(x.shape[0], G, E))
    grads = [passes.grad_like(p, stats) for p in (weight, bias, encoder_weight, scale_decoder_weight,
                                                  shift_decoder_weight)]
    plan.launch_math(_associate_norm_backward_kernel, weight, bias, encoder_weight, scale_decoder_weight,
                     shift_decoder_weight, *grads, G, E, float(eps), SCALE_FROM_MEAN=bool(scale_from_mean),
                     BLOCK_S=_group_block(x, G))
    return plan.outputs(*grads)
