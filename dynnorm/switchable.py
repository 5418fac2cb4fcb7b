"""Switchable Normalization (SN).

Luo, Ren, Peng, "Differentiable Learning-to-Normalize via Switchable Normalization", ICLR 2019,
https://arxiv.org/abs/1806.10779.
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor, nn

from ._base import DynNormBase
from .functional import accumulation_dtype

NORMALIZERS = ("IN", "LN", "BN")

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


class _SwitchNorm(DynNormBase):
    r"""Switchable Normalization: IN, LN and BN statistics mixed by two learned softmaxes.

    .. math::
        y = \gamma \frac{x - \sum_k w_k \mu_k}{\sqrt{\sum_k w'_k \sigma^2_k + \epsilon}} + \beta,
        \quad w = \mathrm{softmax}(\lambda),\ w' = \mathrm{softmax}(\lambda'),\ k \in \{IN, LN, BN\}

    All statistics come from one pass over the input: the per-(n, c) moments (IN); LN and BN moments are
    pooled from them over channels and over the batch (law of total variance, so no negative variance).
    In evaluation IN and LN still come from the sample; only the BN term uses the running statistics.

    .. note::
        Confirmed from the paper and the authors' code: the mixture, the one-pass statistics, the two 3-way
        softmaxes initialised uniform (``mean_weight = var_weight = 1``), ``using_bn=False`` for 1
        image/GPU. Choices of this implementation: variances are biased everywhere (the original code used
        an unbiased IN variance, which makes its LN/BN variances differ from the population ones by a factor
        ``HW/(HW-1)`` on the within-channel part and gives NaN for ``N x C x 1 x 1`` inputs); torch's meaning
        of ``momentum`` (the original ``momentum=0.997`` decay is ``momentum=0.003`` here); the running
        variance initialised to 1 and stored unbiased (as ``nn.BatchNorm``); when there is a single value per
        (n, c) (``(N, C)`` or ``N x C x 1 x 1`` inputs) IN is undefined and left out of the mixture. Zero-init
        of the last norm of a residual block (``last_gamma`` in the original code) belongs to the model
        (``zero_init_residual``), not to the layer.

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
        sync_batch_stats: synchronize the BN statistics across ``process_group``. Default: False
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

    mixture_parameter_names = ("mean_weight", "var_weight")

    def __init__(self, num_features: int, *args, using_bn: bool = True, **kwargs) -> None:
        super().__init__(num_features, *args, batch_statistics=using_bn, **kwargs)
        self.using_bn = using_bn
        self.normalizer_names = NORMALIZERS if using_bn else NORMALIZERS[:2]
        factory = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.mean_weight = nn.Parameter(torch.empty(len(self.normalizer_names), **factory))
        self.var_weight = nn.Parameter(torch.empty(len(self.normalizer_names), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.ones_(self.mean_weight)
        nn.init.ones_(self.var_weight)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.using_bn else ", using_bn=False")

    def mixture_weights(self, single_value: bool = False) -> tuple[Tensor, Tensor]:
        """The mean and variance mixture weights, each ``(K,)`` in float32 (float64 for a float64 layer), in
        the order ``normalizer_names``; ``single_value`` leaves IN out (inputs with one value per (n, c))."""
        return tuple(self._softmax(logits, single_value) for logits in (self.mean_weight, self.var_weight))

    @staticmethod
    def _softmax(logits: Tensor, single_value: bool) -> Tensor:
        logits = logits.to(accumulation_dtype(logits.dtype))
        if single_value:
            logits = logits.masked_fill(torch.arange(logits.numel(), device=logits.device) == 0, float("-inf"))
        return torch.softmax(logits, dim=0)

    def importance_ratios(self) -> dict[str, dict[str, float]]:
        """The learned ratios as ``{'mean': {'IN': .., 'LN': .., 'BN': ..}, 'var': {...}}`` (for logging)."""
        mean_w, var_w = (w.detach().cpu().tolist() for w in self.mixture_weights())
        return {"mean": dict(zip(self.normalizer_names, mean_w)), "var": dict(zip(self.normalizer_names, var_w))}

    def _normalize(self, ops: ModuleType, x: Tensor, synchronized: bool) -> Tensor:
        return ops.switch_norm(x, weight=self.weight, bias=self.bias, mean_mixture=self.mean_weight,
                               var_mixture=self.var_weight, **self._batch_arguments(synchronized))

    def torch_equivalent(self) -> nn.Module | None:
        """``BatchNorm``, ``InstanceNorm`` or ``GroupNorm(1, C)`` (LN over ``(C, *)`` with a per-channel affine)
        when both mixtures are one-hot on the same normalizer; else ``None``."""
        mean_w, var_w = (w.detach() for w in self.mixture_weights())
        selected = {int(mean_w.argmax()), int(var_w.argmax())}
        if len(selected) != 1 or float(mean_w.max()) < 1 - 1e-6 or float(var_w.max()) < 1 - 1e-6:
            return None
        name = self.normalizer_names[selected.pop()]
        factory = {"device": self.weight.device if self.weight is not None else None}
        dims = max(self.input_ranks) - 2
        if name == "BN":
            plain = _BATCH_NORMS[dims - 1](self.num_features, self.eps, self.momentum, self.affine,
                                           self.track_running_stats, **factory)
        elif name == "IN":
            plain = _INSTANCE_NORMS[dims - 1](self.num_features, self.eps, affine=self.affine, **factory)
        else:
            plain = nn.GroupNorm(1, self.num_features, self.eps, self.affine, **factory)
        return self._with_state(plain)


class SwitchNorm1d(_SwitchNorm, input_ranks=(2, 3)):
    """Switchable Normalization over ``(N, C)`` or ``(N, C, L)`` inputs; see :class:`SwitchNorm2d`.

    For ``(N, C)`` inputs IN is left out (one value per (n, c)), which gives the LN/BN mixture of the
    original ``SwitchNorm1d``.

    Examples::

        >>> SwitchNorm1d(16)(torch.randn(4, 16)).shape
        torch.Size([4, 16])
    """


class SwitchNorm2d(_SwitchNorm):
    __doc__ = _SwitchNorm.__doc__


class SwitchNorm3d(_SwitchNorm, input_ranks=(5,)):
    pass


class SyncSwitchNorm2d(SwitchNorm2d, synchronized=True):
    pass
