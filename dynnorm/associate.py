"""Associate Normalization (AssocNorm).

"Associate Normalization", ICLR 2019 submission (anonymous; equations 1-6). Its published successor is
ILM Norm (Jia, Chen, Chen, CVPR 2019).
"""
from __future__ import annotations

import math
from types import ModuleType

import torch
from torch import Tensor, nn

from ._base import DynNormBase, positive_int
from .functional import group_moments, instance_moments

MAX_DEFAULT_GROUPS = 32
#: The initialisations of :class:`AssociateNorm2d` (see its note).
INITS = ("gn", "paper")
SIGMOID_AT_ZERO = 0.5


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
        **Confirmed from the paper:** the equations (scale from the mean path through a sigmoid, shift from the
        variance path through tanh, biases added after the activations), 32 groups, ``M = G / 16`` (it
        reproduces the parameter counts of the paper's Table 4), and the starting rescaling: "we initial all
        rescaling weight omega by 1 and bias beta by 0" (section 4). The same sentence draws "all
        parameters" from ``N(0, 1)``, which cannot give ``omega = 1``: with random decoders ``omega`` varies
        around ``sigmoid(.) + B_omega``. ILM Norm, the published successor (Jia, Chen, Chen, CVPR 2019), swaps
        the two paths (variance -> scale, mean -> shift): ``scale_from='var'`` selects that.

        **This implementation's choice** (``init='gn'``, the default): the layer starts as the normalizer it
        generalizes, GroupNorm with the identity rescaling ``omega = 1``, ``beta = 0``: the decoders ``W_2``,
        ``W_3`` start at zero (``sigmoid(0) = 1/2``, ``tanh(0) = 0``), ``B_omega = 1/2``, ``B_beta = 0``, and
        the encoder ``W_1`` is drawn as ``nn.Linear`` draws its weight (uniform in ``+-1/sqrt(G)``, as ILM
        Norm's code does). With zero decoders the layer computes exactly GroupNorm with weight
        ``B_omega + 1/2`` and bias ``B_beta``; the decoders receive gradients from the first step. The
        literal reading (``init='paper'``: ``W ~ N(0, 1)``, ``B_omega = 1``, ``B_beta = 0``, so the scale
        starts around 1.5) ends mostly saturated: in a ResNet-8 on Fashion-MNIST (batch 32, 2 epochs) the key
        group variances grew from about 2 to 35-314 and the tanh shift ended saturated for every sample in
        6 of 9 layers. With ``init='gn'`` the key variances stayed about 1-4 there, and over batch sizes 1-32
        no sigmoid output and 0-3% of the tanh outputs ended saturated (56% in the worst layer of one run).
        Either way about half of the encoder's ReLU outputs are 0 after training (``M = 2`` units per path; a
        unit that is 0 for every input gets no gradient), so part of the association stays off
        (:func:`dynnorm.diagnostics.associate_norm_saturation`). ``init='paper'`` is kept to reproduce results
        obtained with it. Choice too: layers whose width 32 does not divide get the largest divisor of ``C``
        up to 32 (:func:`default_num_groups`), so ``AssociateNorm2d(C)`` fits any network (MobileNetV2's 16-
        and 24-channel layers included).

    Args:
        num_features: number of channels ``C``.
        num_groups: groups ``G`` of the standardization and of the key features; must divide ``C``.
            Default: the largest divisor of ``C`` that is at most 32
        eps: added to the group variance. Default: 1e-5
        scale_from: ``'mean'`` (the paper) or ``'var'`` (ILM Norm): which key feature predicts the scale.
            Default: ``'mean'``
        init: ``'gn'`` (start as GroupNorm with ``omega = 1``, ``beta = 0``) or ``'paper'`` (every
            auto-encoder weight from ``N(0, 1)``, ``B_omega = 1``, ``B_beta = 0``; this layer's earlier
            initialisation, for reproducing results obtained with it). Default: ``'gn'``

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
        >>> x = torch.randn(2, 24, 8, 8)
        >>> torch.allclose(layer(x), torch.nn.functional.group_norm(x, 24), atol=1e-6)  # a new layer is GN
        True
    """

    def __init__(self, num_features: int, num_groups: int | None = None, eps: float = 1e-5, *,
                 scale_from: str = "mean", init: str = "gn", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps=eps, momentum=None, affine=True, track_running_stats=False,
                         batch_statistics=False, device=device, dtype=dtype)
        num_groups = default_num_groups(self.num_features) if num_groups is None else positive_int(
            "num_groups", num_groups)
        if self.num_features % num_groups:
            raise ValueError(f"num_features ({self.num_features}) must be divisible by num_groups ({num_groups!r})")
        if scale_from not in ("mean", "var"):
            raise ValueError(f"scale_from must be 'mean' or 'var', got {scale_from!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}, got {init!r}")
        self.num_groups = num_groups
        self.scale_from = scale_from
        self.init = init
        self.embedding_size = max(num_groups // 16, 2)
        factory = {"device": device, "dtype": dtype}
        self.encoder_weight = nn.Parameter(torch.empty(self.embedding_size, num_groups, **factory))
        self.scale_decoder_weight = nn.Parameter(torch.empty(num_groups, self.embedding_size, **factory))
        self.shift_decoder_weight = nn.Parameter(torch.empty(num_groups, self.embedding_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``init='gn'``: encoder as ``nn.Linear``, decoders 0, ``B_omega = 1/2``, ``B_beta = 0`` (GroupNorm with
        ``omega = 1``, ``beta = 0``); ``init='paper'``: every auto-encoder weight ``N(0, 1)``, ``B_omega = 1``,
        ``B_beta = 0``."""
        super().reset_parameters()
        if self.init == "paper":
            for weight in (self.encoder_weight, self.scale_decoder_weight, self.shift_decoder_weight):
                nn.init.normal_(weight)
            return
        bound = 1 / math.sqrt(self.num_groups)
        nn.init.uniform_(self.encoder_weight, -bound, bound)
        nn.init.zeros_(self.scale_decoder_weight)
        nn.init.zeros_(self.shift_decoder_weight)
        nn.init.constant_(self.weight, 1 - SIGMOID_AT_ZERO)

    def _decoders_are_zero(self) -> bool:
        return not (self.scale_decoder_weight.any() or self.shift_decoder_weight.any())

    @torch.no_grad()
    def load_torch_state(self, source: nn.Module) -> None:
        """Take over a torch norm layer's ``weight``/``bias`` as the rescaling it starts with: with zero decoders
        ``omega = 1/2 + B_omega``, so ``B_omega = weight - 1/2`` and the layer computes exactly the GroupNorm it
        replaces (a BatchNorm's affine parameters keep their meaning the same way)."""
        super().load_torch_state(source)
        if self._decoders_are_zero() and getattr(source, "weight", None) is not None:
            self.weight.sub_(SIGMOID_AT_ZERO)

    def torch_equivalent(self) -> nn.Module | None:
        """``nn.GroupNorm`` with weight ``B_omega + 1/2`` and bias ``B_beta`` while both decoders are zero (a new
        layer); else ``None``."""
        if not self._decoders_are_zero():
            return None
        plain = nn.GroupNorm(self.num_groups, self.num_features, self.eps, device=self.weight.device,
                             dtype=self.weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(self.weight + SIGMOID_AT_ZERO)
            plain.bias.copy_(self.bias)
        return plain.train(self.training)

    @torch.no_grad()
    def autoencoder_activations(self, x: Tensor) -> dict[str, Tensor]:
        """The auto-encoder's activations for input ``x`` ``(N, C, H, W)``, in the statistics' dtype:
        ``scale_embedding``/``shift_embedding`` ``(N, M)`` (the ReLU outputs ``E`` of the paths that predict the
        scale and the shift), ``scale_decoded`` ``(N, G)`` (sigmoid outputs, before ``B_omega``) and
        ``shift_decoded`` ``(N, G)`` (tanh outputs, before ``B_beta``). For diagnostics; no gradients."""
        mean, var = instance_moments(x)
        group_mean, group_var = group_moments(mean, var, self.num_groups)
        scale_key, shift_key = (group_mean, group_var) if self.scale_from == "mean" else (group_var, group_mean)
        encoder = self.encoder_weight.to(mean.dtype)
        scale_embedding, shift_embedding = torch.relu(scale_key @ encoder.t()), torch.relu(shift_key @ encoder.t())
        return {
            "scale_embedding": scale_embedding, "shift_embedding": shift_embedding,
            "scale_decoded": torch.sigmoid(scale_embedding @ self.scale_decoder_weight.to(mean.dtype).t()),
            "shift_decoded": torch.tanh(shift_embedding @ self.shift_decoder_weight.to(mean.dtype).t()),
        }

    def extra_repr(self) -> str:
        return (f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}, scale_from={self.scale_from!r}, "
                f"init={self.init!r}")

    def _normalize(self, ops: ModuleType, x: Tensor, synchronized: bool) -> Tensor:
        return ops.associate_norm(
            x, weight=self.weight, bias=self.bias, encoder_weight=self.encoder_weight,
            scale_decoder_weight=self.scale_decoder_weight, shift_decoder_weight=self.shift_decoder_weight,
            num_groups=self.num_groups, eps=self.eps, scale_from_mean=self.scale_from == "mean")
