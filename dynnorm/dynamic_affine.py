"""DN-B and DN-C: BatchNorm whose scale and shift are generated from the data statistics.

Liu, Lv, Gao, "Dynamic Normalization", arXiv:2101.06073 (2021). Only the abstract is available to this
project and no official code is known; the scale/shift-generating ("SC") module below is a documented design.
"""
from __future__ import annotations

from types import ModuleType

from torch import Tensor, nn

from ._base import DynNormBase, head_parameters, init_head, positive_int


class _DynamicAffineNorm(DynNormBase):
    r"""BatchNorm standardization with a scale and shift generated from statistics.

    .. math::
        \hat x = \frac{x - \mu_{BN}}{\sqrt{\sigma^2_{BN} + \epsilon}}, \quad
        [\Delta\gamma, \Delta\beta] = \tanh\big(W_2\,\mathrm{ReLU}(W_1 s + b_1) + b_2\big), \quad
        y = (\gamma + \Delta\gamma) \odot \hat x + (\beta + \Delta\beta)

    ``s`` is a statistics vector (``2C``): per sample for DN-B (:class:`DynamicNormB2d`: the mean and
    standard deviation of that sample's standardized map ``x_hat``, i.e. ``(mu_n - mu_BN) / s_BN`` and
    ``s_n / s_BN`` with ``s = sqrt(var + eps)``, which do not depend on the input's scale), of the batch for
    DN-C (:class:`DynamicNormC2d`: ``[mu_BN; s_BN]``, the running statistics in evaluation).
    ``W_1: 2C -> max(C // reduction, 4)``, ``W_2: -> 2C``; ``W_2`` and ``b_2`` start at zero, so a new
    layer (and a BN network converted with :func:`dynnorm.convert`) is exactly BatchNorm. The generated
    changes are bounded to (-1, 1) by the tanh.

    .. note::
        Confirmed from the paper (abstract): BN standardization; scale and shift generated from data
        statistics by an "SC module", per sample and channel for DN-B, shared by the batch for DN-C (whose
        batch statistics are ``E[X]``, ``Std[X]``); small extra cost: +0.6% Mult-Adds on MobileNetV2.
        **Interpretation:** the SC module's form (two layers, ReLU, tanh-bounded additive outputs), DN-B's
        scale-invariant per-sample input (feeding the raw per-sample statistics made the generated affine grow
        without bound in deep networks), the zero initialisation, and the width: ``reduction = 32`` keeps the
        generators of a MobileNetV2 at +0.46% of its multiply-adds at 224x224 (``benchmarks/norm_cost.py``),
        within the stated +0.6% (``reduction = 16`` would be +0.9%).

    Args:
        num_features, eps, momentum, affine, track_running_stats, sync_batch_stats, process_group:
            as :class:`SwitchNorm2d`.
        reduction: channel reduction of the SC module's hidden layer. Default: 32

    Attributes:
        sc_w1, sc_b1, sc_w2, sc_b2: the SC module (plain parameters, not submodules).

    Shape:
        - Input: ``(N, C, H, W)``; Output: same shape and dtype.
    """

    per_sample: bool

    def __init__(self, num_features: int, *args, reduction: int = 32, **kwargs) -> None:
        super().__init__(num_features, *args, batch_statistics=True, **kwargs)
        self.reduction = positive_int("reduction", reduction)
        hidden = max(self.num_features // self.reduction, 4)
        self.sc_w1, self.sc_b1, self.sc_w2, self.sc_b2 = head_parameters(
            2 * self.num_features, hidden, 2 * self.num_features, device=kwargs.get("device"), dtype=kwargs.get("dtype"))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        init_head(self.sc_w1, self.sc_b1, self.sc_w2, self.sc_b2)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", reduction={self.reduction}"

    def _normalize(self, ops: ModuleType, x: Tensor, synchronized: bool) -> Tensor:
        return ops.dynamic_affine_norm(
            x, weight=self.weight, bias=self.bias, sc_w1=self.sc_w1, sc_b1=self.sc_b1, sc_w2=self.sc_w2,
            sc_b2=self.sc_b2, per_sample=self.per_sample, **self._batch_arguments(synchronized))

    def torch_equivalent(self) -> nn.Module | None:
        """``nn.BatchNorm2d`` while the generator's output layer is zero (a new or converted layer), else ``None``."""
        if bool(self.sc_w2.detach().abs().max() > 0) or bool(self.sc_b2.detach().abs().max() > 0):
            return None
        factory = {"device": self.sc_w2.device}
        return self._with_state(nn.BatchNorm2d(self.num_features, self.eps, self.momentum, self.affine,
                                               self.track_running_stats, **factory))


def _variant_doc(summary: str, name: str) -> str:
    return f"""{summary}

    {_DynamicAffineNorm.__doc__}
    Examples::

        >>> {name}(64)(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
"""


class DynamicNormB2d(_DynamicAffineNorm):
    __doc__ = _variant_doc("DN-B: BatchNorm with a scale and shift generated per sample and channel from that "
                           "sample's statistics relative to the batch.", "DynamicNormB2d")
    per_sample = True


class DynamicNormC2d(_DynamicAffineNorm):
    __doc__ = _variant_doc("DN-C: BatchNorm with a scale and shift generated per batch from the batch statistics "
                           "``[mu_BN; sigma_BN]`` (the running statistics in evaluation).", "DynamicNormC2d")
    per_sample = False


class SyncDynamicNormB2d(DynamicNormB2d, synchronized=True):
    pass


class SyncDynamicNormC2d(DynamicNormC2d, synchronized=True):
    pass
