"""Device math shared by the layers' ``(N, C)`` kernels: pooled moments of ``(N, C)`` tiles, and functions of a few
mixture weights held in a 4-vector (entries ``k >= K`` masked by ``valid = k < K``): picking an entry, softmax,
renormalization without IN, and SparsestMax with its Jacobian.
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["channel_moments", "masked_softmax", "pick", "sparsemax", "sparsestmax", "without_instance_term",
           "without_instance_term_backward"]

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
