"""Where the Triton kernels run, how they are launched, and a record of launches and allocations for tests.

Every launch goes through :func:`launch` (``torch.library.wrap_triton``, so a ``torch.library.triton_op``
implementation that calls these functions shows its kernels to ``torch.compile``), and every buffer the layer
functions allocate goes through :func:`empty` / :func:`empty_like`, which :func:`record_launches` observes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["LaunchRecord", "available", "empty", "empty_like", "interpreting", "launch", "record_launches", "recorded"]


@functools.cache
def _triton_importable() -> bool:
    try:
        importlib.import_module("triton")
    except Exception:  # a broken installation counts as absent
        return False
    return True


def interpreting() -> bool:
    """Whether the kernels run under the Triton interpreter (CPU tensors) instead of compiled (CUDA tensors).

    That is decided when ``triton`` is first imported in the process: ``TRITON_INTERPRET=1`` at that time makes
    every ``@triton.jit`` function, triton's own included, an interpreted one.
    """
    if "triton" not in sys.modules:
        return os.environ.get("TRITON_INTERPRET", "0") == "1"
    if not _triton_importable():
        return False
    from triton.runtime.jit import JITFunction

    from . import passes

    return not isinstance(passes.moments_kernel, JITFunction)


def available(device: torch.device | str | None = None) -> bool:
    """Whether the kernels can run on ``device`` (default ``cuda``): triton imports and either the kernels are
    compiled and ``device`` is an available CUDA device, or they are interpreted and ``device`` is the CPU."""
    device = torch.device("cuda" if device is None else device)
    if not _triton_importable():
        return False
    if interpreting():
        return device.type == "cpu"
    return device.type == "cuda" and torch.cuda.is_available()


@dataclasses.dataclass
class LaunchRecord:
    """Kernel launches (by kernel name) and buffers allocated (``(what, bytes)``) while recording."""

    kernels: Counter = dataclasses.field(default_factory=Counter)
    allocations: list[tuple[str, int]] = dataclasses.field(default_factory=list)

    @property
    def launches(self) -> int:
        return sum(self.kernels.values())

    def allocated_bytes(self, what: str | None = None) -> int:
        """Bytes allocated, in all or in the buffers named ``what``."""
        return sum(size for name, size in self.allocations if what is None or name == what)


_records: list[LaunchRecord] = []


@contextlib.contextmanager
def record_launches() -> Iterator[LaunchRecord]:
    """Record the kernel launches and the allocations of the layer functions called inside the block.

    Examples::

        >>> from dynnorm.kernels.triton import record_launches
        >>> with record_launches() as record:
        ...     pass  # y, stats = switch_norm(...)
        >>> record.launches
        0
    """
    record = LaunchRecord()
    _records.append(record)
    try:
        yield record
    finally:
        _records.remove(record)


def launch(kernel: Any, grid: Sequence[int], *args: Any, **meta: Any) -> None:
    """Launch a ``@triton.jit`` kernel on ``grid`` through ``torch.library.wrap_triton``."""
    for record in _records:
        record.kernels[kernel.fn.__name__] += 1
    torch.library.wrap_triton(kernel)[tuple(grid)](*args, **meta)


def recorded(what: str, tensor: Tensor) -> Tensor:
    """``tensor``, recorded as an allocation named ``what``."""
    for record in _records:
        record.allocations.append((what, tensor.numel() * tensor.element_size()))
    return tensor


def empty(what: str, shape: Sequence[int] | int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.empty``, recorded under the name ``what``."""
    return recorded(what, torch.empty(shape, dtype=dtype, device=device))


def empty_like(what: str, tensor: Tensor) -> Tensor:
    """``torch.empty_like`` (same dtype and strides), recorded under the name ``what``."""
    return recorded(what, torch.empty_like(tensor))
