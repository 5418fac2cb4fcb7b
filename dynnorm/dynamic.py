"""Dynamic Normalization (DN): learned estimation of the normalization statistics.

Luo, Peng, Ren, Zhang, Wang, Li, "Differentiable Dynamic Normalization for Learning Deep Representation",
ICML 2019 (PMLR 97:4203-4211). Only the abstract is available to this project and no official code exists;
the layer below implements a documented reconstruction (see :class:`DynamicNorm2d`).
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor, nn

from ._base import DynNormBase

#: The starting points of :class:`DynamicNorm2d` (see its note).
INITS = ("bn", "in", "half")
#: ``init='bn'``: the batch logits start at ``+START_LOGIT``, the channel logits at ``-START_LOGIT``;
#: ``init='in'``: every logit at ``-START_LOGIT``.
START_LOGIT = 3.0


def channel_factors(num_channels: int) -> tuple[int, ...]:
    """Factor sizes of ``C = r * 2**k`` (``r`` odd), most significant first: ``(r, 2, ..., 2)``.

    ``r`` is omitted when it is 1; ``C = 1`` has no factors.
    """
    odd, twos = num_channels, 0
    while odd % 2 == 0:
        odd //= 2
        twos += 1
    return ((odd,) if odd > 1 else ()) + (2,) * twos


class DynamicNorm2d(DynNormBase):
    r"""Dynamic Normalization: statistics pooled by a learned, Kronecker-factored averaging matrix.

    Every normalizer's statistics are an averaging ("pooling") matrix applied to the per-(n, c) moments:
    ``mu = A mu_IN`` and ``sigma^2`` the variance of the instance distributions mixed by ``A``. IN, LN, GN
    and BN are particular matrices. DN learns the matrix:

    .. math::
        A = B \otimes (U_1 \otimes \dots \otimes U_K), \quad
        U_i = g_i \tfrac{1}{s_i} J_{s_i} + (1 - g_i) I_{s_i}, \quad
        B = b \tfrac{1}{N} J_N + (1 - b) I_N

    with ``C = r * 2^k`` factored as ``(r, 2, ..., 2)``, gates ``g_i = sigmoid(theta_i)`` and
    ``b = sigmoid(theta_b)``. Gates at 0 give IN, all channel gates at 1 give LN, the last ``j`` channel gates
    at 1 give GN with groups of ``2^j`` contiguous channels, and ``b = 1`` with channel gates at 0 gives BN.
    The mean and the variance have their own matrices (``mean_*`` and ``var_*`` logits, as SN's two
    softmaxes). The variance is computed factor by factor as the variance of a mixture of distributions,
    ``var' = lerp(v, avg v + spread of means, g) + g (1 - g) (m - avg m)^2`` — a sum of non-negative terms,
    equal to ``A' E[x^2] - (A' mu)^2`` but without its cancellation when the input has a large offset.

    .. note::
        **Confirmed from the paper (abstract):** DN learns how the statistics are estimated, is differentiable
        end to end with few parameters, and uses a matrix formulation covering many normalizers. **Not
        confirmed (a reconstruction):** the Kronecker factorisation with soft sigmoid gates (the device of
        the same group's DGConv), the batch factor, the separate mean/variance matrices and evaluation with
        running BN statistics for the batch-pooled part. Treat results as those of this design, not of the
        paper.

        **Starting point (this implementation's choice; the paper's is not known):** ``init='bn'`` (default)
        starts next to BatchNorm, every batch logit at ``+3`` and every channel logit at ``-3``
        (:data:`START_LOGIT`), for the mean and the variance alike: ``b = sigmoid(3) = 0.953``,
        ``g_i = sigmoid(-3) = 0.047``. Each statistic then pools the moments with
        ``A = (b/N J_N + (1 - b) I_N) kron (g/s_1 J + (1 - g) I) kron ...``: 95% batch statistics, 5% the
        sample's own, and each channel factor blends in 4.7% of the average over its factor, so a channel's
        own BN statistic carries ``b * prod_i (1 - g (1 - 1/s_i))`` of the weight (0.865 at 16 channels, 0.825
        at 64). The logits stay finite so that the gates keep gradients (``sigmoid'(3) = 0.045``).
        The gates move little in short training (batch gates 0.95 -> 0.90-0.96 over 500-8,000 steps on
        Fashion-MNIST; :func:`dynnorm.diagnostics.dynamic_norm_mixture`), so the start largely decides the
        normalizer. As for BN, training at one image per device gives the batch gate no gradient (the batch
        and the sample coincide) while evaluation uses the running statistics through it: at batch 1 use
        ``init='in'`` (every logit at ``-3``: next to InstanceNorm, 4.7% batch statistics), this layer's
        counterpart of SN's ``using_bn=False`` (ResNet-8 on Fashion-MNIST at batch 1, 3 seeds: 82.9 +- 0.3%
        against 62.3 +- 3.3% with ``init='bn'`` and GN's 80.9 +- 0.4%). ``init='half'`` (every logit 0: each factor halfway between
        identity and averaging) is this layer's earlier start, kept to reproduce results obtained with it.

    Args: as :class:`SwitchNorm2d` (without ``using_bn``), and
        init: ``'bn'`` (start next to BatchNorm), ``'in'`` (next to InstanceNorm, for one image per device)
            or ``'half'`` (every gate at 1/2); see the note. Default: ``'bn'``

    Shape:
        - Input: ``(N, C, H, W)``; Output: same shape and dtype.

    Examples::

        >>> layer = DynamicNorm2d(64)
        >>> layer(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    mixture_parameter_names = ("mean_gate_logits", "var_gate_logits", "mean_batch_logit", "var_batch_logit")

    def __init__(self, num_features: int, *args, init: str = "bn", **kwargs) -> None:
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}, got {init!r}")
        self.init = init
        super().__init__(num_features, *args, batch_statistics=True, **kwargs)
        self.factors = channel_factors(self.num_features)
        factory = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.mean_gate_logits = nn.Parameter(torch.empty(len(self.factors), **factory))
        self.var_gate_logits = nn.Parameter(torch.empty(len(self.factors), **factory))
        self.mean_batch_logit = nn.Parameter(torch.empty((), **factory))
        self.var_batch_logit = nn.Parameter(torch.empty((), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``init='bn'``: batch logits ``+START_LOGIT``, channel logits ``-START_LOGIT``; ``init='in'``: all
        ``-START_LOGIT``; ``init='half'``: all 0."""
        super().reset_parameters()
        channel = 0.0 if self.init == "half" else -START_LOGIT
        batch = {"bn": START_LOGIT, "in": -START_LOGIT, "half": 0.0}[self.init]
        for logit in (self.mean_batch_logit, self.var_batch_logit):
            nn.init.constant_(logit, batch)
        for logits in (self.mean_gate_logits, self.var_gate_logits):
            nn.init.constant_(logits, channel)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init={self.init!r}"

    def gates(self) -> dict[str, Tensor]:
        """The gate values in [0, 1]: ``mean_channel``/``var_channel`` ``(K,)``, ``mean_batch``/``var_batch`` ``()``."""
        return {
            "mean_channel": torch.sigmoid(self.mean_gate_logits),
            "var_channel": torch.sigmoid(self.var_gate_logits),
            "mean_batch": torch.sigmoid(self.mean_batch_logit),
            "var_batch": torch.sigmoid(self.var_batch_logit),
        }

    def importance_ratios(self) -> dict[str, dict[str, float]]:
        """Gates for logging: ``{'mean': {'batch': b, 'channel0': g_0, ...}, 'var': {...}}``."""
        gates = {k: v.detach().cpu() for k, v in self.gates().items()}
        return {
            kind: {"batch": float(gates[f"{kind}_batch"]),
                   **{f"channel{i}": float(g) for i, g in enumerate(gates[f"{kind}_channel"])}}
            for kind in ("mean", "var")
        }

    def _normalize(self, ops: ModuleType, x: Tensor, synchronized: bool) -> Tensor:
        return ops.dynamic_norm(
            x, weight=self.weight, bias=self.bias, mean_gate_logits=self.mean_gate_logits,
            var_gate_logits=self.var_gate_logits, mean_batch_logit=self.mean_batch_logit,
            var_batch_logit=self.var_batch_logit, factors=self.factors, **self._batch_arguments(synchronized))


class SyncDynamicNorm2d(DynamicNorm2d, synchronized=True):
    pass
