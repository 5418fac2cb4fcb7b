"""Associate Normalization (AssocNorm).

"Associate Normalization", ICLR 2019 submission (anonymous; equations 1-6). Its published successor is
ILM Norm (Jia, Chen, Chen, CVPR 2019).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from . import functional as F
from ._base import DynNormBase


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
    ``bias`` (so BN checkpoints' affine parameters load into them).

    Confirmed from the paper: the equations (scale from the mean path through a sigmoid, shift from the
    variance path through tanh, biases added after the activations), 32 groups, ``W ~ N(0, 1)``,
    ``B_omega = 1``, ``B_beta = 0`` (so the scale starts in (1, 2), about 1.5), ``M = G / 16`` (it reproduces
    the parameter counts of the paper's Table 4). ILM Norm swaps the two paths (variance -> scale, mean ->
    shift): ``scale_from='var'`` selects that. No batch statistics: identical in training and evaluation,
    independent of the batch size. The encoder/decoder parameters are plain tensors, not submodules.

    Args:
        num_features: number of channels ``C``; must be divisible by ``num_groups``.
        num_groups: groups ``G`` of the standardization and of the key features. Default: 32
        eps: added to the group variance. Default: 1e-5
        scale_from: ``'mean'`` (the paper) or ``'var'`` (ILM Norm): which key feature predicts the scale.
            Default: ``'mean'``

    Shape:
        - Input: ``(N, C, H, W)``; Output: same shape and dtype.
    """

    uses_batch_statistics: ClassVar[bool] = False

    def __init__(
        self,
        num_features: int,
        num_groups: int = 32,
        eps: float = 1e-5,
        scale_from: str = "mean",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, None, True, False, False, None, device, dtype)
        if not isinstance(num_groups, int) or num_groups <= 0 or num_features % num_groups:
            raise ValueError(f"num_features ({num_features}) must be divisible by num_groups ({num_groups!r})")
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

    def rescaling(self, group_mean: Tensor, group_var: Tensor) -> tuple[Tensor, Tensor]:
        """The decoder outputs ``(sigmoid(W2 E), tanh(W3 E'))``, each ``(N, G)``, before the biases."""
        acc = group_mean.dtype
        scale_key, shift_key = (group_mean, group_var) if self.scale_from == "mean" else (group_var, group_mean)
        encoder = self.encoder_weight.to(acc)
        with F.autocast_disabled(group_mean):
            scale = torch.sigmoid(torch.relu(scale_key @ encoder.t()) @ self.scale_decoder_weight.to(acc).t())
            shift = torch.tanh(torch.relu(shift_key @ encoder.t()) @ self.shift_decoder_weight.to(acc).t())
        return scale, shift

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.shape[0] == 0:
            return self._empty_output(x)
        mean_in, var_in, x = F.normalization_moments(x)
        group_mean, group_var = F.group_moments(mean_in, var_in, self.num_groups)
        omega, beta = self.rescaling(group_mean, group_var)
        per_group = self.num_features // self.num_groups
        omega = omega.repeat_interleave(per_group, dim=1) + self.weight.to(omega.dtype)
        beta = beta.repeat_interleave(per_group, dim=1) + self.bias.to(beta.dtype)
        inv_std = torch.rsqrt(group_var + self.eps).repeat_interleave(per_group, dim=1)
        scale = omega * inv_std
        shift = beta - group_mean.repeat_interleave(per_group, dim=1) * scale
        return F.scale_shift(x, scale, shift)
