"""Associate Normalization (AssocNorm).

"Associate Normalization", ICLR 2019 submission (anonymous; equations 1-6). Its published successor is
ILM Norm (Jia, Chen, Chen, CVPR 2019).
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor, nn

from ._base import DynNormBase, positive_int

MAX_DEFAULT_GROUPS = 32


def default_num_groups(num_channels: int, at_most: int = MAX_DEFAULT_GROUPS) -> int:
    """The largest divisor of ``num_channels`` that is at most ``at_most`` (32: the GN and AssocNorm papers'
    setting when it divides ``C``; e.g. 16 for 16 channels, 24 for 24, 32 for 96, 24 for 144)."""
    return max(g for g in range(1, min(num_channels, at_most) + 1) if num_channels % g == 0)


class AssociateNorm2d(DynNormBase):
    r"""Associate Normalization: GroupNorm standardization with a rescaling predicted by an auto-encoder.

    With ``G`` groups, per sample (equations 3-6 of the paper):

    .. math::
        \hat x = \frac{x - \mu_{GN}}{\sqrt{\sigma^2_{GN} + \epsilon}}, \quad
        E_\mu = \mathrm{ReLU}(W_1 \mu), \ E_\sigma = \mathrm{ReLU}(W_1 \sigma^2), \\
        \omega = \mathrm{sigmoid}(W_2 E_\mu) + B_\omega, \quad
        \beta = \tanh(W_3 E_\sigma) + B_\beta, \quad y = \omega \odot \hat x + \beta

    ``mu, sigma^2 in R^G`` are the group means and (biased) variances of the input (the key features,
    same partition as the standardization); ``W_1 in R^{M x G}`` is the shared encoder,
    ``W_2, W_3 in R^{G x M}`` the decoders (no biases), ``M = max(G // 16, 2)``. The decoder outputs are per
    group and broadcast to its channels; ``B_omega``/``B_beta`` are per channel and stored as ``weight`` /
    ``bias`` (so BN checkpoints' affine parameters load into them). No batch statistics: identical in
    training and evaluation, independent of the batch size.

    .. note::
        Confirmed from the paper: the equations (scale from the mean path through a sigmoid, shift from the
        variance path through tanh, biases added after the activations), 32 groups, ``W ~ N(0, 1)``,
        ``B_omega = 1``, ``B_beta = 0`` (so the scale starts in (1, 2), about 1.5), ``M = G / 16`` (it reproduces
        the parameter counts of the paper's Table 4). ILM Norm, the published successor (Jia, Chen, Chen,
        CVPR 2019), swaps the two paths (variance -> scale, mean -> shift): ``scale_from='var'`` selects that.
        Choice here: layers whose width 32 does not divide get the largest divisor of ``C`` up to 32
        (:func:`default_num_groups`), so ``AssociateNorm2d(C)`` fits any network (MobileNetV2's 16- and 24-channel
        layers included).

    Args:
        num_features: number of channels ``C``.
        num_groups: groups ``G`` of the standardization and of the key features; must divide ``C``.
            Default: the largest divisor of ``C`` that is at most 32
        eps: added to the group variance. Default: 1e-5
        scale_from: ``'mean'`` (the paper) or ``'var'`` (ILM Norm): which key feature predicts the scale.
            Default: ``'mean'``

    Attributes:
        encoder_weight, scale_decoder_weight, shift_decoder_weight: ``W_1``, ``W_2``, ``W_3`` (plain parameters,
            not submodules).

    Shape:
        - Input: ``(N, C, H, W)``; Output: same shape and dtype.

    Examples::

        >>> layer = AssociateNorm2d(24)
        >>> layer.num_groups
        24
        >>> layer(torch.randn(2, 24, 8, 8)).shape
        torch.Size([2, 24, 8, 8])
    """

    def __init__(self, num_features: int, num_groups: int | None = None, eps: float = 1e-5, *,
                 scale_from: str = "mean", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps=eps, momentum=None, affine=True, track_running_stats=False,
                         batch_statistics=False, device=device, dtype=dtype)
        num_groups = default_num_groups(self.num_features) if num_groups is None else positive_int(
            "num_groups", num_groups)
        if self.num_features % num_groups:
            raise ValueError(f"num_features ({self.num_features}) must be divisible by num_groups ({num_groups!r})")
        if scale_from not in ("mean", "var"):
            raise ValueError(f"scale_from must be 'mean' or 'var', got {scale_from!r}")
        self.num_groups = num_groups
        self.scale_from = scale_from
        self.embedding_size = max(num_groups // 16, 2)
        factory = {"device": device, "dtype": dtype}
        self.encoder_weight = nn.Parameter(torch.empty(self.embedding_size, num_groups, **factory))
        self.scale_decoder_weight = nn.Parameter(torch.empty(num_groups, self.embedding_size, **factory))
        self.shift_decoder_weight = nn.Parameter(torch.empty(num_groups, self.embedding_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for weight in (self.encoder_weight, self.scale_decoder_weight, self.shift_decoder_weight):
            nn.init.normal_(weight)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}, scale_from={self.scale_from!r}"

    def _normalize(self, ops: ModuleType, x: Tensor, synchronized: bool) -> Tensor:
        return ops.associate_norm(
            x, weight=self.weight, bias=self.bias, encoder_weight=self.encoder_weight,
            scale_decoder_weight=self.scale_decoder_weight, shift_decoder_weight=self.shift_decoder_weight,
            num_groups=self.num_groups, eps=self.eps, scale_from_mean=self.scale_from == "mean")
