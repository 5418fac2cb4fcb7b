"""Dynamic Normalization (DN): learned estimation of the normalization statistics.

Luo, Peng, Ren, Zhang, Wang, Li, "Differentiable Dynamic Normalization for Learning Deep Representation",
ICML 2019 (PMLR 97:4203-4211). Only the abstract is available to this project and no official code exists;
the layer below implements a documented reconstruction (see :class:`DynamicNorm2d`).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from . import functional as F
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


def kronecker_pool(values: Tensor, gates: Tensor, factors: tuple[int, ...]) -> Tensor:
    """Apply ``A = U_1 kron ... kron U_K`` to the channel axis, ``U_i = g_i * mean_i + (1 - g_i) * I``.

    ``values`` is ``(N, C)`` with ``C = prod(factors)``, ``gates`` ``(K,)`` in [0, 1]. Each ``U_i`` is
    row-stochastic, so ``A`` is an averaging matrix; it is never materialised (cost ``O(C K)``).
    """
    n = values.shape[0]
    pooled = values.reshape((n,) + factors)
    for axis, gate in enumerate(gates, start=1):
        pooled = torch.lerp(pooled, pooled.mean(axis, keepdim=True).expand_as(pooled), gate)
    return pooled.reshape(values.shape)


class DynamicNorm2d(DynNormBase):
    r"""Dynamic Normalization: statistics pooled by a learned, Kronecker-factored averaging matrix.

    Every normalizer's statistics are an averaging ("pooling") matrix applied to the per-(n, c) moments
    ``m1 = E_hw[x]``, ``m2 = E_hw[x^2]``: ``mu = A m1``, ``sigma^2 = A m2 - mu^2``. IN, LN, GN and BN are
    particular matrices. DN learns the matrix:

    .. math::
        A = B \otimes (U_1 \otimes \dots \otimes U_K), \quad
        U_i = g_i \tfrac{1}{s_i} J_{s_i} + (1 - g_i) I_{s_i}, \quad
        B = b \tfrac{1}{N} J_N + (1 - b) I_N

    with ``C = r * 2^k`` factored as ``(r, 2, ..., 2)``, gates ``g_i = sigmoid(theta_i)`` and
    ``b = sigmoid(theta_b)``. Gates at 0 give IN, all channel gates at 1 give LN, the last ``j`` channel gates
    at 1 give GN with groups of ``2^j`` contiguous channels, and ``b = 1`` with channel gates at 0 gives BN.
    The mean and the variance have their own matrices (``mean_*`` and ``var_*`` logits, as SN's two
    softmaxes); the variance is the variance under its pooling matrix,
    ``A'(var_in) + A'(mu_in^2) - (A' mu_in)^2``, clamped at 0.

    **Confirmed from the paper (abstract):** DN learns how the statistics are estimated, is differentiable
    end to end with few parameters, and uses a matrix formulation covering many normalizers. **Not
    confirmed (a reconstruction):** the Kronecker factorisation with soft sigmoid gates (the device of
    the same group's DGConv), the batch factor, the separate mean/variance matrices, the initialisation
    (all logits 0: every factor halfway between identity and averaging) and evaluation with running BN
    statistics for the batch-pooled part. Treat results as those of this design, not of the paper.

    Args: as :class:`SwitchNorm2d` (without ``using_bn``).

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
        sync_batch_stats: bool | None = None,
        process_group: object | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, sync_batch_stats, process_group, device, dtype
        )
        self.factors = channel_factors(num_features)
        factory = {"device": device, "dtype": dtype}
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
        acc = F.accumulation_dtype(self.mean_gate_logits.dtype)
        return {
            "mean_channel": torch.sigmoid(self.mean_gate_logits.to(acc)),
            "var_channel": torch.sigmoid(self.var_gate_logits.to(acc)),
            "mean_batch": torch.sigmoid(self.mean_batch_logit.to(acc)),
            "var_batch": torch.sigmoid(self.var_batch_logit.to(acc)),
        }

    def importance_ratios(self) -> dict[str, dict[str, float]]:
        """Gates for logging: ``{'mean': {'batch': b, 'channel0': g_0, ...}, 'var': {...}}``."""
        gates = {k: v.detach().cpu() for k, v in self.gates().items()}
        return {
            kind: {"batch": float(gates[f"{kind}_batch"]),
                   **{f"channel{i}": float(g) for i, g in enumerate(gates[f"{kind}_channel"])}}
            for kind in ("mean", "var")
        }

    def _pool(self, values: Tensor, batch_values: Tensor, batch_gate: Tensor, channel_gates: Tensor) -> Tensor:
        return kronecker_pool(torch.lerp(values, batch_values.expand_as(values), batch_gate), channel_gates, self.factors)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if self._is_empty_local_batch(x):
            return self._empty_output(x)
        mean_in, var_in, x = F.normalization_moments(x)
        mean_bn, var_bn = self._batch_statistics(x, mean_in, var_in)
        gates = {k: v.to(mean_in.dtype) for k, v in self.gates().items()}
        mean = self._pool(mean_in, mean_bn, gates["mean_batch"], gates["mean_channel"])
        # Variance under the variance's own pooling matrix A': A'(var) + A'(m1^2) - (A' m1)^2.
        pooled_mean = self._pool(mean_in, mean_bn, gates["var_batch"], gates["var_channel"])
        pooled_second = self._pool(var_in + mean_in.square(), var_bn + mean_bn.square(), gates["var_batch"], gates["var_channel"])
        var = (pooled_second - pooled_mean.square()).clamp_min(0)
        scale, shift = F.standardize_coefficients(mean, var, self.weight, self.bias, self.eps)
        return F.scale_shift(x, scale, shift)


class SyncDynamicNorm2d(DynamicNorm2d):
    """:class:`DynamicNorm2d` with BN statistics all-reduced across processes."""

    sync_batch_stats_default: ClassVar[bool] = True
