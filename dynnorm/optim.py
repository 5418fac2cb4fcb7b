"""Optimizer parameter groups with the SN authors' treatment of normalization parameters."""
from __future__ import annotations

from torch import nn

from ._base import DynNormBase

_TORCH_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float = 0.0) -> list[dict]:
    """Split ``model``'s trainable parameters into two optimizer groups.

    Parameters of normalization layers (dynnorm layers, with their mixture logits and generator weights,
    and torch's BN/GN/LN/IN) get ``norm_weight_decay``; all others ``weight_decay``. The SN detection and
    segmentation code trained with no weight decay on any SN parameter (``norm_weight_decay=0``); its
    ImageNet code decayed everything (``norm_weight_decay=weight_decay``).

    Returns:
        ``[{'params': [...], 'weight_decay': weight_decay}, {'params': [...], 'weight_decay': norm_weight_decay}]``
        (empty groups are dropped), ready for any ``torch.optim`` optimizer.
    """
    norm_ids = {
        id(p) for m in model.modules() if isinstance(m, (DynNormBase, *_TORCH_NORMS)) for p in m.parameters()
    }
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if id(parameter) in norm_ids else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": norm_weight_decay}]
    return [g for g in groups if g["params"]]
