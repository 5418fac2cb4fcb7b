"""Switchable Normalization (SN).

Luo, Ren, Peng, "Differentiable Learning-to-Normalize via Switchable Normalization", ICLR 2019,
https://arxiv.org/abs/1806.10779.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from . import functional as F
from ._base import DynNormBase

NORMALIZERS = ("IN", "LN", "BN")


class _SwitchNorm(DynNormBase):
    r"""Switchable Normalization: IN, LN and BN statistics mixed by two learned softmaxes.

    .. math::
        y = \gamma \frac{x - \sum_k w_k \mu_k}{\sqrt{\sum_k w'_k \sigma^2_k + \epsilon}} + \beta,
        \quad w = \mathrm{softmax}(\lambda),\ w' = \mathrm{softmax}(\lambda'),\ k \in \{IN, LN, BN\}

    All statistics come from one pass over the input: the per-(n, c) moments (IN); LN and BN moments are
    pooled from them over channels and over the batch (law of total variance, so no negative variance).
    Variances are biased everywhere (the original code used an unbiased IN variance, which makes its LN/BN
    variances differ from the population ones by a factor ``HW/(HW-1)`` on the within-channel part, and gives
    NaN for ``N x C x 1 x 1`` inputs). In evaluation IN and LN still come from the sample; only the BN term
    uses the running statistics.

    Confirmed from the paper and the authors' code: the mixture, the one-pass statistics, the two 3-way
    softmaxes initialised uniform (``mean_weight = var_weight = 1``), ``using_bn=False`` for 1 image/GPU.
    Choices of this implementation: torch's meaning of ``momentum`` (the original SN ``momentum=0.997`` decay
    is ``momentum=0.003`` here), running variance initialised to 1 and stored unbiased (as ``nn.BatchNorm``),
    and when there is a single value per (n, c) (``(N, C)`` or ``N x C x 1 x 1`` inputs) IN is undefined and
    left out of the mixture (its logit is masked). Zero-init of the last norm of a residual block
    (``last_gamma`` in the original code) belongs to the model (``zero_init_residual``), not to the layer.

    Args:
        num_features: number of channels ``C`` of an ``(N, C, *)`` input.
        eps: added to the mixed variance. Default: 1e-5
        momentum: weight of the current batch in the running statistics; ``None`` for a cumulative average.
            Default: 0.1
        affine: learn ``weight`` and ``bias``. Default: True
        track_running_stats: keep running BN statistics for evaluation; if False the BN term uses batch
            statistics in evaluation too. Default: True
        using_bn: include the BN term. ``False`` gives a batch-independent IN/LN mixture (2 logits, no
            running statistics), the setting for 1 image per device. Default: True
        sync_batch_stats: all-reduce the BN statistics across ``process_group``. Default: False
        process_group: the group to synchronize over (``None``: the default group).

    Attributes:
        mean_weight, var_weight: mixture logits ``(3,)`` in the order (IN, LN, BN); ``(2,)`` (IN, LN) with
            ``using_bn=False``.

    Shape:
        - Input: ``(N, C, *)`` (rank fixed by the subclass)
        - Output: same shape and dtype as the input

    Examples::

        >>> layer = SwitchNorm2d(64)
        >>> layer(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        using_bn: bool = True,
        sync_batch_stats: bool | None = None,
        process_group: object | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.using_bn = using_bn
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats and using_bn, sync_batch_stats,
            process_group, device, dtype,
        )
        self.normalizer_names = NORMALIZERS if using_bn else NORMALIZERS[:2]
        k = len(self.normalizer_names)
        self.mean_weight = nn.Parameter(torch.empty(k, device=device, dtype=dtype))
        self.var_weight = nn.Parameter(torch.empty(k, device=device, dtype=dtype))
        self.reset_parameters()

    @property
    def uses_batch_statistics(self) -> bool:  # type: ignore[override]
        return self.using_bn

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.ones_(self.mean_weight)
        nn.init.ones_(self.var_weight)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.using_bn else ", using_bn=False")

    def _mixture(self, logits: Tensor, single_value: bool) -> Tensor:
        """Mixture weights ``(K,)`` in float32 from the logits."""
        logits = logits.to(F.accumulation_dtype(logits.dtype))
        if single_value:
            logits = F.mask_instance_logit(logits)
        return torch.softmax(logits, dim=0)

    def mixture_weights(self, single_value: bool = False) -> tuple[Tensor, Tensor]:
        """The mean and variance mixture weights, each ``(K,)``, order ``normalizer_names``."""
        return self._mixture(self.mean_weight, single_value), self._mixture(self.var_weight, single_value)

    def importance_ratios(self) -> dict[str, dict[str, float]]:
        """The learned ratios as ``{'mean': {'IN': .., 'LN': .., 'BN': ..}, 'var': {...}}`` (for logging)."""
        mean_w, var_w = (w.detach().cpu().tolist() for w in self.mixture_weights())
        return {
            "mean": dict(zip(self.normalizer_names, mean_w)),
            "var": dict(zip(self.normalizer_names, var_w)),
        }

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if self._is_empty_local_batch(x):
            return self._empty_output(x)
        mean_in, var_in, x = F.normalization_moments(x)
        mean_ln, var_ln = F.pooled_moments(mean_in, var_in, dim=1)
        means, variances = [mean_in, mean_ln], [var_in, var_ln]
        if self.using_bn:
            mean_bn, var_bn = self._batch_statistics(x, mean_in, var_in)
            means.append(mean_bn)
            variances.append(var_bn)
        mean_w, var_w = self.mixture_weights(single_value=F.spatial_size(x) == 1)
        mean = sum(w * m for w, m in zip(mean_w.to(mean_in.dtype), means))
        var = sum(w * v for w, v in zip(var_w.to(var_in.dtype), variances))
        scale, shift = F.standardize_coefficients(mean, var, self.weight, self.bias, self.eps)
        return F.scale_shift(x, scale, shift)


class SwitchNorm1d(_SwitchNorm):
    """Switchable Normalization over ``(N, C)`` or ``(N, C, L)`` inputs; see :class:`SwitchNorm2d`.

    For ``(N, C)`` inputs IN is left out (one value per (n, c)), which gives the LN/BN mixture of the
    original ``SwitchNorm1d``.
    """

    input_ranks = (2, 3)


class SwitchNorm2d(_SwitchNorm):
    __doc__ = _SwitchNorm.__doc__
    input_ranks = (4,)


class SwitchNorm3d(_SwitchNorm):
    """Switchable Normalization over ``(N, C, D, H, W)`` inputs; see :class:`SwitchNorm2d`."""

    input_ranks = (5,)


class SyncSwitchNorm2d(SwitchNorm2d):
    """:class:`SwitchNorm2d` whose BN statistics are all-reduced across processes (local when not distributed)."""

    sync_batch_stats_default: ClassVar[bool] = True
