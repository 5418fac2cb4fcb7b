"""The one place that chooses how a layer's math runs: fused operators or the reference ops.

Each implementation exposes the same functions with the same arguments (``switch_norm``, ``sparse_switch_norm``,
``exemplar_norm``, ``dynamic_norm``, ``dynamic_affine_norm``, ``associate_norm``; see :mod:`dynnorm.functional`):

- :mod:`dynnorm.functional`, the reference: plain PyTorch ops, differentiable to any order, traceable,
  exportable, and usable with synchronized batch statistics.
- :mod:`dynnorm.kernels.cpu`: C++ operators (``torch.ops.dynnorm.*``, built by the package's setup), one call
  per forward and one per backward, saving only the input and ``(N, C)`` statistics. Measured faster than the
  reference at every benchmarked shape on CPU (``python -m benchmarks.benchmark``).
- the Triton kernels (``torch.ops.dynnorm_triton.*``) on CUDA, opt in: :func:`set_cuda_kernels`.

Both fused implementations are ``torch.library`` operators with fake kernels and autograd
(:mod:`dynnorm.kernels.ops`): ``torch.compile`` keeps them in its graph, and double backward works through
them (the backward of the backward recomputes the layer through the reference ops).

:func:`select` returns a fused implementation for contiguous or channels-last inputs, eagerly or under
``torch.compile``, and the reference everywhere else: ``torch.export``/ONNX export (they decompose the layers
into standard ops), ``torch.jit.trace``, ``torch.func`` transforms and forward-mode AD, synchronized batch
statistics, CUDA unless the Triton kernels are selected, and inside ``fast_path(False)`` (or with
``DYNNORM_FAST_PATH=0``).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import Tensor

from .. import functional
from . import cpu

_enabled = os.environ.get("DYNNORM_FAST_PATH", "1") not in ("0", "false", "False")
CUDA_KERNELS = ("reference", "triton")
_cuda_kernels = "reference"


def set_fast_path(enabled: bool) -> None:
    """Use the fused operators where they apply (``True``, the default) or the reference ops everywhere."""
    global _enabled
    _enabled = bool(enabled)


def fast_path_enabled() -> bool:
    """Whether :func:`select` may return fused operators."""
    return _enabled


@contextlib.contextmanager
def fast_path(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_fast_path`; restores the previous setting on exit."""
    previous = _enabled
    set_fast_path(enabled)
    try:
        yield
    finally:
        set_fast_path(previous)


def set_cuda_kernels(kind: str) -> None:
    """What the layers run on CUDA tensors: ``'reference'`` (the default: the reference ops, which
    ``torch.compile`` fuses) or ``'triton'`` (the fused Triton kernels: two to three launches per forward and
    per backward, input-sized memory). Also set by the environment variable ``DYNNORM_CUDA_KERNELS``.

    The reference stays the default until the kernels are measured faster on a GPU at every benchmarked shape.
    """
    global _cuda_kernels
    if kind not in CUDA_KERNELS:
        raise ValueError(f"cuda kernels must be one of {CUDA_KERNELS}, got {kind!r}")
    if kind == "triton":
        from . import triton_ops

        triton_ops.require()
    _cuda_kernels = kind


def cuda_kernels() -> str:
    """The kernels the layers run on CUDA tensors (see :func:`set_cuda_kernels`)."""
    return _cuda_kernels


def _is_channels_last(x: Tensor) -> bool:
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def _decomposing() -> bool:
    """Whether the call is exported, traced or transformed, where the layers must decompose into standard ops."""
    return (
        torch.compiler.is_exporting()
        or torch.jit.is_tracing()
        or torch._C._are_functorch_transforms_active()
        or torch.autograd.forward_ad._current_level >= 0
    )


def select(x: Tensor, *, synchronized: bool = False):
    """The implementation for a layer applied to ``x``: the C++ operators' ``cpu.layers``, the Triton operators'
    ``triton_ops.layers`` or :mod:`dynnorm.functional` (all with the same layer functions).

    Args:
        x: the layer's input.
        synchronized: the batch statistics are reduced across processes (only the reference does that).
    """
    if synchronized or not _enabled or _decomposing() or not (x.is_contiguous() or _is_channels_last(x)):
        return functional
    if x.device.type == "cpu":
        return cpu.layers if cpu.available() else functional
    if x.device.type == "cuda" and _cuda_kernels == "triton":
        from . import triton_ops

        return triton_ops.layers
    return functional


if os.environ.get("DYNNORM_CUDA_KERNELS"):
    set_cuda_kernels(os.environ["DYNNORM_CUDA_KERNELS"])
