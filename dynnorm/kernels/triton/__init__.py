"""Triton kernels for every dynnorm layer: three launches per forward and three per backward, deterministic.

Every layer computes ``y = ((x - R) - m[n, c]) * scale[n, c] + shift[n, c]`` (``m`` the instance mean relative to
the call's reference value ``R``); only the ``(N, C)`` math that produces ``scale``/``shift`` differs. The
functions here have exactly the signatures and return values of the operator contract of the C++ operators
(``torch.ops.dynnorm.*``): ``switch_norm(x, weight, bias, mean_mixture, var_mixture, running_mean, running_var,
training, eps, mixture_logits) -> (y, stats)`` and ``switch_norm_backward(...)``, the same for
``sparse_switch_norm``, ``exemplar_norm``, ``dynamic_norm``, ``dynamic_affine_norm`` and ``associate_norm``. They
never write running statistics, never read a tensor value on the host and allocate only their outputs and
``(N, C)``-sized work buffers (sizes from shapes only), so they can be captured by CUDA graphs and called from a
``torch.library.triton_op`` implementation (every launch goes through ``torch.library.wrap_triton``).

Launches, forward: (1) the moments kernel over the input, (2) the layer's math kernel (one program), (3) the
normalize kernel. Backward: (1) the gradient-sums kernel, (2) the layer's math-backward kernel (one program),
(3) the input-gradient kernel (skipped when ``input_grad`` is False).

The kernels run CUDA tensors compiled, and CPU tensors under the Triton interpreter when ``TRITON_INTERPRET=1``
was set before ``triton`` was first imported in the process (that is how the tests run them: see
:func:`interpreting`). Importing this package does not import triton.

CONVENTIONS (for the per-layer ``(N, C)`` math; ``switch.py`` is the worked example)
-----------------------------------------------------------------------------------------
Files and names
    One module per layer family, named like :mod:`dynnorm.functional`'s functions: ``switch.py``
    (``switch_norm``, ``sparse_switch_norm``), ``exemplar.py``, ``dynamic_affine.py``, ``associate.py``,
    ``dynamic.py``. Each defines ``@triton.jit`` device functions for its math (private names, ``_<layer>_...``),
    two kernels ``_<layer>_forward_kernel`` and ``_<layer>_backward_kernel``, and the two public Python functions
    ``<layer>(...)`` and ``<layer>_backward(...)`` with the contract's positional parameters. Shared pieces live
    in ``passes.py`` (the kernels over the input; the device functions of the buffers: the prologue/epilogue,
    region pointers, a channel block's gradient stores; the Python plans
    :class:`~dynnorm.kernels.triton.passes.Forward` / :class:`~dynnorm.kernels.triton.passes.Backward` and the
    host-side helpers ``optional``, ``affine_meta``, ``grad_like``, ``check_head``) and ``small.py`` (device math
    on small vectors and ``(N, C)`` tiles: tile indices and masks, the statistics and affine parameters on a tile,
    pooled moments over channels or groups, activations, a learned head's hidden unit, softmax of a few logits,
    SparsestMax, ...); layer modules do not import from one another. Add a layer's public functions to
    ``_LAYER_MODULES`` below.

Buffers (all in the accumulation dtype ``acc = stats_ptr.dtype.element_ty``: float32, float64 for float64 inputs)
    ``stats`` (returned): ``mean[N*C] | var[N*C] | bn_mean[C] | bn_var[C] | R[1]``, index ``n * C + c``;
    :func:`passes.stats_regions` returns the five pointers. ``batch`` (returned, ``(2, C)``): the batch's mean and
    unbiased variance for the running averages, written by the prologue (zeros unless the BN term used the
    batch's statistics). ``coef`` (forward work): ``scale[N*C] | shift[N*C]``.
    Backward ``work``: ``g_shift | g_scale | scale | g_mean | g_var`` (``N*C`` each) ``| g_bn_mean | g_bn_var``
    (``C`` each); :func:`passes.work_regions` returns the seven pointers. ``scratch``: a layer-private region of
    the size the layer asks for (``scratch=`` of the plan), for values shared between phases of its math.

Forward math kernel (one program; launched with ``grid=(1,)``)::

    @triton.jit
    def _layer_forward_kernel(part_ptr, first_ptr, running_mean_ptr, running_var_ptr, stats_ptr, batch_ptr,
                              coef_ptr, scratch_ptr, N, C, L, S,            # plan.math_args()
                              <layer tensors and floats>,
                              HAS_BN: tl.constexpr, USE_RUNNING: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,  # plan.math_meta
                              <layer constexprs>):
        forward_prologue(part_ptr, first_ptr, running_mean_ptr, running_var_ptr, stats_ptr, batch_ptr, N, C,
                         L, S, HAS_BN, USE_RUNNING, BLOCK_N, BLOCK_C)      # stats, batch; ends with a barrier
        <the layer's math: read stats, write coef (every element)>

Backward math kernel (one program)::

    @triton.jit
    def _layer_backward_kernel(part_ptr, stats_ptr, work_ptr, scratch_ptr, N, C, L, S,  # plan.math_args()
                               <layer tensors, gradient outputs, floats>,
                               FOLD_BN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                               <layer constexprs>):
        backward_prologue(part_ptr, work_ptr, N, C, S, BLOCK_N, BLOCK_C)  # writes g_shift, g_scale; barrier
        <the layer's closed-form backward (dynnorm/csrc/layers.h): read g_shift = sum(dy) and
         g_scale = sum(dy * ((x - R) - m)) from work; write scale, g_mean, g_var (every element),
         g_bn_mean, g_bn_var (every element when the layer has a BN term) and each parameter's gradient
         (per channel block: store_channel_gradients writes the weight's, bias's and BN term's)>
        backward_epilogue(stats_ptr, work_ptr, N, C, L, FOLD_BN, BLOCK_N, BLOCK_C)  # barrier; BN fold; a, b

    ``g_mean``/``g_var`` are the gradients of the instance moments from the layer's math alone; the epilogue adds
    the BN pooling's backward (``FOLD_BN``: the BN term used this batch's statistics) and turns them into the
    input-gradient coefficients.

Python side (see ``switch.py``)::

    def layer(x, weight, bias, ..., running_mean, running_var, training, eps, ...):
        plan = passes.Forward(x, has_bn=True, running_mean=running_mean, running_var=running_var,
                              training=training, scratch=0)                 # launch 1 (moments)
        plan.launch_math(_layer_forward_kernel, passes.optional(weight, plan.stats),
                         passes.optional(bias, plan.stats), ..., float(eps),
                         **passes.affine_meta(weight, bias), ...)           # launch 2: plan.math_args() first
        return plan.outputs(<extra outputs>)                                # launch 3: (y, stats, batch, ...)

    def layer_backward(grad_y, x, stats, weight, ..., batch_from_input, eps, ..., input_grad):
        plan = passes.Backward(grad_y, x, stats, fold_bn=batch_from_input, input_grad=input_grad)  # launch 1
        d_weight = passes.grad_like(weight, stats)  # empty (numel 0) when the parameter is absent
        plan.launch_math(_layer_backward_kernel, ..., d_weight, ..., **passes.affine_meta(weight, bias), ...)
        return plan.outputs(d_weight, ...)          # launch 3 (if input_grad): (dx, d_weight, ...)

Rules for the math
    * Loop over ``(N, C)`` in ``[BLOCK_N, BLOCK_C]`` tiles (``for n0 in range(0, N, BLOCK_N)``, masks on both axes);
      never assume ``C <= BLOCK_C`` or ``N <= BLOCK_N``. Heads loop over their hidden size in blocks as well.
    * Reductions: accumulate in tiles and ``tl.sum`` once at the end, in a fixed order (deterministic). No atomics.
      A value one phase needs from another phase's reduction goes through ``scratch`` with a
      ``tl.debug_barrier()`` between the phases (one program: the barrier makes the stores visible).
    * Arithmetic in ``acc``: load parameters with ``.to(acc)``; store gradients with
      ``.to(out_ptr.dtype.element_ty)`` (:func:`small.store_cast`) into tensors from :func:`passes.grad_like` (the
      parameter's dtype and shape). Absent optional tensors: pass :func:`passes.optional`'s placeholder and a
      ``HAS_...`` constexpr (:func:`passes.affine_meta` for the weight and bias).
    * Python floats reach kernels as float32; ints as int32/int64. Every shape-derived choice is made on the host
      from shapes; nothing reads a tensor value on the host; no data-dependent Python branches.
    * One value per (n, c) (``L == 1``): leave IN out as :mod:`dynnorm.functional` does (a ``SINGLE`` constexpr).
    * Non-finite inputs or parameters propagate (NaN out); nothing raises on values.

Tests
    ``tests/test_triton_kernels.py`` runs every function on CPU tensors under the interpreter (in-process when
    triton is not yet imported, else by re-running itself in a subprocess with ``TRITON_INTERPRET=1``) against
    :mod:`dynnorm.functional` (float64 autograd as the oracle); a layer is added as one entry of its ``LAYERS``
    table. :func:`record_launches` counts launches and allocated bytes per call.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from .runtime import available, interpreting, record_launches

__all__ = ["available", "interpreting", "record_launches"]

#: public function name -> module that defines it
_LAYER_MODULES = {
    "switch_norm": "switch", "switch_norm_backward": "switch",
    "sparse_switch_norm": "switch", "sparse_switch_norm_backward": "switch",
    "exemplar_norm": "exemplar", "exemplar_norm_backward": "exemplar",
    "dynamic_affine_norm": "dynamic_affine", "dynamic_affine_norm_backward": "dynamic_affine",
    "dynamic_norm": "dynamic", "dynamic_norm_backward": "dynamic",
    "associate_norm": "associate", "associate_norm_backward": "associate",
}

__all__ += list(_LAYER_MODULES)


def __getattr__(name: str) -> Any:
    """The layer functions, importing triton and the defining module on first use."""
    module = _LAYER_MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)

