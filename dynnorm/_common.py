"""Helpers shared by :mod:`dynnorm.functional` and the fast path :mod:`dynnorm._fused` (which functional imports)."""
from __future__ import annotations

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are computed in: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def spatial_size(x: Tensor) -> int:
    """Number of values per (sample, channel) of an ``(N, C, *)`` tensor."""
    size = 1
    for s in x.shape[2:]:
        size *= s
    return size
