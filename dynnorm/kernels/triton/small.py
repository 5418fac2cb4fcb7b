"""Device math shared by the layers' ``(N, C)`` kernels.

* Tiles of ``(N, C)`` arrays: the rows and columns of a block (:func:`rows`, :func:`columns`), a tile's flat offsets
  and mask (:func:`tile`), the statistics and affine parameters on a tile or channel block (:func:`instance_tile`,
  :func:`batch_columns`, :func:`affine_columns`, :func:`standardized_columns`), pooled moments over channels
  (:func:`channel_moments`), groups of elements a stride apart (:func:`group_tile`, :func:`group_moments`), and
  storing a gradient in its parameter's dtype (:func:`store_cast`).
* Elementwise functions (:func:`rsqrt`, :func:`relu`, :func:`tanh`, :func:`sigmoid`) and one hidden unit of a
  learned head (:func:`hidden_column`).
* A few mixture weights held in a 4-vector (entries ``k >= K`` masked by ``valid = k < K``): picking an entry,
  softmax, renormalization without IN, and SparsestMax with its Jacobian.
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["affine_columns", "batch_columns", "channel_moments", "columns", "group_moments", "group_tile",
           "hidden_column", "instance_tile", "masked_softmax", "pick", "pow2", "relu", "rows", "rsqrt", "sigmoid",
           "sparsemax", "sparsestmax", "standardized_columns", "store_cast", "tanh", "tile", "tile_rows",
           "without_instance_term", "without_instance_term_backward"]


# ---- elementwise --------------------------------------------------------------------------------------------------

@triton.jit
def rsqrt(v):
    """``1 / sqrt(v)`` in ``v``'s dtype."""
    return 1.0 / tl.sqrt(v)


@triton.jit
def relu(v):
    """``max(v, 0)`` keeping NaN, as ``torch.relu``."""
    return tl.where(v < 0, 0.0, v)


@triton.jit
def tanh(v):
    """``tanh(v)`` from ``exp`` of a non-positive argument (no overflow)."""
    t = tl.exp(-2.0 * tl.abs(v))
    magnitude = (1.0 - t) / (1.0 + t)
    return tl.where(v < 0, -magnitude, magnitude)


@triton.jit
def sigmoid(v):
    return 1.0 / (1.0 + tl.exp(-v))


# ---- tiles of (N, C) arrays ---------------------------------------------------------------------------------------

@triton.constexpr_function
def pow2(value):
    return triton.next_power_of_2(value)


@triton.constexpr_function
def tile_rows(tile_size, block):
    """Rows of a tile of ``tile_size`` elements whose rows are ``block`` long (at least 1)."""
    return max(1, tile_size // block)


@triton.jit
def store_cast(ptr, offsets, mask, values):
    """Store ``values`` cast to the dtype ``ptr`` points to (a parameter's gradient)."""
    tl.store(ptr + offsets, values.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def rows(n0, N, BLOCK_N: tl.constexpr):
    """The rows ``n0 .. n0 + BLOCK_N`` and their mask ``n < N``."""
    n = n0 + tl.arange(0, BLOCK_N)
    return n, n < N


@triton.jit
def columns(c0, C, BLOCK_C: tl.constexpr):
    """The columns ``c0 .. c0 + BLOCK_C`` and their mask ``c < C``."""
    c = c0 + tl.arange(0, BLOCK_C)
    return c, c < C


@triton.jit
def tile(n, n_mask, c, c_mask, C):
    """Offsets ``n * C + c`` and the mask of a ``[BLOCK_N, BLOCK_C]`` tile of an ``(N, C)`` array."""
    return n[:, None] * C + c[None, :], n_mask[:, None] & c_mask[None, :]


@triton.jit
def instance_tile(mean_ptr, var_ptr, offsets, mask):
    """Instance means (relative to ``R``) and variances of a tile; masked lanes hold 0 and 1 (finite)."""
    return tl.load(mean_ptr + offsets, mask=mask, other=0.0), tl.load(var_ptr + offsets, mask=mask, other=1.0)


@triton.jit
def batch_columns(bn_mean_ptr, bn_var_ptr, c, c_mask, eps):
    """The BN term's mean (relative to ``R``) and ``rsqrt(var + eps)`` on a channel block (0 and 1 when masked)."""
    bn_mean = tl.load(bn_mean_ptr + c, mask=c_mask, other=0.0)
    return bn_mean, tl.where(c_mask, rsqrt(tl.load(bn_var_ptr + c, mask=c_mask, other=1.0) + eps), 1.0)


@triton.jit
def affine_columns(weight_ptr, bias_ptr, c, c_mask, DT: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                   HAS_BIAS: tl.constexpr):
    """``(gamma, beta)`` on a channel block in ``DT``: the affine parameters, or 1 and 0 when absent."""
    if HAS_WEIGHT:
        gamma = tl.load(weight_ptr + c, mask=c_mask, other=0.0).to(DT)
    else:
        gamma = tl.full(c.shape, 1.0, DT)
    if HAS_BIAS:
        beta = tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(DT)
    else:
        beta = tl.zeros(c.shape, DT)
    return gamma, beta


@triton.jit
def standardized_columns(c0, C, bn_mean_ptr, bn_var_ptr, weight_ptr, bias_ptr, eps, DT: tl.constexpr,
                         HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr):
    """The channel block at ``c0`` of a layer that standardizes with the BN term: ``(c, c_mask, bn_mean, rstd_bn,
    gamma, beta)`` (:func:`columns`, :func:`batch_columns`, :func:`affine_columns`)."""
    c, c_mask = columns(c0, C, BLOCK_C)
    bn_mean, rstd_bn = batch_columns(bn_mean_ptr, bn_var_ptr, c, c_mask, eps)
    gamma, beta = affine_columns(weight_ptr, bias_ptr, c, c_mask, DT, HAS_WEIGHT, HAS_BIAS)
    return c, c_mask, bn_mean, rstd_bn, gamma, beta


@triton.jit
def channel_moments(mean_ptr, var_ptr, n, n_ok, C, BLOCK_C: tl.constexpr):
    """Mean and variance over all channels of samples ``n`` (LN statistics) from the instance moments."""
    acc = mean_ptr.dtype.element_ty
    sum_m = tl.zeros([n.shape[0], BLOCK_C], acc)
    sum_v = tl.zeros([n.shape[0], BLOCK_C], acc)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = n_ok[:, None] & (c < C)[None, :]
        j = n[:, None] * C + c[None, :]
        sum_m += tl.load(mean_ptr + j, mask=mask, other=0.0)
        sum_v += tl.load(var_ptr + j, mask=mask, other=0.0)
    pooled = tl.sum(sum_m, 1) / C
    spread = tl.zeros([n.shape[0], BLOCK_C], acc)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = n_ok[:, None] & (c < C)[None, :]
        d = tl.load(mean_ptr + n[:, None] * C + c[None, :], mask=mask, other=0.0) - pooled[:, None]
        spread += tl.where(mask, d * d, 0.0)
    return pooled, (tl.sum(sum_v, 1) + tl.sum(spread, 1)) / C


@triton.jit
def group_tile(q0, groups, size, stride, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr):
    """Offsets ``[BLOCK_Q, BLOCK_K]`` and mask of the groups ``q0 .. q0 + BLOCK_Q`` of ``size`` elements ``stride``
    apart (a row per group) in an array of ``groups * size`` elements laid out in blocks of ``size * stride``."""
    q = q0 + tl.arange(0, BLOCK_Q)
    k = tl.arange(0, BLOCK_K)
    base = (q // stride) * (size * stride) + q % stride
    return base[:, None] + k[None, :] * stride, (q < groups)[:, None] & (k < size)[None, :]


@triton.jit
def group_moments(mean, var, mask, size):
    """Pooled mean and variance of each row of a group tile (law of total variance), and the deviations from the
    pooled mean (0 where masked)."""
    pooled = tl.sum(tl.where(mask, mean, 0.0), axis=1) / size
    deviation = tl.where(mask, mean - pooled[:, None], 0.0)
    pooled_var = (tl.sum(tl.where(mask, var, 0.0), axis=1) + tl.sum(deviation * deviation, axis=1)) / size
    return pooled, pooled_var, deviation


# ---- learned heads ------------------------------------------------------------------------------------------------

@triton.jit
def hidden_column(w_ptr, in_features, lo_first, hi_first, b_ptr, unit, scratch_ptr, n0, M, C,
                  input_tile: tl.constexpr, mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, reference_ptr, eps,
                  OPTION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """One hidden unit's pre-activation ``b[unit] + sum_c W[unit, lo_first + c] lo[m, c] + W[unit, hi_first + c]
    hi[m, c]`` for the rows ``m`` of a block, stored to ``scratch[m]``; ``input_tile(...)`` gives the two input
    halves ``(lo, hi)`` of a tile (0 where masked)."""
    m, m_mask = rows(n0, M, BLOCK_N)
    acc = tl.zeros([BLOCK_N, BLOCK_C], mean_ptr.dtype.element_ty)
    for c0 in range(0, C, BLOCK_C):
        c, c_mask = columns(c0, C, BLOCK_C)
        lo, hi = input_tile(mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, reference_ptr, m, m_mask, c, c_mask, C, eps,
                            OPTION)
        w_row = w_ptr + unit * in_features
        w_lo = tl.load(w_row + lo_first + c, mask=c_mask, other=0.0).to(acc.dtype)
        w_hi = tl.load(w_row + hi_first + c, mask=c_mask, other=0.0).to(acc.dtype)
        acc += lo * w_lo[None, :] + hi * w_hi[None, :]
    pre = tl.sum(acc, axis=1) + tl.load(b_ptr + unit).to(acc.dtype)
    tl.store(scratch_ptr + m, pre, mask=m_mask)


# ---- mixture weights in a 4-vector --------------------------------------------------------------------------------

_ONE_HOT_TOLERANCE = tl.constexpr(1e-6)


@triton.jit
def pick(v, k):
    """Entry ``k`` of the 4-vector ``v`` (a scalar)."""
    return tl.sum(tl.where(tl.arange(0, 4) == k, v, 0.0), 0)


@triton.jit
def masked_softmax(z, valid):
    """Softmax over the ``valid`` entries of ``z`` (others 0); a NaN or +inf entry gives NaN weights."""
    z = tl.where(valid, z, float("-inf"))
    e = tl.where(valid, tl.exp(z - tl.max(z, 0)), 0.0)
    return e / tl.sum(e, 0)


@triton.jit
def without_instance_term(w):
    """Mixture weights renormalized without IN (entry 0), for one value per (n, c)."""
    kept = tl.where(tl.arange(0, 4) == 0, 0.0, w)
    return kept / tl.sum(kept, 0)


@triton.jit
def without_instance_term_backward(given, g_weights):
    """Gradient of the given weights from that of :func:`without_instance_term`'s output."""
    k = tl.arange(0, 4)
    kept = tl.where(k == 0, 0.0, given)
    total = tl.sum(kept, 0)
    dot = tl.sum(kept * g_weights, 0) / total
    return tl.where(k == 0, 0.0, (g_weights - dot) / total)


@triton.jit
def sparsemax(v, valid):
    """Euclidean projection of the ``valid`` entries of ``v`` onto the simplex, and its support (``out > 0``).

    Sort-free: entry ``i`` is in the projection's support iff ``1 + count_i v_i > total_i``, with ``count_i`` and
    ``total_i`` the number and sum of the entries ``>= v_i`` (tied entries enter together, as in the sorted form).
    """
    above = (v[None, :] >= v[:, None]) & valid[None, :]
    count = tl.sum(above.to(v.dtype), 1)
    total = tl.sum(tl.where(above, v[None, :], 0.0), 1)
    member = valid & (1 + count * v > total)
    threshold = (tl.sum(tl.where(member, v, 0.0), 0) - 1) / tl.sum(member.to(v.dtype), 0)
    out = tl.where(valid, tl.maximum(v - threshold, 0.0), 0.0)
    return out, out > 0


@triton.jit
def _project_rows(J, support):
    """``P J`` for the Jacobian ``P = diag(s) - s s^T / |s|`` of sparsemax on support ``s``."""
    s = support.to(J.dtype)
    column_means = tl.sum(s[:, None] * J, 0) / tl.sum(s, 0)
    return s[:, None] * (J - column_means[None, :])


@triton.jit
def sparsestmax(z, radius, valid, K):
    """SparsestMax of the ``K`` valid entries of ``z`` (``dynnorm/csrc/small_math.h``: sparsemax pushed from the
    centre of its face onto a circle of ``radius``, projected back onto smaller faces while the push leaves the
    simplex, at most ``K`` rounds) and its Jacobian ``J[i, j] = d out_i / d z_j`` (4 x 4)."""
    k = tl.arange(0, 4)
    point, support = sparsemax(z, valid)
    J = _project_rows((k[:, None] == k[None, :]).to(z.dtype), support)
    done = tl.full([], 0, tl.int1)
    previous = tl.zeros([4], z.dtype)
    r = radius.to(z.dtype)
    for step in tl.static_range(4):
        centre = tl.where(support, 1.0 / tl.sum(support.to(z.dtype), 0), 0.0)
        if step > 0:  # the radius left after moving to a smaller face
            moved = tl.sum((centre - previous) * (centre - previous), 0)
            r = tl.where(done, r, tl.sqrt(tl.maximum(r * r - moved, 0.0)))
        offset = point - centre
        distance = tl.sqrt(tl.sum(offset * offset, 0))
        top = tl.max(tl.where(valid, point, 0.0), 0)
        stop = done | (step >= K) | (top >= 1 - _ONE_HOT_TOLERANCE) | (distance == 0) | (distance >= r)
        safe = tl.where(distance > 0, distance, 1.0)
        direction = offset / safe
        pushed = tl.where(valid, centre + r * direction, 0.0)
        inside = tl.min(tl.where(valid, pushed, 1.0), 0) >= 0
        pushed_J = (r / safe) * (J - direction[:, None] * tl.sum(direction[:, None] * J, 0)[None, :])
        projected, projected_support = sparsemax(pushed, valid)
        point = tl.where(stop, point, tl.where(inside, tl.minimum(pushed, 1.0), projected))
        J = tl.where(stop, J, tl.where(inside, pushed_J, _project_rows(pushed_J, projected_support)))
        previous = tl.where(stop | inside, previous, centre)
        support = tl.where(stop | inside, support, projected_support)
        done = stop | inside
    return point, J
