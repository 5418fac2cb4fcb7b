"""Load checkpoints of the SN and SSN authors' code into this package's layers."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

#: The IN logit given to converted ``SwitchNorm1d`` layers, which had no IN term. Finite, so that weight
#: decay and momentum never turn it into NaN (as they would ``-inf``); low enough that its softmax weight
#: underflows to exactly 0 (in float32 and float64) while the largest other logit is above -9000.
ABSENT_LOGIT = -1e4

_AFFINE_AND_RUNNING = ("weight", "bias", "running_mean", "running_var")


def _is_original_1d(state_dict: Mapping[str, Tensor], prefix: str) -> bool:
    """True for an original ``SwitchNorm1d``: two logits (LN, BN) and ``(1, C)`` weight or running mean.

    The original 2d/3d layers keep 4-/5-dimensional weights and ``(1, C, 1)`` running statistics, and with
    ``using_bn=False`` their two logits are (IN, LN), which this package's layers also use.
    """
    if state_dict[f"{prefix}mean_weight"].numel() != 2:
        return False
    reference = state_dict.get(f"{prefix}weight", state_dict.get(f"{prefix}running_mean"))
    if reference is None:
        raise ValueError(f"{prefix}mean_weight has 2 logits but the layer has neither weight nor running_mean: "
                         "cannot tell an original SwitchNorm1d (LN, BN) from a 2d layer without BN (IN, LN)")
    return reference.dim() == 2


def _with_absent_instance_logit(logits: Tensor) -> Tensor:
    return torch.cat([logits.new_full((1,), ABSENT_LOGIT), logits])


def convert_original_switchnorm_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert a checkpoint of the original SN (or SSN) code to this package's layout.

    Layers are recognised by their ``mean_weight`` key; other tensors are returned unchanged, and a state dict
    already in this package's layout converts to itself.

    - ``weight``/``bias`` (``(1, C, 1, 1)``, ``(1, C)`` in 1d) and ``running_mean``/``running_var``
      (``(1, C, 1)``, ``(1, C)`` in 1d) become ``(C,)``.
    - ``mean_weight``/``var_weight`` of the 2d and 3d layers (IN, LN, BN; IN, LN with ``using_bn=False``)
      are kept. An original ``SwitchNorm1d`` has two logits (LN, BN) and no IN term: its logits become
      (IN, LN, BN) with the IN logit at :data:`ABSENT_LOGIT`, so the softmax gives IN a weight of exactly 0
      (this package's ``SwitchNorm1d`` leaves IN out for ``(N, C)`` inputs anyway).
    - SSN's ``radius`` ``(1,)`` and ``mean_fixed``/``var_fixed`` (``LongTensor [0|1]``) become scalars, the
      flags boolean.

    Build the layers with ``momentum = 1 - original_momentum`` (the original momentum is a decay: 0.997 is
    ``momentum=0.003``). Outputs then match the original formulas with biased variances: the original code
    used unbiased per-sample variances, a relative difference of ``1/(HW - 1)`` in their within-sample part
    (``1/(C - 1)`` for the LN variance in 1d). Checkpoints saved from ``DataParallel`` carry a ``module.``
    prefix on every key, which ``load_state_dict`` needs removed as usual.

    Examples::

        >>> import dynnorm
        >>> original = {"fc_norm.weight": torch.ones(1, 4), "fc_norm.bias": torch.zeros(1, 4),
        ...             "fc_norm.mean_weight": torch.tensor([1.0, 2.0]), "fc_norm.var_weight": torch.ones(2),
        ...             "fc_norm.running_mean": torch.zeros(1, 4), "fc_norm.running_var": torch.ones(1, 4)}
        >>> converted = dynnorm.convert_original_switchnorm_state_dict(original)
        >>> converted["fc_norm.mean_weight"].tolist()
        [-10000.0, 1.0, 2.0]
    """
    prefixes = {key[: -len("mean_weight")] for key in state_dict if key.endswith("mean_weight")}
    one_dimensional = {prefix for prefix in prefixes if _is_original_1d(state_dict, prefix)}
    converted = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        prefix = f"{prefix}." if prefix else ""
        if prefix in prefixes:
            if leaf in _AFFINE_AND_RUNNING:
                value = value.reshape(-1)
            elif leaf in ("mean_weight", "var_weight") and prefix in one_dimensional:
                value = _with_absent_instance_logit(value)
            elif leaf == "radius":
                value = value.reshape(())
            elif leaf in ("mean_fixed", "var_fixed"):
                value = value.reshape(()).bool()
        converted[key] = value
    return converted
