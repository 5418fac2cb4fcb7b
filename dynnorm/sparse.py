"""Sparse Switchable Normalization (SSN): SN with SparsestMax instead of softmax.

Shao, Li, Zhang, Luo, Wang, Li, "SSN: Learning Sparse Switchable Normalization via SparsestMax", CVPR 2019,
https://arxiv.org/abs/1903.03793.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from . import functional as F
from .switchable import _SwitchNorm


def sparsemax(logits: Tensor) -> Tensor:
    """Euclidean projection of a 1-D vector onto the probability simplex (Martins & Astudillo, 2016)."""
    sorted_logits, _ = torch.sort(logits, descending=True)
    ranks = torch.arange(1, logits.numel() + 1, device=logits.device, dtype=logits.dtype)
    cumulative = sorted_logits.cumsum(0) - 1
    support_size = (sorted_logits - cumulative / ranks > 0).sum()
    threshold = cumulative[support_size - 1] / support_size.to(logits.dtype)
    return (logits - threshold).clamp_min(0)


def is_one_hot(p: Tensor, tol: float = 1e-6) -> bool:
    return bool(p.detach().max() >= 1 - tol)


def sparsestmax(logits: Tensor, radius: float) -> Tensor:
    """SparsestMax: sparsemax pushed away from the centre of its face onto a circle of ``radius``.

    ``radius=0`` is plain sparsemax; as the radius grows towards ``sqrt((K-1)/K)`` (the centre-to-vertex
    distance of the simplex) the output becomes one-hot. Each round either returns or removes at least
    one coordinate from the support (projecting the point back with sparsemax, on the smaller face with the
    radius reduced by the distance between the two face centres), so at most ``K`` rounds run.
    """
    if not torch.isfinite(logits).all():
        raise ValueError(f"sparsestmax got non-finite logits {logits.tolist()}")
    p = sparsemax(logits)
    previous_centre = None
    for _ in range(logits.numel()):
        if is_one_hot(p):
            return p
        support = (p > 0).to(p.dtype)
        centre = support / support.sum()
        if previous_centre is not None:
            radius = math.sqrt(max(radius**2 - float((centre - previous_centre).square().sum()), 0.0))
        offset = p - centre
        distance = offset.norm()
        if float(distance.detach()) == 0.0 or float(distance.detach()) >= radius:
            return p
        pushed = centre + radius * offset / distance
        if float(pushed.detach().min()) >= 0:
            return pushed.clamp(0, 1)
        p, previous_centre = sparsemax(pushed), centre
    return p


class _SparseSwitchNorm(_SwitchNorm):
    r"""Sparse Switchable Normalization: SN whose mixtures are SparsestMax of the logits.

    .. math::
        w = \mathrm{sparsestmax}(\lambda, r),\quad w' = \mathrm{sparsestmax}(\lambda', r)

    The radius ``r`` grows during training (the authors use ``r = iteration / total_iterations``; call
    :func:`set_sparsestmax_radius` on the model every step). When a mixture becomes one-hot it is frozen:
    the logits are overwritten with the one-hot vector, ``mean_fixed``/``var_fixed`` are set, and the
    logits no longer receive gradients. A layer whose two mixtures froze on the same normalizer is that
    torch layer (:func:`dynnorm.revert`). Statistics, buffers and arguments as :class:`SwitchNorm2d`.

    Confirmed from the authors' code: SparsestMax, the linear radius schedule, freezing once one-hot.
    Choices here: for inputs with a single value per (n, c) the IN weight is dropped and the rest
    renormalized (an error if IN alone was selected); the authors' optimizer treatment of the logits (lr/10, no weight decay,
    gradient clipping) is left to the training code (:func:`dynnorm.param_groups`).

    Shape:
        - Input: ``(N, C, *)`` (rank fixed by the subclass); Output: same shape and dtype.
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
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, using_bn, sync_batch_stats, process_group,
            device, dtype,
        )
        self.register_buffer("radius", torch.zeros((), device=device, dtype=dtype))
        self.register_buffer("mean_fixed", torch.zeros((), dtype=torch.bool, device=device))
        self.register_buffer("var_fixed", torch.zeros((), dtype=torch.bool, device=device))

    def _select(self, logits: nn.Parameter, fixed: Tensor) -> Tensor:
        acc = F.accumulation_dtype(logits.dtype)
        if bool(fixed):
            return logits.detach().to(acc)
        weights = sparsestmax(logits.to(acc), float(self.radius))
        if self.training and is_one_hot(weights):
            with torch.no_grad():
                logits.copy_(torch.nn.functional.one_hot(weights.argmax(), logits.numel()).to(logits.dtype))
                fixed.fill_(True)
            return logits.detach().to(acc)
        return weights

    def mixture_weights(self, single_value: bool = False) -> tuple[Tensor, Tensor]:
        weights = self._select(self.mean_weight, self.mean_fixed), self._select(self.var_weight, self.var_fixed)
        if single_value:
            weights = tuple(self._without_instance_term(w) for w in weights)
        return weights

    def _without_instance_term(self, weights: Tensor) -> Tensor:
        """Renormalize a mixture without IN (undefined for one value per (n, c))."""
        kept = weights.masked_fill(torch.arange(weights.numel(), device=weights.device) == 0, 0.0)
        total = kept.sum()
        if float(total.detach()) == 0.0:
            raise ValueError(
                f"{type(self).__name__} selected IN only, which is undefined for inputs with one value per "
                "(sample, channel)"
            )
        return kept / total


class SparseSwitchNorm1d(_SparseSwitchNorm):
    """Sparse Switchable Normalization over ``(N, C, L)`` inputs; see :class:`SparseSwitchNorm2d`."""

    input_ranks = (3,)


class SparseSwitchNorm2d(_SparseSwitchNorm):
    __doc__ = _SparseSwitchNorm.__doc__
    input_ranks = (4,)


class SparseSwitchNorm3d(_SparseSwitchNorm):
    """Sparse Switchable Normalization over ``(N, C, D, H, W)`` inputs; see :class:`SparseSwitchNorm2d`."""

    input_ranks = (5,)


class SyncSparseSwitchNorm2d(SparseSwitchNorm2d):
    """:class:`SparseSwitchNorm2d` with BN statistics all-reduced across processes."""

    sync_batch_stats_default: ClassVar[bool] = True


def set_sparsestmax_radius(model: nn.Module, radius: float) -> None:
    """Set the SparsestMax radius of every SSN layer in ``model`` (``r = step / total_steps`` in the paper)."""
    if radius < 0:
        raise ValueError(f"radius must be non-negative, got {radius}")
    for module in model.modules():
        if isinstance(module, _SparseSwitchNorm):
            module.radius.fill_(radius)
