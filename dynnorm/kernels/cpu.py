"""The fused CPU operators (``torch.ops.dynnorm.*`` from the compiled ``dynnorm._C``), with the signatures of
:mod:`dynnorm.functional`.

Each layer call is one operator call: the per-(n, c) moments in one pass over the input (corrected two-pass
sums, accumulated in float32/float64), the ``(N, C)`` math, and the normalize in a second pass; backward is
one call too (two passes: the gradient sums, then the input gradient), with closed-form gradients of the
small math. The source is ``dynnorm/csrc``. Double backward (``create_graph=True``) is not supported by
these operators: run such code under ``dynnorm.fast_path(False)``.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor


@functools.cache
def available() -> bool:
    """Whether the compiled operators load (the package was built with them); warns once if not."""
    try:
        from .. import _C  # noqa: F401  (registers torch.ops.dynnorm.*)
    except ImportError as error:
        warnings.warn(f"dynnorm's C++ operators are not built ({error}); the layers run their reference PyTorch "
                      "ops (reinstall with `pip install --no-build-isolation` to build them)", stacklevel=3)
        return False
    return True


def _no_synchronization(batch_moments) -> None:
    if batch_moments is not None:
        raise ValueError("the fused operators compute local batch statistics only")


def switch_norm(x: Tensor, *, weight, bias, mean_mixture, var_mixture, running_mean, running_var,
                num_batches_tracked, training: bool, momentum: float | None, eps: float, mixture_logits: bool = True,
                batch_moments=None) -> Tensor:
    _no_synchronization(batch_moments)
    return torch.ops.dynnorm.switch_norm.default(
        x, weight, bias, mean_mixture, var_mixture, running_mean, running_var, num_batches_tracked, training,
        momentum, eps, mixture_logits)


def sparse_switch_norm(x: Tensor, *, weight, bias, mean_weight, var_weight, radius, mean_fixed, var_fixed,
                       running_mean, running_var, num_batches_tracked, training: bool, momentum: float | None,
                       eps: float, freeze: bool, batch_moments=None) -> Tensor:
    _no_synchronization(batch_moments)
    return torch.ops.dynnorm.sparse_switch_norm.default(
        x, weight, bias, mean_weight, var_weight, radius, mean_fixed, var_fixed, running_mean, running_var,
        num_batches_tracked, training, momentum, eps, freeze)


def exemplar_norm(x: Tensor, *, weight, bias, ratio_w1, ratio_b1, ratio_w2, ratio_b2, running_mean, running_var,
                  num_batches_tracked, training: bool, momentum: float | None, eps: float,
                  batch_moments=None) -> tuple[Tensor, Tensor]:
    _no_synchronization(batch_moments)
    return torch.ops.dynnorm.exemplar_norm.default(
        x, weight, bias, ratio_w1, ratio_b1, ratio_w2, ratio_b2, running_mean, running_var, num_batches_tracked,
        training, momentum, eps)


def dynamic_norm(x: Tensor, *, weight, bias, mean_gate_logits, var_gate_logits, mean_batch_logit, var_batch_logit,
                 factors: Sequence[int], running_mean, running_var, num_batches_tracked, training: bool,
                 momentum: float | None, eps: float, batch_moments=None) -> Tensor:
    _no_synchronization(batch_moments)
    return torch.ops.dynnorm.dynamic_norm.default(
        x, weight, bias, mean_gate_logits, var_gate_logits, mean_batch_logit, var_batch_logit, factors,
        running_mean, running_var, num_batches_tracked, training, momentum, eps)


def dynamic_affine_norm(x: Tensor, *, weight, bias, sc_w1, sc_b1, sc_w2, sc_b2, running_mean, running_var,
                        num_batches_tracked, training: bool, momentum: float | None, eps: float, per_sample: bool,
                        batch_moments=None) -> Tensor:
    _no_synchronization(batch_moments)
    return torch.ops.dynnorm.dynamic_affine_norm.default(
        x, weight, bias, sc_w1, sc_b1, sc_w2, sc_b2, running_mean, running_var, num_batches_tracked, training,
        momentum, eps, per_sample)


def associate_norm(x: Tensor, *, weight, bias, encoder_weight, scale_decoder_weight, shift_decoder_weight,
                   num_groups: int, eps: float, scale_from_mean: bool = True) -> Tensor:
    return torch.ops.dynnorm.associate_norm.default(
        x, weight, bias, encoder_weight, scale_decoder_weight, shift_decoder_weight, num_groups, eps,
        scale_from_mean)
