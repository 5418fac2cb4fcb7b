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
        the same group's DGConv), the batch factor, the separate mean/variance matrices, the initialisation
        (all logits 0: every factor halfway between identity and averaging) and evaluation with running BN
        statistics for the batch-pooled part. Treat results as those of this design, not of the paper.

    Args: as :class:`SwitchNorm2d` (without ``using_bn``).

    Shape:
        - Input: ``(N, C, H, W)``; Output: same shape and dtype.

    Examples::

        >>> layer = DynamicNorm2d(64)
        >>> layer(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    mixture_parameter_names = ("mean_gate_logits", "var_gate_logits", "mean_batch_logit", "var_batch_logit")

    def __init__(self, num_features: int, *args, **kwargs) -> None:
        super().__init__(num_features, *args, batch_statistics=True, **kwargs)
        self.factors = channel_factors(self.num_features)
        factory = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.mean_gate_logits = nn.Parameter(torch.empty(len(self.factors), **factory))
        self.var_gate_logits = nn.Parameter(torch.empty(len(self.factors), **factory))
        self.mean_batch_logit = nn.Parameter(torch.empty((), **factory))
        self.var_batch_logit = nn.Parameter(torch.empty((), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for logits in (self.mean_gate_logits, self.var_gate_logits, self.mean_batch_logit, self.var_batch_logit):
            nn.init.zeros_(logits)

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
