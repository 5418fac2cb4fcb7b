"""Read the learned mixing ratios of every dynnorm layer in a model (for logging and plots)."""
from __future__ import annotations

from torch import nn


def importance_ratios(model: nn.Module) -> dict[str, dict[str, dict[str, float]]]:
    """``{layer_name: {kind: {normalizer: ratio}}}`` for every layer with learned ratios.

    SN/SSN: kinds ``'mean'`` and ``'var'`` over IN/LN/BN; EN: ``'ratio'`` (batch average of the last
    training batch); DN: its gates. Layers in model order.
    """
    return {
        name: module.importance_ratios()
        for name, module in model.named_modules()
        if callable(getattr(module, "importance_ratios", None))
    }
