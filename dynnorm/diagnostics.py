"""Per-layer health of the learned parts of AssocNorm and DN (for logging and studies).

- :func:`associate_norm_saturation`: how much of each :class:`AssociateNorm2d` auto-encoder is dead or
  saturated on a batch (ReLU embeddings at 0, sigmoid/tanh outputs near their bounds).
- :func:`dynamic_norm_mixture`: where each :class:`DynamicNorm2d`'s gates stand (the batch gate and how many
  channels each statistic effectively pools).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .associate import AssociateNorm2d
from .dynamic import DynamicNorm2d

#: Default saturation threshold: an output more than 95% of the way from the activation's centre to its
#: bound (sigmoid below 0.025 or above 0.975, ``|tanh| > 0.95``); the derivative there is below 10% of
#: its largest value for both.
SATURATION_THRESHOLD = 0.95


def saturation_shares(activations: dict[str, Tensor], threshold: float = SATURATION_THRESHOLD) -> dict[str, float]:
    """Shares (in [0, 1]) of dead or saturated values among :meth:`AssociateNorm2d.autoencoder_activations`.

    ``dead_scale_embedding`` / ``dead_shift_embedding``: ReLU outputs equal to 0 (no gradient reaches the
    encoder through them); ``saturated_scale``: sigmoid outputs ``s`` with ``|2 s - 1| > threshold``;
    ``saturated_shift``: tanh outputs with ``|t| > threshold``. Each share is over all samples and units.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    return {
        "dead_scale_embedding": float((activations["scale_embedding"] == 0).double().mean()),
        "dead_shift_embedding": float((activations["shift_embedding"] == 0).double().mean()),
        "saturated_scale": float(((2 * activations["scale_decoded"] - 1).abs() > threshold).double().mean()),
        "saturated_shift": float((activations["shift_decoded"].abs() > threshold).double().mean()),
    }


@torch.no_grad()
def associate_norm_saturation(model: nn.Module, x: Tensor,
                              threshold: float = SATURATION_THRESHOLD) -> dict[str, dict[str, float]]:
    """``{layer_name: saturation_shares(...)}`` for every :class:`AssociateNorm2d` of ``model`` on the batch ``x``.

    Runs ``model(x)`` once in evaluation mode without gradients (the training mode is restored; AssocNorm
    itself behaves alike in both), records each AssocNorm layer's input and measures its auto-encoder on it
    (:func:`saturation_shares`). Layers in model order.

    Examples::

        >>> import dynnorm
        >>> model = nn.Sequential(nn.Conv2d(3, 16, 3), dynnorm.AssociateNorm2d(16, num_groups=8))
        >>> shares = associate_norm_saturation(model, torch.randn(4, 3, 8, 8))
        >>> shares["1"]["saturated_scale"]  # a new layer's decoders are zero: sigmoid(0) = 1/2
        0.0
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, AssociateNorm2d)}
    inputs: dict[str, Tensor] = {}
    handles = [layer.register_forward_pre_hook(lambda _, args, name=name: inputs.__setitem__(name, args[0]))
               for name, layer in layers.items()]
    training = model.training
    try:
        model.eval()
        model(x)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return {name: saturation_shares(layers[name].autoencoder_activations(inputs[name]), threshold)
            for name in layers if name in inputs}


def effective_pooled_channels(gates: Tensor, factors: tuple[int, ...]) -> float:
    """How many channels a DN statistic effectively averages: ``1 / sum_j a_j^2`` over a row ``a`` of the
    channel pooling matrix ``U_1 kron ... kron U_K`` (``U_i = g_i J/s_i + (1 - g_i) I``). 1 for IN (all
    gates 0), ``C`` for LN (all 1), the group size for GN; the row's squares multiply over the factors."""
    squares = 1.0
    for gate, size in zip(gates.tolist(), factors):
        own, other = 1 - gate + gate / size, gate / size
        squares *= own ** 2 + (size - 1) * other ** 2
    return 1 / squares


def dynamic_norm_mixture(model: nn.Module) -> dict[str, dict[str, dict[str, float]]]:
    """``{layer_name: {'mean' | 'var': {'batch': b, 'pooled_channels': k}}}`` for every :class:`DynamicNorm2d`.

    ``b`` is the batch gate (1: BN's statistics across the batch, 0: the sample's own) and ``k`` the
    effective number of channels pooled (:func:`effective_pooled_channels`: 1 for IN/BN, ``C`` for LN).
    The gates themselves are in :func:`dynnorm.importance_ratios`. Layers in model order.

    Examples::

        >>> import dynnorm
        >>> mixture = dynamic_norm_mixture(nn.Sequential(dynnorm.DynamicNorm2d(16)))
        >>> round(mixture["0"]["mean"]["batch"], 3), round(mixture["0"]["mean"]["pooled_channels"], 2)
        (0.953, 1.21)
    """
    mixture = {}
    for name, layer in model.named_modules():
        if isinstance(layer, DynamicNorm2d):
            gates = {k: v.detach().double().cpu() for k, v in layer.gates().items()}
            mixture[name] = {kind: {"batch": float(gates[f"{kind}_batch"]),
                                    "pooled_channels": effective_pooled_channels(gates[f"{kind}_channel"], layer.factors)}
                             for kind in ("mean", "var")}
    return mixture
