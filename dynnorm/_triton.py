"""Triton kernels for the fast path on CUDA (optional: without Triton, or on CPU, the PyTorch ops run).

Two kernels over the ``(N * C, L)`` rows of a contiguous input, one program per row (or row block):

- :func:`row_moments`: mean and biased variance of each row in **one** read of the input, in float32,
  merging per-block mean and sum of squared deviations with Chan's formula (no ``E[x^2] - E[x]^2``
  cancellation). PyTorch ops need two reads and a temporary for the same robustness.
- :func:`accumulate_affine_`: ``g += a[row] * x + b[row]`` in place, one pass, where PyTorch needs an
  ``addcmul_`` and an ``add_`` (two passes over ``g``).

Both run only eagerly: under ``torch.compile`` Inductor generates its own fused kernels from the ops.
"""
from __future__ import annotations

import torch
from torch import Tensor

try:  # Triton is optional: CPU-only installs do not have it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def available(x: Tensor) -> bool:
    """Whether the kernels apply to ``x``: a contiguous CUDA float32/bf16/fp16 tensor, Triton installed,
    not inside ``torch.compile``."""
    return (
        triton is not None
        and x.is_cuda
        and x.dtype in _DTYPES
        and x.is_contiguous()
        and not torch.compiler.is_compiling()
    )


def _block(length: int) -> int:
    return 256 if length <= 256 else 1024 if length <= 4096 else 4096


if triton is not None:

    @triton.jit
    def _row_moments_kernel(x_ptr, mean_ptr, var_ptr, length, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = x_ptr + row * length
        offsets = tl.arange(0, BLOCK)
        count = tl.zeros((), tl.float32)
        mean = tl.zeros((), tl.float32)
        m2 = tl.zeros((), tl.float32)
        for start in range(0, length, BLOCK):
            idx = start + offsets
            mask = idx < length
            values = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
            block_count = tl.minimum(length - start, BLOCK).to(tl.float32)
            block_mean = tl.sum(values, axis=0) / block_count
            deviations = tl.where(mask, values - block_mean, 0.0)
            block_m2 = tl.sum(deviations * deviations, axis=0)
            total = count + block_count
            delta = block_mean - mean
            mean = mean + delta * (block_count / total)
            m2 = m2 + block_m2 + delta * delta * (count * block_count / total)
            count = total
        tl.store(mean_ptr + row, mean)
        tl.store(var_ptr + row, m2 / length)

    @triton.jit
    def _accumulate_affine_kernel(g_ptr, x_ptr, a_ptr, b_ptr, length, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = idx < length
        a = tl.load(a_ptr + row)
        b = tl.load(b_ptr + row)
        g = tl.load(g_ptr + row * length + idx, mask=mask, other=0.0)
        x = tl.load(x_ptr + row * length + idx, mask=mask, other=0.0).to(tl.float32)
        out = g.to(tl.float32) + a * x + b
        tl.store(g_ptr + row * length + idx, out.to(g.dtype), mask=mask)


def row_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) mean and biased variance ``(N, C)`` in float32 of a contiguous ``(N, C, *)`` CUDA tensor."""
    n, c = x.shape[0], x.shape[1]
    length = x.numel() // (n * c)
    mean = torch.empty(n * c, dtype=torch.float32, device=x.device)
    var = torch.empty_like(mean)
    _row_moments_kernel[(n * c,)](x, mean, var, length, BLOCK=_block(length))
    return mean.view(n, c), var.view(n, c)


def accumulate_affine_(g: Tensor, x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``g += a * x + b`` in place with ``(N, C)`` float32 ``a``, ``b``; ``g`` and ``x`` contiguous, same shape."""
    n, c = x.shape[0], x.shape[1]
    length = x.numel() // (n * c)
    block = _block(length)
    grid = (n * c, triton.cdiv(length, block))
    _accumulate_affine_kernel[grid](g, x, a.float().contiguous(), b.float().contiguous(), length, BLOCK=block)
    return g
