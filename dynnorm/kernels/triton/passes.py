"""The passes over the whole input that every layer makes, the prologue/epilogue of the per-layer math kernels,
and the Python plans that launch them.

Rows: the ``L`` values of one (n, c), at ``x + n * sN + c * sC + l * sL`` for a contiguous ``(sN, sC, sL) =
(C L, L, 1)`` or channels-last ``(L C, 1, C)`` input (4-D and 5-D alike: the spatial axes flatten to one stride).
A program of the input passes handles a ``[BLOCK_C, BLOCK_L]`` tile of ``BLOCK_C`` rows of one sample, looping
over a chunk of ``chunk`` positions: the rows are split along the spatial axis into ``S`` chunks so that small
batches still fill the GPU. Tiles are oriented so that the unit stride is the tile's fast axis (positions for
contiguous inputs, channels for channels-last ones; triton specializes the stride equal to 1), so loads coalesce.

Kernels (one launch each, grid ``(N * cdiv(C, BLOCK_C), S)``):

* :func:`moments_kernel`: per row and chunk, ``sum(d)`` and ``sum(d^2)`` of ``d = x - x[n, c, 0]`` (the row's
  first value, so the sums are small and the variance does not cancel however large the mean), in float32
  (float64 for float64 inputs), written to the partials ``part (2, S, N*C)``; the first values to ``first``.
* :func:`normalize_kernel`: ``y = ((x - R) - m) * scale + shift``.
* :func:`gradient_sums_kernel`: per row and chunk, ``sum(dy)`` and ``sum(dy * ((x - R) - m))``.
* :func:`input_gradient_kernel`: ``dx = dy * scale + ((x - R) - m) * a + b``.

The partial results are merged in a fixed order by the single program of the layer's math kernel
(:func:`forward_prologue` / :func:`backward_prologue`): no atomics, the same bits every run.
"""
from __future__ import annotations

import dataclasses
import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from .runtime import empty, empty_like, launch, recorded
from .small import columns, rows, store_cast, tile

__all__ = [
    "Backward", "Forward", "Geometry", "accumulation_dtype", "affine_meta", "backward_epilogue", "backward_prologue",
    "check_head", "forward_prologue", "geometry", "grad_like", "gradient_sums_kernel", "input_gradient_kernel",
    "moments_kernel", "nc_tile", "normalize_kernel", "optional", "row_strides", "stats_regions",
    "store_channel_gradients", "work_regions",
]

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

#: elements of a tile of the input passes (BLOCK_C * BLOCK_L), and the fewest a channels-last tile is cut down to
TILE = 2048
MIN_TILE = 256
#: most positions per tile of a contiguous input, most channels per tile of a channels-last one
MAX_BLOCK_L = 1024
MAX_BLOCK_C = 64
#: elements of an (N, C) tile of the math kernels, and most channels per such tile
MATH_TILE = 2048
MATH_MAX_BLOCK_C = 256
#: the input passes aim at this many programs per streaming multiprocessor, in at most MAX_SPLITS chunks per row
PROGRAMS_PER_SM = 4
MAX_SPLITS = 256
#: warps of the one-program math kernels
MATH_WARPS = 8


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def row_strides(t: Tensor) -> tuple[int, int, int] | None:
    """``(sN, sC, sL)`` such that value ``l`` of row ``(n, c)`` of ``t`` is at ``n sN + c sC + l sL``, or None if
    the spatial axes of ``t`` do not flatten to one stride."""
    step = None
    span = 1
    for size, stride in reversed(list(zip(t.shape[2:], t.stride()[2:]))):
        if size != 1:
            if step is None:
                step = stride
            elif stride != step * span:
                return None
        span *= size
    return t.stride(0), t.stride(1), 0 if step is None else step


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # the interpreter runs programs one after another: few splits


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How an ``(N, C, *)`` input is cut into tiles, and the tiles of the ``(N, C)`` math."""

    N: int
    C: int
    L: int
    strides: tuple[int, int, int]
    block_c: int
    block_l: int
    chunk: int  # positions per split, a multiple of block_l
    splits: int
    warps: int
    math_block_n: int
    math_block_c: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.N * triton.cdiv(self.C, self.block_c), self.splits

    @property
    def rows(self) -> int:
        return self.N * self.C


def geometry(x: Tensor) -> Geometry:
    """The tiles for ``x``: a non-empty contiguous or channels-last ``(N, C, *)`` tensor of a supported dtype."""
    if x.dim() < 2 or x.numel() == 0:
        raise ValueError(f"the Triton kernels need a non-empty (N, C, *) input, got shape {list(x.shape)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"the Triton kernels take float32/float64/bfloat16/float16 inputs, got {x.dtype}")
    strides = row_strides(x)
    dense = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)) or (
        x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d))
    if strides is None or not dense:
        raise ValueError(f"the Triton kernels need a contiguous or channels-last input, got strides {x.stride()}")
    N, C = x.shape[0], x.shape[1]
    L = x.numel() // (N * C)
    target = PROGRAMS_PER_SM * _multiprocessors(x.device)

    def programs(block_c: int, block_l: int) -> int:  # with one tile per program
        return N * triton.cdiv(C, block_c) * triton.cdiv(L, block_l)

    if strides[2] != 1 and strides[1] == 1 and L > 1:  # channels-last: channels are the fast axis
        block_c = min(_pow2(C), MAX_BLOCK_C)
        block_l = max(1, min(_pow2(L), TILE // block_c))
        while block_l > 1 and block_c * block_l > MIN_TILE and programs(block_c, block_l) < target:
            block_l //= 2  # few samples: more, smaller tiles along the positions
    else:
        block_l = min(_pow2(L), MAX_BLOCK_L)
        block_c = max(1, min(_pow2(C), TILE // block_l))
        while block_c > 1 and programs(block_c, block_l) < target:
            block_c //= 2  # few rows: fewer rows per tile
    rows = N * triton.cdiv(C, block_c)
    splits = max(1, min(triton.cdiv(L, block_l), triton.cdiv(target, rows), MAX_SPLITS))
    chunk = triton.cdiv(triton.cdiv(L, splits), block_l) * block_l
    splits = triton.cdiv(L, chunk)
    math_block_c = min(_pow2(C), MATH_MAX_BLOCK_C)
    math_block_n = max(1, min(_pow2(N), MATH_TILE // math_block_c))
    return Geometry(N, C, L, strides, block_c, block_l, chunk, splits, max(1, min(8, block_c * block_l // 256)),
                    math_block_n, math_block_c)


def optional(t: Tensor | None, placeholder: Tensor) -> Tensor:
    """``t``, or ``placeholder`` for an absent tensor (the kernel does not read it: a ``HAS_...`` constexpr says so,
    as :func:`affine_meta` does for the affine parameters)."""
    return placeholder if t is None else t


def affine_meta(weight: Tensor | None, bias: Tensor | None) -> dict:
    """The compile-time arguments ``HAS_WEIGHT``/``HAS_BIAS`` of a layer's optional affine parameters."""
    return dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None)


def check_head(name: str, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, inputs: int, outputs: int
               ) -> tuple[int, Tensor, Tensor]:
    """``(H, w1, w2)`` of an ``inputs -> H -> outputs`` head ``(w1 (H, inputs), b1 (H,), w2 (outputs, H),
    b2 (outputs,))``, the matrices row-major (the kernels index them so); a clear error naming the shapes
    otherwise."""
    hidden = b1.numel()
    if (w1.shape != (hidden, inputs) or b1.shape != (hidden,) or w2.shape != (outputs, hidden)
            or b2.shape != (outputs,)):
        raise ValueError(f"{name}: the head must be ({hidden}, {inputs}), ({hidden},), ({outputs}, {hidden}), "
                         f"({outputs},) tensors, got {list(w1.shape)}, {list(b1.shape)}, {list(w2.shape)}, "
                         f"{list(b2.shape)}")
    return hidden, w1.contiguous(), w2.contiguous()


def grad_like(param: Tensor | None, stats: Tensor) -> Tensor:
    """The gradient buffer of ``param`` (its shape and dtype; the kernel writes every element), or an empty
    tensor (numel 0, the statistics' dtype) for an absent parameter."""
    if param is None:
        return empty("grad", (0,), dtype=stats.dtype, device=stats.device)
    return empty("grad", param.shape, dtype=param.dtype, device=param.device)


# ---- device functions shared by the math kernels ------------------------------------------------------------

@triton.jit
def stats_regions(stats_ptr, N, C):
    """Pointers to ``mean (N*C), var (N*C), bn_mean (C), bn_var (C), R (1)`` of the stats buffer."""
    NC = N * C
    return stats_ptr, stats_ptr + NC, stats_ptr + 2 * NC, stats_ptr + 2 * NC + C, stats_ptr + 2 * NC + 2 * C


@triton.jit
def work_regions(work_ptr, N, C):
    """Pointers to ``g_shift, g_scale, scale, g_mean, g_var (N*C each), g_bn_mean, g_bn_var (C each)`` of the
    backward work buffer (after :func:`backward_epilogue`, ``g_mean`` holds ``b`` and ``g_var`` holds ``a``)."""
    NC = N * C
    return (work_ptr, work_ptr + NC, work_ptr + 2 * NC, work_ptr + 3 * NC, work_ptr + 4 * NC, work_ptr + 5 * NC,
            work_ptr + 5 * NC + C)


@triton.jit
def nc_tile(n0, c0, N, C, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Sample and channel indices of the tile at ``(n0, c0)``, the flat ``n * C + c`` indices and the mask."""
    n, n_ok = rows(n0, N, BLOCK_N)
    c, c_ok = columns(c0, C, BLOCK_C)
    j, mask = tile(n, n_ok, c, c_ok, C)
    return n, c, j, mask


@triton.jit
def _batch_moments(mean_ptr, var_ptr, c, c_ok, N, C, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Mean and variance over the batch of channels ``c`` from the instance moments (law of total variance)."""
    acc = mean_ptr.dtype.element_ty
    sum_m = tl.zeros([BLOCK_N, BLOCK_C], acc)
    sum_v = tl.zeros([BLOCK_N, BLOCK_C], acc)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = (n < N)[:, None] & c_ok[None, :]
        j = n[:, None] * C + c[None, :]
        sum_m += tl.load(mean_ptr + j, mask=mask, other=0.0)
        sum_v += tl.load(var_ptr + j, mask=mask, other=0.0)
    pooled = tl.sum(sum_m, 0) / N
    spread = tl.zeros([BLOCK_N, BLOCK_C], acc)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = (n < N)[:, None] & c_ok[None, :]
        d = tl.load(mean_ptr + n[:, None] * C + c[None, :], mask=mask, other=0.0) - pooled[None, :]
        spread += tl.where(mask, d * d, 0.0)
    return pooled, (tl.sum(sum_v, 0) + tl.sum(spread, 0)) / N


@triton.jit
def _merged_partials(part_ptr, j, mask, NC, S):
    """The two partial sums ``part (2, S, N*C)`` of the flat indices ``j``, each summed over the S splits in order."""
    first = tl.load(part_ptr + j, mask=mask, other=0.0)
    second = tl.load(part_ptr + S * NC + j, mask=mask, other=0.0)
    for s in range(1, S):
        first += tl.load(part_ptr + s * NC + j, mask=mask, other=0.0)
        second += tl.load(part_ptr + (S + s) * NC + j, mask=mask, other=0.0)
    return first, second


@triton.jit
def forward_prologue(part_ptr, first_ptr, running_mean_ptr, running_var_ptr, stats_ptr, batch_ptr, N, C, L, S,
                     HAS_BN: tl.constexpr, USE_RUNNING: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    """Merge the moments kernel's partial sums into the stats buffer: ``R`` (the average first value),
    ``mean - R`` and ``var`` per (n, c), and the BN term's ``bn_mean - R``/``bn_var`` (the batch's pooled moments,
    the running statistics with ``USE_RUNNING``, zeros without ``HAS_BN``); and the ``batch`` output ``(2, C)``:
    the batch's mean and unbiased variance for the running averages (zeros unless the batch's statistics are
    used). ``R`` averages the finite first values only, so a non-finite value reaches only the statistics that
    contain it. Ends with a barrier."""
    acc = stats_ptr.dtype.element_ty
    mean_ptr, var_ptr, bn_mean_ptr, bn_var_ptr, reference_ptr = stats_regions(stats_ptr, N, C)
    NC = N * C
    total = tl.zeros([BLOCK_N, BLOCK_C], acc)
    count = tl.zeros([BLOCK_N, BLOCK_C], acc)
    for n0 in range(0, N, BLOCK_N):
        for c0 in range(0, C, BLOCK_C):
            n, c, j, mask = nc_tile(n0, c0, N, C, BLOCK_N, BLOCK_C)
            first = tl.load(first_ptr + j, mask=mask, other=0.0)
            finite = mask & (tl.abs(first) < float("inf"))  # False for NaN too
            total += tl.where(finite, first, 0.0)
            count += finite.to(acc)
    reference = tl.sum(tl.sum(total, 1), 0) / tl.maximum(tl.sum(tl.sum(count, 1), 0), 1.0)
    for n0 in range(0, N, BLOCK_N):
        for c0 in range(0, C, BLOCK_C):
            n, c, j, mask = nc_tile(n0, c0, N, C, BLOCK_N, BLOCK_C)
            sums, squares = _merged_partials(part_ptr, j, mask, NC, S)
            correction = sums / L
            # first - R is exact for nearby values (a common offset); the correction is small
            first = tl.load(first_ptr + j, mask=mask, other=0.0)
            tl.store(mean_ptr + j, (first - reference) + correction, mask=mask)
            tl.store(var_ptr + j, tl.maximum(squares / L - correction * correction, 0.0), mask=mask)
    tl.store(reference_ptr, reference)
    tl.debug_barrier()
    count = (tl.zeros([], acc) + N) * L  # values per channel, in acc (N or L may be a constexpr 1)
    unbiased = tl.where(count > 1, count / (count - 1), 1.0)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        batch_mean = tl.zeros([BLOCK_C], acc)
        batch_var = tl.zeros([BLOCK_C], acc)
        if HAS_BN:
            if USE_RUNNING:
                bn_mean = tl.load(running_mean_ptr + c, mask=c_ok, other=0.0).to(acc) - reference
                bn_var = tl.load(running_var_ptr + c, mask=c_ok, other=0.0).to(acc)
            else:
                bn_mean, bn_var = _batch_moments(mean_ptr, var_ptr, c, c_ok, N, C, BLOCK_N, BLOCK_C)
                batch_mean = bn_mean + reference
                batch_var = bn_var * unbiased
        else:
            bn_mean = tl.zeros([BLOCK_C], acc)
            bn_var = tl.zeros([BLOCK_C], acc)
        tl.store(bn_mean_ptr + c, bn_mean, mask=c_ok)
        tl.store(bn_var_ptr + c, bn_var, mask=c_ok)
        tl.store(batch_ptr + c, batch_mean, mask=c_ok)
        tl.store(batch_ptr + C + c, batch_var, mask=c_ok)
    tl.debug_barrier()


@triton.jit
def backward_prologue(part_ptr, work_ptr, N, C, S, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Merge the gradient-sums kernel's partials into ``g_shift = sum(dy)`` and ``g_scale = sum(dy ((x - R) - m))``
    per (n, c) in the work buffer. Ends with a barrier."""
    g_shift_ptr, g_scale_ptr, _, _, _, _, _ = work_regions(work_ptr, N, C)
    NC = N * C
    for n0 in range(0, N, BLOCK_N):
        for c0 in range(0, C, BLOCK_C):
            n, c, j, mask = nc_tile(n0, c0, N, C, BLOCK_N, BLOCK_C)
            g_shift, g_scale = _merged_partials(part_ptr, j, mask, NC, S)
            tl.store(g_shift_ptr + j, g_shift, mask=mask)
            tl.store(g_scale_ptr + j, g_scale, mask=mask)
    tl.debug_barrier()


@triton.jit
def store_channel_gradients(work_ptr, N, C, c, c_mask, g_weight_ptr, g_bias_ptr, g_weight, g_bias, g_bn_mean,
                            g_bn_var, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A channel block's gradients (``[BLOCK_C]`` each): the BN term's mean's and variance's into the work buffer,
    the weight's and bias's (when present) in the parameters' dtype."""
    _, _, _, _, _, g_bn_mean_ptr, g_bn_var_ptr = work_regions(work_ptr, N, C)
    tl.store(g_bn_mean_ptr + c, g_bn_mean, mask=c_mask)
    tl.store(g_bn_var_ptr + c, g_bn_var, mask=c_mask)
    if HAS_WEIGHT:
        store_cast(g_weight_ptr, c, c_mask, g_weight)
    if HAS_BIAS:
        store_cast(g_bias_ptr, c, c_mask, g_bias)


@triton.jit
def backward_epilogue(stats_ptr, work_ptr, N, C, L, FOLD_BN: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    """From the layer's ``g_mean``/``g_var`` (and, with ``FOLD_BN``, the BN statistics' gradients folded through
    the batch pooling) to the input-gradient coefficients ``a = 2 g_var / L`` and
    ``b = (g_mean - scale g_shift) / L``, written over ``g_var`` and ``g_mean``. Starts with a barrier."""
    tl.debug_barrier()
    mean_ptr, _, bn_mean_ptr, _, _ = stats_regions(stats_ptr, N, C)
    g_shift_ptr, _, scale_ptr, g_mean_ptr, g_var_ptr, g_bn_mean_ptr, g_bn_var_ptr = work_regions(work_ptr, N, C)
    for n0 in range(0, N, BLOCK_N):
        for c0 in range(0, C, BLOCK_C):
            n, c, j, mask = nc_tile(n0, c0, N, C, BLOCK_N, BLOCK_C)
            g_mean = tl.load(g_mean_ptr + j, mask=mask, other=0.0)
            g_var = tl.load(g_var_ptr + j, mask=mask, other=0.0)
            if FOLD_BN:
                c_ok = c < C
                g_bn_mean = tl.load(g_bn_mean_ptr + c, mask=c_ok, other=0.0)[None, :] / N
                g_bn_var = tl.load(g_bn_var_ptr + c, mask=c_ok, other=0.0)[None, :] / N
                to_bn = tl.load(mean_ptr + j, mask=mask, other=0.0) - tl.load(bn_mean_ptr + c, mask=c_ok,
                                                                               other=0.0)[None, :]
                g_var += g_bn_var
                g_mean += g_bn_mean + 2 * g_bn_var * to_bn
            scale = tl.load(scale_ptr + j, mask=mask, other=0.0)
            g_shift = tl.load(g_shift_ptr + j, mask=mask, other=0.0)
            tl.store(g_mean_ptr + j, (g_mean - scale * g_shift) / L, mask=mask)
            tl.store(g_var_ptr + j, 2 * g_var / L, mask=mask)


# ---- the kernels over the input ---------------------------------------------------------------------------

@triton.jit
def _rows(N, C, L, chunk, sN, sC, BLOCK_C: tl.constexpr):
    """This program's sample, channels, their mask, the rows' offsets and the chunk ``[lo, hi)`` of positions."""
    blocks = tl.cdiv(C, BLOCK_C)
    row_block = tl.program_id(0)
    n = row_block // blocks
    c = (row_block % blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    lo = tl.program_id(1) * chunk
    return n, c, c < C, n.to(tl.int64) * sN + c.to(tl.int64) * sC, lo, tl.minimum(lo + chunk, L)


@triton.jit
def moments_kernel(x_ptr, part_ptr, first_ptr, N, C, L, chunk, sN, sC, sL, BLOCK_C: tl.constexpr,
                   BLOCK_L: tl.constexpr):
    acc = part_ptr.dtype.element_ty
    n, c, c_ok, row, lo, hi = _rows(N, C, L, chunk, sN, sC, BLOCK_C)
    first = tl.load(x_ptr + row, mask=c_ok, other=0.0).to(acc)
    sums = tl.zeros([BLOCK_C, BLOCK_L], acc)
    squares = tl.zeros([BLOCK_C, BLOCK_L], acc)
    for start in range(lo, hi, BLOCK_L):
        l = start + tl.arange(0, BLOCK_L)
        mask = c_ok[:, None] & (l < hi)[None, :]
        v = tl.load(x_ptr + row[:, None] + l.to(tl.int64)[None, :] * sL, mask=mask, other=0.0).to(acc)
        d = tl.where(mask, v - first[:, None], 0.0)
        sums += d
        squares += d * d
    NC = N * C
    j = n * C + c
    split = tl.program_id(1)
    tl.store(part_ptr + split * NC + j, tl.sum(sums, 1), mask=c_ok)
    tl.store(part_ptr + (tl.num_programs(1) + split) * NC + j, tl.sum(squares, 1), mask=c_ok)
    tl.store(first_ptr + j, first, mask=c_ok & (split == 0))


@triton.jit
def normalize_kernel(x_ptr, y_ptr, stats_ptr, coef_ptr, N, C, L, chunk, sN, sC, sL, BLOCK_C: tl.constexpr,
                     BLOCK_L: tl.constexpr):
    n, c, c_ok, row, lo, hi = _rows(N, C, L, chunk, sN, sC, BLOCK_C)
    mean_ptr, _, _, _, reference_ptr = stats_regions(stats_ptr, N, C)
    j = n * C + c
    reference = tl.load(reference_ptr)
    mean = tl.load(mean_ptr + j, mask=c_ok, other=0.0)[:, None]
    scale = tl.load(coef_ptr + j, mask=c_ok, other=0.0)[:, None]
    shift = tl.load(coef_ptr + N * C + j, mask=c_ok, other=0.0)[:, None]
    for start in range(lo, hi, BLOCK_L):
        l = start + tl.arange(0, BLOCK_L)
        mask = c_ok[:, None] & (l < hi)[None, :]
        offsets = row[:, None] + l.to(tl.int64)[None, :] * sL
        v = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(reference.dtype)
        tl.store(y_ptr + offsets, (((v - reference) - mean) * scale + shift).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gradient_sums_kernel(dy_ptr, x_ptr, stats_ptr, part_ptr, N, C, L, chunk, sN, sC, sL, dN, dC, dL,
                         BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    acc = part_ptr.dtype.element_ty
    n, c, c_ok, row, lo, hi = _rows(N, C, L, chunk, sN, sC, BLOCK_C)
    grad_row = n.to(tl.int64) * dN + c.to(tl.int64) * dC
    mean_ptr, _, _, _, reference_ptr = stats_regions(stats_ptr, N, C)
    j = n * C + c
    reference = tl.load(reference_ptr)
    mean = tl.load(mean_ptr + j, mask=c_ok, other=0.0)[:, None]
    sum_dy = tl.zeros([BLOCK_C, BLOCK_L], acc)
    sum_dy_xc = tl.zeros([BLOCK_C, BLOCK_L], acc)
    for start in range(lo, hi, BLOCK_L):
        l = start + tl.arange(0, BLOCK_L).to(tl.int64)
        mask = c_ok[:, None] & (l < hi)[None, :]
        v = tl.load(x_ptr + row[:, None] + l[None, :] * sL, mask=mask, other=0.0).to(acc)
        g = tl.load(dy_ptr + grad_row[:, None] + l[None, :] * dL, mask=mask, other=0.0).to(acc)
        sum_dy += g
        sum_dy_xc += tl.where(mask, g * ((v - reference) - mean), 0.0)
    NC = N * C
    split = tl.program_id(1)
    tl.store(part_ptr + split * NC + j, tl.sum(sum_dy, 1), mask=c_ok)
    tl.store(part_ptr + (tl.num_programs(1) + split) * NC + j, tl.sum(sum_dy_xc, 1), mask=c_ok)


@triton.jit
def input_gradient_kernel(dy_ptr, x_ptr, dx_ptr, stats_ptr, coef_ptr, N, C, L, chunk, sN, sC, sL, dN, dC, dL,
                          BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    n, c, c_ok, row, lo, hi = _rows(N, C, L, chunk, sN, sC, BLOCK_C)
    grad_row = n.to(tl.int64) * dN + c.to(tl.int64) * dC
    mean_ptr, _, _, _, reference_ptr = stats_regions(stats_ptr, N, C)
    NC = N * C
    j = n * C + c
    reference = tl.load(reference_ptr)
    acc = reference.dtype
    mean = tl.load(mean_ptr + j, mask=c_ok, other=0.0)[:, None]
    scale = tl.load(coef_ptr + j, mask=c_ok, other=0.0)[:, None]
    b = tl.load(coef_ptr + NC + j, mask=c_ok, other=0.0)[:, None]
    a = tl.load(coef_ptr + 2 * NC + j, mask=c_ok, other=0.0)[:, None]
    for start in range(lo, hi, BLOCK_L):
        l = start + tl.arange(0, BLOCK_L).to(tl.int64)
        mask = c_ok[:, None] & (l < hi)[None, :]
        offsets = row[:, None] + l[None, :] * sL
        v = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(acc)
        g = tl.load(dy_ptr + grad_row[:, None] + l[None, :] * dL, mask=mask, other=0.0).to(acc)
        dx = g * scale + ((v - reference) - mean) * a + b
        tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---- the plans: buffers and launches of one layer call ------------------------------------------------------

class _Plan:
    """Launch 2 of a layer call, the same for :class:`Forward` and :class:`Backward` (each defines ``math_args()``
    and ``math_meta``)."""

    def launch_math(self, kernel, *args, **meta) -> None:
        """Launch the layer's math ``kernel`` on grid ``(1,)`` with the plan's ``math_args()`` then ``args``, and its
        ``math_meta`` and ``meta``."""
        launch(kernel, (1,), *self.math_args(), *args, **self.math_meta, **meta)


class Forward(_Plan):
    """One forward call: validates ``x``, allocates ``stats``, ``batch`` and the work buffer, launches the moments
    kernel (launch 1); :meth:`launch_math` launches the layer's math kernel (launch 2) with :meth:`math_args` and
    :attr:`math_meta`, :meth:`outputs` launches the normalize kernel (launch 3, :meth:`normalize`) and gives the
    forward's return value ``(y, plan.stats, plan.batch, <the layer's extra outputs>)``.

    Args:
        x: the input, ``(N, C, *)``, contiguous or channels-last.
        has_bn: the layer has a BN term.
        running_mean, running_var: ``(C,)`` statistics the BN term uses (evaluation), or None for the batch's.
        training: only for BatchNorm's error when the batch statistics have a single value per channel.
        scratch: elements of the layer's private scratch region.
    """

    def __init__(self, x: Tensor, *, has_bn: bool, running_mean: Tensor | None, running_var: Tensor | None,
                 training: bool, scratch: int = 0) -> None:
        g = geometry(x)
        self.x, self.geometry = x, g
        self.use_running = has_bn and running_mean is not None
        if self.use_running and (running_var is None or running_mean.shape != (g.C,)
                                 or running_var.shape != (g.C,)):
            raise ValueError(f"running_mean/running_var must both be ({g.C},) tensors")
        if training and has_bn and not self.use_running and g.N * g.L <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
        self.has_bn = has_bn
        acc = accumulation_dtype(x.dtype)
        NC, S = g.rows, g.splits
        self.stats = empty("stats", (2 * NC + 2 * g.C + 1,), dtype=acc, device=x.device)
        self.batch = empty("batch", (2, g.C), dtype=acc, device=x.device)
        work = empty("work", (2 * S * NC + 3 * NC + max(scratch, 1),), dtype=acc, device=x.device)
        self.part, self.first = work[:2 * S * NC], work[2 * S * NC:(2 * S + 1) * NC]
        self.coef, self.scratch = work[(2 * S + 1) * NC:(2 * S + 3) * NC], work[(2 * S + 3) * NC:]
        self.running_mean = running_mean if self.use_running else self.stats
        self.running_var = running_var if self.use_running else self.stats
        launch(moments_kernel, g.grid, x, self.part, self.first, g.N, g.C, g.L, g.chunk, *g.strides,
               BLOCK_C=g.block_c, BLOCK_L=g.block_l, num_warps=g.warps)

    def math_args(self) -> tuple:
        """The leading arguments of a forward math kernel (see the package's conventions)."""
        g = self.geometry
        return (self.part, self.first, self.running_mean, self.running_var, self.stats, self.batch, self.coef,
                self.scratch, g.N, g.C, g.L, g.splits)

    @property
    def math_meta(self) -> dict:
        """The prologue's compile-time arguments and the launch options of a forward math kernel."""
        g = self.geometry
        return dict(HAS_BN=self.has_bn, USE_RUNNING=self.use_running, BLOCK_N=g.math_block_n,
                    BLOCK_C=g.math_block_c, num_warps=MATH_WARPS)

    def normalize(self) -> Tensor:
        """``y``, in ``x``'s dtype and memory format (after the math kernel wrote ``coef``)."""
        g = self.geometry
        y = empty_like("output", self.x)
        launch(normalize_kernel, g.grid, self.x, y, self.stats, self.coef, g.N, g.C, g.L, g.chunk, *g.strides,
               BLOCK_C=g.block_c, BLOCK_L=g.block_l, num_warps=g.warps)
        return y

    def outputs(self, *extra: Tensor) -> tuple[Tensor, ...]:
        """``(y, stats, batch, *extra)``: the forward's return value (launches the normalize kernel)."""
        return (self.normalize(), self.stats, self.batch, *extra)


class Backward(_Plan):
    """One backward call: launches the gradient-sums kernel (launch 1) into a new work buffer; :meth:`launch_math`
    launches the layer's math-backward kernel (launch 2) with :meth:`math_args` and :attr:`math_meta`,
    :meth:`outputs` the input-gradient kernel (launch 3, :meth:`input_gradient`; skipped without ``input_grad``) and
    gives the backward's return value ``(dx, <the parameters' gradients>)``.

    Args:
        grad_y: the output's gradient, shape of ``x``, any strides whose spatial axes flatten (else copied).
        x, stats: the forward's input and statistics.
        fold_bn: the BN term used this batch's statistics: fold their gradients into the instance moments'.
        input_grad: compute ``dx``.
        scratch: elements of the layer's private scratch region.
    """

    def __init__(self, grad_y: Tensor, x: Tensor, stats: Tensor, *, fold_bn: bool, input_grad: bool,
                 scratch: int = 0) -> None:
        g = geometry(x)
        if grad_y.shape != x.shape:
            raise ValueError(f"grad_y has shape {list(grad_y.shape)}, the input {list(x.shape)}")
        if stats.shape != (2 * g.rows + 2 * g.C + 1,) or stats.dtype != accumulation_dtype(x.dtype):
            raise ValueError(f"stats must be the forward's ({2 * g.rows + 2 * g.C + 1},) "
                             f"{accumulation_dtype(x.dtype)} buffer, got {list(stats.shape)} {stats.dtype}")
        grad_strides = row_strides(grad_y)
        if grad_strides is None:  # e.g. a permuted gradient: one copy in x's memory format
            layout = torch.contiguous_format if x.is_contiguous() else _channels_last(x)
            grad_y = recorded("grad_copy", grad_y.contiguous(memory_format=layout))
            grad_strides = row_strides(grad_y)
        self.x, self.grad_y, self.grad_strides, self.stats, self.geometry = x, grad_y, grad_strides, stats, g
        self.fold_bn, self.input_grad = fold_bn, input_grad
        NC, S = g.rows, g.splits
        work = empty("work", (2 * S * NC + 5 * NC + 2 * g.C + max(scratch, 1),), dtype=stats.dtype,
                     device=x.device)
        self.part, self.work = work[:2 * S * NC], work[2 * S * NC:(2 * S + 5) * NC + 2 * g.C]
        self.scratch = work[(2 * S + 5) * NC + 2 * g.C:]
        launch(gradient_sums_kernel, g.grid, grad_y, x, stats, self.part, g.N, g.C, g.L, g.chunk, *g.strides,
               *grad_strides, BLOCK_C=g.block_c, BLOCK_L=g.block_l, num_warps=g.warps)

    def math_args(self) -> tuple:
        """The leading arguments of a backward math kernel (see the package's conventions)."""
        g = self.geometry
        return self.part, self.stats, self.work, self.scratch, g.N, g.C, g.L, g.splits

    @property
    def math_meta(self) -> dict:
        """The epilogue's compile-time arguments and the launch options of a backward math kernel."""
        g = self.geometry
        return dict(FOLD_BN=self.fold_bn, BLOCK_N=g.math_block_n, BLOCK_C=g.math_block_c, num_warps=MATH_WARPS)

    def input_gradient(self) -> Tensor:
        """``dx`` in ``x``'s dtype and memory format, or an empty tensor without ``input_grad``."""
        if not self.input_grad:
            return empty("grad", (0,), dtype=self.x.dtype, device=self.x.device)
        g = self.geometry
        dx = empty_like("input_grad", self.x)
        launch(input_gradient_kernel, g.grid, self.grad_y, self.x, dx, self.stats, self.work[2 * g.rows:], g.N,
               g.C, g.L, g.chunk, *g.strides, *self.grad_strides, BLOCK_C=g.block_c, BLOCK_L=g.block_l,
               num_warps=g.warps)
        return dx

    def outputs(self, *grads: Tensor) -> tuple[Tensor, ...]:
        """``(dx, *grads)``: the backward's return value (launches the input-gradient kernel)."""
        return (self.input_gradient(), *grads)


def _channels_last(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 else torch.channels_last_3d
