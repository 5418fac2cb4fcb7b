"""The Triton kernels (:mod:`dynnorm.kernels.triton`) as ``torch.library`` operators, ``torch.ops.dynnorm_triton.*``,
with the signatures of :mod:`dynnorm.functional`.

The operators have the schemas, fake kernels and autograd of :mod:`dynnorm.kernels.ops` (first-order gradients
from the backward kernels, double backward through the reference ops), so ``torch.compile`` keeps them in its
graph and CUDA graphs can capture a step: nothing reads a tensor value on the host. They are implemented for
CUDA tensors, and for CPU tensors when the Triton interpreter is on (``TRITON_INTERPRET=1``, how the tests run
them). The layers use them on CUDA after :func:`dynnorm.set_cuda_kernels('triton') <dynnorm.set_cuda_kernels>`.
"""
from __future__ import annotations

import torch

from . import ops, triton
from .fused import FusedLayers

NAMESPACE = "dynnorm_triton"


def require() -> None:
    """Raise a clear error when the Triton kernels cannot run here."""
    if not triton.available():
        raise RuntimeError("dynnorm's Triton kernels need the triton package and a CUDA device (or TRITON_INTERPRET=1 "
                           "for CPU tensors); the layers run the reference ops on CUDA without them")


def _register() -> None:
    ops.define(NAMESPACE, autograd=True)
    library = torch.library.Library(NAMESPACE, "IMPL")
    ops.keep(library)
    devices = ["CUDA"] + (["CPU"] if triton.interpreting() else [])
    for spec in ops.LAYER_OPS:
        for name in (spec.name, f"{spec.name}_backward"):
            for device in devices:
                library.impl(name, getattr(triton, name), device)


_register()

layers = FusedLayers(NAMESPACE)
"""The layer functions on these operators, with :mod:`dynnorm.functional`'s signatures."""
