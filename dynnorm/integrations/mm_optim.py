"""Optimizer parameter groups for dynnorm layers in mmengine (weight decay and learning rate of their parameters).

mmengine's ``DefaultOptimWrapperConstructor`` recognises normalization layers by ``isinstance(module,
(_BatchNorm, _InstanceNorm, GroupNorm, LayerNorm))``, so ``paramwise_cfg=dict(norm_decay_mult=0.)`` does not
reach dynnorm layers (deliberately not ``_BatchNorm`` subclasses). The constructor below adds two rules.
"""
from __future__ import annotations

import logging

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from ..convert import is_dynnorm
from ..optim import mixture_parameters


class DynNormOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` plus ``paramwise_cfg.dynnorm_decay_mult`` (default ``0.0``) and
    ``paramwise_cfg.mixture_lr_mult`` (default ``None``).

    - ``dynnorm_decay_mult``: every parameter of a dynnorm layer (affine ``weight``/``bias``, SN's mixture
      logits ``mean_weight``/``var_weight``, the small generator networks of EN, DN-B/DN-C and AssocNorm) gets
      weight decay ``weight_decay * dynnorm_decay_mult``, as the SN authors trained detection and segmentation
      (no weight decay on any SN parameter). ``None`` disables the rule.
    - ``mixture_lr_mult``: the mixture logits (``dynnorm.mixture_parameters``: SN/SSN logits, DN gates) get
      learning rate ``lr * mixture_lr_mult`` and no weight decay, as the SSN authors trained them
      (``mixture_lr_mult=0.1``; add ``ClipMixtureGradNormHook`` for their gradient clipping). Parameter
      schedulers scale every group's rate by the same factor, so the ratio holds throughout training.
      ``None`` (the default) disables the rule.

    ``custom_keys`` that match a parameter take precedence, as they do for the built-in rules; every other
    ``paramwise_cfg`` option keeps its meaning.

    Examples::

        optim_wrapper = dict(
            type='OptimWrapper',
            optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
            constructor='DynNormOptimWrapperConstructor',
            paramwise_cfg=dict(dynnorm_decay_mult=0.0, mixture_lr_mult=0.1))
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        paramwise_cfg.setdefault("dynnorm_decay_mult", 0.0)
        paramwise_cfg.setdefault("mixture_lr_mult", None)
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        for key in ("dynnorm_decay_mult", "mixture_lr_mult"):
            mult = self.paramwise_cfg[key]
            if mult is not None and (isinstance(mult, bool) or not isinstance(mult, (int, float)) or not mult >= 0):
                raise ValueError(f"paramwise_cfg.{key} must be a non-negative number or None, got {mult!r}")
        if self.paramwise_cfg["dynnorm_decay_mult"] is not None and self.base_wd is None:
            print_log("DynNormOptimWrapperConstructor: the optimizer has no weight_decay, "
                      "so dynnorm_decay_mult has no effect", logger="current", level=logging.WARNING)
        if self.paramwise_cfg["mixture_lr_mult"] is not None and self.base_lr is None:
            raise ValueError("paramwise_cfg.mixture_lr_mult needs the optimizer's lr in optim_wrapper.optimizer")

    def add_params(self, params: list[dict], module: nn.Module, prefix: str = "",
                   is_dcn_module: int | float | None = None) -> None:
        first_new = len(params)
        super().add_params(params, module, prefix, is_dcn_module)
        if not is_dynnorm(module):
            return
        decay_mult = self.paramwise_cfg["dynnorm_decay_mult"]
        lr_mult = self.paramwise_cfg["mixture_lr_mult"]
        # Names as the parent class matches custom keys against them: f'{prefix}.{name}'.
        names = {id(p): f"{prefix}.{name}" for name, p in module.named_parameters()}
        mixture = {id(p) for p in mixture_parameters(module)}
        custom_keys = self.paramwise_cfg.get("custom_keys", {})
        for group in params[first_new:]:
            parameter = group["params"][0]
            name = names.get(id(parameter))
            if name is None or any(key in name for key in custom_keys):
                continue
            if decay_mult is not None and self.base_wd is not None:
                group["weight_decay"] = self.base_wd * decay_mult
            if lr_mult is not None and id(parameter) in mixture:
                group["lr"] = self.base_lr * lr_mult
                group["weight_decay"] = 0.0
