"""The fused CPU operators (the compiled ``dynnorm._C``, ``torch.ops.dynnorm.*``), with the signatures of
:mod:`dynnorm.functional`.

Each layer call is one forward operator call: the per-(n, c) moments in one pass over the input (corrected
two-pass sums, accumulated in float32/float64), the ``(N, C)`` math, and the normalize in a second pass;
backward is one call too (two passes: the gradient sums, then the input gradient), with closed-form gradients
of the small math. The source is ``dynnorm/csrc``; the schemas and fake kernels are in
:mod:`dynnorm.kernels.ops`, the autograd (double backward included) in ``csrc/autograd.cpp``.
"""
from __future__ import annotations

import warnings

from . import ops
from .fused import FusedLayers

ops.define("dynnorm", autograd=False)  # their autograd is registered in C++ (csrc/autograd.cpp)


def _load() -> bool:
    try:
        from .. import _C  # noqa: F401  (registers the CPU implementations of torch.ops.dynnorm.*)
    except ImportError as error:
        warnings.warn(f"dynnorm's C++ operators are not built ({error}); the layers run their reference PyTorch "
                      "ops on CPU (reinstall with `pip install --no-build-isolation` to build them)", stacklevel=2)
        return False
    return True


_AVAILABLE = _load()


def available() -> bool:
    """Whether the compiled operators are loaded (the package was built with them)."""
    return _AVAILABLE


layers = FusedLayers("dynnorm")
"""The layer functions on these operators, with :mod:`dynnorm.functional`'s signatures."""
