"""The torch layers the registry builds besides dynnorm's own: ``'BN'`` and ``'GN'``, channels first."""
from __future__ import annotations

import math

import torch
from torch import nn


class GroupNorm2d(nn.GroupNorm):
    """``nn.GroupNorm`` with the channel count first, so it fits ``norm_layer(num_features)`` factories
    (torchvision, mmcv, :func:`dynnorm.create_norm`).

    ``num_groups`` is reduced to ``gcd(num_groups, num_features)`` for layers whose width it does not divide
    (e.g. MobileNetV2's 24-channel layers get 8 groups of 3), so one setting serves a whole network.

    Args:
        num_features: channels ``C``.
        num_groups: requested groups. Default: 32 (the GN paper's setting)
        eps: added to the variance. Default: 1e-5
        affine: learnable per-channel scale and shift. Default: True

    Shape:
        - Input: ``(N, C, *)``; Output: same shape.

    Examples::

        >>> GroupNorm2d(24).num_groups
        8
    """

    def __init__(self, num_features: int, num_groups: int = 32, eps: float = 1e-5, affine: bool = True, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        if num_groups <= 0:
            raise ValueError(f"num_groups must be positive, got {num_groups!r}")
        super().__init__(math.gcd(num_groups, num_features), num_features, eps=eps, affine=affine, device=device,
                         dtype=dtype)


#: Registry names of torch layers (not registered in mmengine, which has its own 'BN' and 'GN').
TORCH_NAMES: dict[str, type[nn.Module]] = {"BN": nn.BatchNorm2d, "GN": GroupNorm2d}
