"""DN-B and DN-C: BatchNorm whose scale and shift are generated from the data statistics.

Liu, Lv, Gao, "Dynamic Normalization", arXiv:2101.06073 (2021). Only the abstract is available to this
project and no official code is known; the scale/shift-generating ("SC") module below is a documented design.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from . import functional as F
from ._base import DynNormBase, head_hidden_size


class _DynamicAffineNorm(DynNormBase):
    r"""BatchNorm standardization with a scale and shift generated from statistics.

    .. math::
        \hat x = \frac{x - \mu_{BN}}{\sqrt{\sigma^2_{BN} + \epsilon}}, \quad
        [\Delta\gamma, \Delta\beta] = \tanh\big(W_2\,\mathrm{ReLU}(W_1 s + b_1) + b_2\big), \quad
        y = (\gamma + \Delta\gamma) \odot \hat x + (\beta + \Delta\beta)

    ``s`` is a statistics vector (``2C``): per sample for DN-B (:class:`DynamicNormB2d`: the mean and
    standard deviation of that sample's standardized map ``x_hat``, i.e. ``(mu_n - mu_BN) / sigma_BN`` and
    ``sigma_n / sigma_BN``, which do not depend on the input's scale), of the batch for DN-C
    (:class:`DynamicNormC2d`: ``[mu_BN; sigma_BN]``, the running statistics in evaluation).
    ``W_1: 2C -> max(C // reduction, 4)``, ``W_2: -> 2C``; ``W_2`` and ``b_2`` start at zero, so a new
    layer (and a BN network converted with :func:`dynnorm.convert`) is exactly BatchNorm. The generated
    changes are bounded to (-1, 1) by the tanh. The SC parameters are plain tensors (``sc_*``), not
    submodules, so init code that zero-fills submodules' ``weight`` leaves them alone.

    Confirmed from the paper (abstract): BN standardization; scale and shift generated from data
    statistics by an "SC module", per sample and channel for DN-B, shared by the batch for DN-C (whose
    batch statistics are ``E[X]``, ``Std[X]``); small extra cost (+0.6% Mult-Adds on MobileNetV2).
    **Interpretation:** the SC module's form (two layers, ReLU, tanh-bounded additive outputs), DN-B's
    scale-invariant per-sample input and the zero initialisation. (Feeding DN-B the raw per-sample
    statistics made the generated affine grow without bound in deep networks, so its input is taken
    relative to the batch statistics.)

    Args:
        num_features, eps, momentum, affine, track_running_stats, sync_batch_stats, process_group:
            as :class:`SwitchNorm2d`.
        reduction: channel reduction of the SC module's hidden layer. Default: 16

    Shape:
        - Input: ``(N, C, H, W)``; Output: same shape and dtype.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        reduction: int = 16,
        sync_batch_stats: bool | None = None,
        process_group: object | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, sync_batch_stats, process_group, device, dtype
        )
        hidden = head_hidden_size(num_features, reduction)
        self.reduction = reduction
        factory = {"device": device, "dtype": dtype}
        self.sc_w1 = nn.Parameter(torch.empty(hidden, 2 * num_features, **factory))
        self.sc_b1 = nn.Parameter(torch.empty(hidden, **factory))
        self.sc_w2 = nn.Parameter(torch.empty(2 * num_features, hidden, **factory))
        self.sc_b2 = nn.Parameter(torch.empty(2 * num_features, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        bound = 1 / math.sqrt(self.sc_w1.shape[1])
        nn.init.uniform_(self.sc_w1, -bound, bound)
        nn.init.zeros_(self.sc_b1)
        nn.init.zeros_(self.sc_w2)
        nn.init.zeros_(self.sc_b2)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", reduction={self.reduction}"

    def generate_affine(self, stats: Tensor) -> tuple[Tensor, Tensor]:
        """``(delta_gamma, delta_beta)``, each ``(M, C)`` in (-1, 1), from the ``(M, 2C)`` statistics vector."""
        acc = stats.dtype
        with F.autocast_disabled(stats):
            hidden = torch.relu(stats @ self.sc_w1.to(acc).t() + self.sc_b1.to(acc))
            delta = torch.tanh(hidden @ self.sc_w2.to(acc).t() + self.sc_b2.to(acc))
        return delta[:, : self.num_features], delta[:, self.num_features :]

    def sc_input(self, mean_in: Tensor, var_in: Tensor, mean_bn: Tensor, var_bn: Tensor) -> Tensor:
        """The SC module's ``(M, 2C)`` input from ``(N, C)`` instance and ``(1, C)`` batch statistics."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if self._is_empty_local_batch(x):
            return self._empty_output(x)
        mean_in, var_in, x = F.normalization_moments(x)
        mean_bn, var_bn = self._batch_statistics(x, mean_in, var_in)
        delta_gamma, delta_beta = self.generate_affine(self.sc_input(mean_in, var_in, mean_bn, var_bn))
        gamma = delta_gamma + (1.0 if self.weight is None else self.weight.to(delta_gamma.dtype))
        beta = delta_beta + (0.0 if self.bias is None else self.bias.to(delta_beta.dtype))
        scale = gamma * torch.rsqrt(var_bn + self.eps)
        shift = beta - mean_bn * scale
        return F.scale_shift(x, scale, shift)


class DynamicNormB2d(_DynamicAffineNorm):
    __doc__ = (
        "DN-B: BatchNorm with a scale and shift generated per sample and channel from that sample's "
        "statistics relative to the batch.\n" + _DynamicAffineNorm.__doc__
    )

    def sc_input(self, mean_in: Tensor, var_in: Tensor, mean_bn: Tensor, var_bn: Tensor) -> Tensor:
        batch_var = var_bn + self.eps
        return torch.cat([(mean_in - mean_bn) * torch.rsqrt(batch_var), torch.sqrt((var_in + self.eps) / batch_var)], 1)


class DynamicNormC2d(_DynamicAffineNorm):
    __doc__ = (
        "DN-C: BatchNorm with a scale and shift generated per batch from the batch statistics "
        "``[mu_BN; sigma_BN]`` (the running statistics in evaluation).\n" + _DynamicAffineNorm.__doc__
    )

    def sc_input(self, mean_in: Tensor, var_in: Tensor, mean_bn: Tensor, var_bn: Tensor) -> Tensor:
        return torch.cat([mean_bn, torch.sqrt(var_bn + self.eps)], 1)


class SyncDynamicNormB2d(DynamicNormB2d):
    """:class:`DynamicNormB2d` with BN statistics all-reduced across processes."""

    sync_batch_stats_default: ClassVar[bool] = True


class SyncDynamicNormC2d(DynamicNormC2d):
    """:class:`DynamicNormC2d` with BN statistics all-reduced across processes."""

    sync_batch_stats_default: ClassVar[bool] = True
