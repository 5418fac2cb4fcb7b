"""Optimizer parameter groups for dynnorm layers in mmengine (no weight decay on normalization parameters).

mmengine's ``DefaultOptimWrapperConstructor`` recognises normalization layers by ``isinstance(module,
(_BatchNorm, _InstanceNorm, GroupNorm, LayerNorm))``, so ``paramwise_cfg=dict(norm_decay_mult=0.)`` does not
reach dynnorm layers (deliberately not ``_BatchNorm`` subclasses). The constructor below adds one rule.
"""
from __future__ import annotations

import logging

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from ..convert import is_dynnorm


class DynNormOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` plus ``paramwise_cfg.dynnorm_decay_mult`` (default ``0.0``).

    Every parameter of a dynnorm layer (affine ``weight``/``bias``, SN's mixture logits ``mean_weight``/
    ``var_weight``, the small generator networks of EN, DN-B/DN-C and AssocNorm) gets weight decay
    ``weight_decay * dynnorm_decay_mult``, as the SN authors trained detection and segmentation (no weight
    decay on any SN parameter). ``custom_keys`` that match a parameter take precedence, as they do for the
    built-in rules; every other ``paramwise_cfg`` option keeps its meaning. ``dynnorm_decay_mult=None``
    disables the rule.

    Config::

        optim_wrapper = dict(
            type='OptimWrapper',
            optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
            constructor='DynNormOptimWrapperConstructor',
            paramwise_cfg=dict(dynnorm_decay_mult=0.0))
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        paramwise_cfg.setdefault("dynnorm_decay_mult", 0.0)
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        mult = self.paramwise_cfg["dynnorm_decay_mult"]
        if mult is not None and not (isinstance(mult, (int, float)) and mult >= 0):
            raise ValueError(f"paramwise_cfg.dynnorm_decay_mult must be a non-negative number or None, got {mult!r}")
        if mult is not None and self.base_wd is None:
            print_log("DynNormOptimWrapperConstructor: the optimizer has no weight_decay, "
                      "so dynnorm_decay_mult has no effect", logger="current", level=logging.WARNING)

    def add_params(self, params: list[dict], module: nn.Module, prefix: str = "",
                   is_dcn_module: int | float | None = None) -> None:
        first_new = len(params)
        super().add_params(params, module, prefix, is_dcn_module)
        mult = self.paramwise_cfg["dynnorm_decay_mult"]
        if not is_dynnorm(module) or mult is None or self.base_wd is None:
            return
        # Names as the parent class matches custom keys against them: f'{prefix}.{name}'.
        names = {id(p): f"{prefix}.{name}" for name, p in module.named_parameters()}
        custom_keys = self.paramwise_cfg.get("custom_keys", {})
        for group in params[first_new:]:
            name = names.get(id(group["params"][0]))
            if name is not None and not any(key in name for key in custom_keys):
                group["weight_decay"] = self.base_wd * mult
