"""The one place that chooses how a layer's math runs: the fused CPU operators or the reference ops.

Each implementation exposes the same functions with the same arguments (``switch_norm``, ``sparse_switch_norm``, ``exemplar_norm``,
``dynamic_norm``, ``dynamic_affine_norm``, ``associate_norm``; see :mod:`dynnorm.functional`):

- :mod:`dynnorm.functional`, the reference: plain PyTorch ops, differentiable to any order, traceable,
  compilable, exportable, and usable with synchronized batch statistics.
- :mod:`dynnorm.kernels.cpu`: C++ operators registered with ``torch.library`` (``torch.ops.dynnorm.*``,
  built by the package's setup), one call per forward and one per backward, saving only the input and
  ``(N, C)`` statistics. Measured faster than the reference at every benchmarked shape on CPU
  (``tools/benchmark.py``).

:func:`select` returns the fused operators for eager CPU calls on contiguous or channels-last inputs and
the reference everywhere else: other devices (on CUDA the reference ops were measured faster than the
earlier fused Triton path in the launch-bound small-batch regime; ``torch.compile`` fuses them there),
``torch.compile``/``torch.export``/ONNX export, ``torch.jit.trace``, ``torch.func`` transforms and forward-mode
AD, synchronized batch statistics, and inside ``fast_path(False)`` (or with ``DYNNORM_FAST_PATH=0``).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType

import torch
from torch import Tensor

from .. import functional
from ..functional import capturing

_enabled = os.environ.get("DYNNORM_FAST_PATH", "1") not in ("0", "false", "False")


def set_fast_path(enabled: bool) -> None:
    """Use the fused operators where they apply (``True``, the default) or the reference ops everywhere."""
    global _enabled
    _enabled = bool(enabled)


def fast_path_enabled() -> bool:
    """Whether :func:`select` may return the fused operators."""
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


def _is_channels_last(x: Tensor) -> bool:
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def select(x: Tensor, *, synchronized: bool = False) -> ModuleType:
    """The implementation for a layer applied to ``x``: :mod:`dynnorm.kernels.cpu` or :mod:`dynnorm.functional`.

    Args:
        x: the layer's input.
        synchronized: the batch statistics are reduced across processes (only the reference does that).
    """
    if synchronized or not _enabled or x.device.type != "cpu" or capturing():
        return functional
    if not (x.is_contiguous() or _is_channels_last(x)):
        return functional
    from . import cpu

    return cpu if cpu.available() else functional
