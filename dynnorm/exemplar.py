"""Exemplar Normalization (EN): per-sample importance ratios over BN, IN and LN.

Zhang, Peng, Wu, Li, Luo, "Exemplar Normalization for Learning Deep Representation", CVPR 2020,
https://arxiv.org/abs/2003.08761.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from . import functional as F
from ._base import DynNormBase, head_hidden_size
from .switchable import NORMALIZERS


class ExemplarNorm2d(DynNormBase):
    r"""Exemplar Normalization: a mixture of IN-, LN- and BN-normalized outputs with per-sample ratios.

    .. math::
        y_n = \gamma \odot \sum_k \lambda_{n,k} \frac{x_n - \mu_k}{\sqrt{\sigma^2_k + \epsilon}} + \beta,
        \qquad \lambda_n = \mathrm{softmax}\big(W_2\,\mathrm{ReLU}(W_1 d_n + b_1) + b\big)

    Confirmed from the paper (abstract and figure caption only): per-sample importance ratios over several
    normalizers, one shared ``gamma``/``beta`` after the mixture, a light ratio module with few parameters,
    SN as the static special case. **Interpretation** (the ratio module is not specified in the available
    text): the normalizers are IN, LN and BN (as in SN); the descriptor ``d_n = [mu_IN(n); sigma_IN(n)]``
    (``2C``) comes from the per-(n, c) statistics (pooling normalized maps would be degenerate for IN); a
    two-layer head ``2C -> max(C // reduction, 4) -> 3`` whose last layer starts at zero, plus a static
    bias ``b`` (zero), so a new layer mixes the three outputs uniformly. The mixture of outputs is folded
    into one per-(n, c) scale and shift (no K copies of the input). In evaluation the BN term uses the
    running statistics; the ratios are always computed from the test sample. As in
    :class:`SwitchNorm2d`, IN is left out for inputs with a single value per (n, c). The head's parameters
    are plain tensors (``ratio_*``), not submodules, so init code that zero-fills every submodule's
    ``weight`` (mmdet's ``zero_init_residual``) leaves them alone.

    Args:
        num_features, eps, momentum, affine, track_running_stats, sync_batch_stats, process_group:
            as :class:`SwitchNorm2d`.
        reduction: channel reduction of the ratio head's hidden layer. Default: 16

    Shape:
        - Input: ``(N, C, H, W)``; Output: same shape and dtype.
    """

    normalizer_names = NORMALIZERS

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
        k = len(self.normalizer_names)
        self.ratio_w1 = nn.Parameter(torch.empty(hidden, 2 * num_features, **factory))
        self.ratio_b1 = nn.Parameter(torch.empty(hidden, **factory))
        self.ratio_w2 = nn.Parameter(torch.empty(k, hidden, **factory))
        self.ratio_bias = nn.Parameter(torch.empty(k, **factory))
        self.last_ratios: Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        bound = 1 / math.sqrt(self.ratio_w1.shape[1])
        nn.init.uniform_(self.ratio_w1, -bound, bound)
        nn.init.zeros_(self.ratio_b1)
        nn.init.zeros_(self.ratio_w2)
        nn.init.zeros_(self.ratio_bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", reduction={self.reduction}"

    def ratios(self, instance_mean: Tensor, instance_var: Tensor, single_value: bool = False) -> Tensor:
        """Per-sample ratios ``(N, 3)`` (order IN, LN, BN) from ``(N, C)`` instance moments."""
        acc = instance_mean.dtype
        with F.autocast_disabled(instance_mean):
            descriptor = torch.cat([instance_mean, torch.sqrt(instance_var + self.eps)], dim=1)
            hidden = torch.relu(descriptor @ self.ratio_w1.to(acc).t() + self.ratio_b1.to(acc))
            logits = hidden @ self.ratio_w2.to(acc).t() + self.ratio_bias.to(acc)
        if single_value:
            logits = F.mask_instance_logit(logits)
        return torch.softmax(logits, dim=1)

    def importance_ratios(self) -> dict[str, dict[str, float]]:
        """Batch-averaged ratios of the last training batch, ``{'ratio': {'IN': .., 'LN': .., 'BN': ..}}``."""
        values = [float("nan")] * 3 if self.last_ratios is None else self.last_ratios.tolist()
        return {"ratio": dict(zip(self.normalizer_names, values))}

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if self._is_empty_local_batch(x):
            return self._empty_output(x)
        mean_in, var_in, x = F.normalization_moments(x)
        mean_ln, var_ln = F.pooled_moments(mean_in, var_in, dim=1)
        mean_bn, var_bn = self._batch_statistics(x, mean_in, var_in)
        ratios = self.ratios(mean_in, var_in, single_value=F.spatial_size(x) == 1)
        if self.training:
            self.last_ratios = ratios.detach().mean(0) if ratios.shape[0] else self.last_ratios
        # sum_k r_k (x - mu_k) / s_k = x * sum_k r_k / s_k - sum_k r_k mu_k / s_k, per (n, c)
        scale = torch.zeros_like(mean_in)
        offset = torch.zeros_like(mean_in)
        for k, (mean, var) in enumerate(((mean_in, var_in), (mean_ln, var_ln), (mean_bn, var_bn))):
            inv_std = torch.rsqrt(var + self.eps)
            scale = scale + ratios[:, k : k + 1] * inv_std
            offset = offset + ratios[:, k : k + 1] * mean * inv_std
        if self.weight is not None:
            scale = scale * self.weight.to(scale.dtype)
            offset = offset * self.weight.to(scale.dtype)
        shift = -offset if self.bias is None else self.bias.to(scale.dtype) - offset
        return F.scale_shift(x, scale, shift)


class SyncExemplarNorm2d(ExemplarNorm2d):
    """:class:`ExemplarNorm2d` with BN statistics all-reduced across processes."""

    sync_batch_stats_default: ClassVar[bool] = True
