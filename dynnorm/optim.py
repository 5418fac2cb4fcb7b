"""Optimizer treatment of normalization parameters as the SN/SSN authors trained them.

- :func:`param_groups`: optimizer groups with no (or a separate) weight decay on normalization parameters and,
  optionally, the mixture logits in a group of their own with a scaled learning rate (SSN: 0.1x, no decay).
- :func:`clip_mixture_grad_norm`: clip the gradient norm of the mixture logits alone (SSN: to 1).
- :func:`mixture_parameters`: the mixture logits themselves.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ._base import DynNormBase

_TORCH_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def mixture_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that select or mix normalizers in every dynnorm layer of ``model``, each once.

    These are the parameters a layer class names in ``mixture_parameter_names``: SN's and SSN's logits
    ``mean_weight``/``var_weight``, DN's gate logits; EN, DN-B/DN-C and AssocNorm have none (their heads
    are ordinary weights). Order: module order, then the class's order.

    Examples::

        >>> import dynnorm
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), dynnorm.SwitchNorm2d(8))
        >>> [tuple(p.shape) for p in dynnorm.mixture_parameters(model)]
        [(3,), (3,)]
    """
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, DynNormBase):
            for name in module.mixture_parameter_names:
                parameter = getattr(module, name, None)
                if isinstance(parameter, nn.Parameter):
                    found.setdefault(id(parameter), parameter)
    return list(found.values())


def _check_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")


def param_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float = 0.0, *,
                 lr: float | None = None, mixture_lr_mult: float | None = None) -> list[dict]:
    """Split ``model``'s trainable parameters into optimizer groups.

    Parameters of normalization layers (dynnorm layers, with their mixture logits and generator weights,
    and torch's BN/GN/LN/IN) get ``norm_weight_decay``; all others ``weight_decay``. The SN detection and
    segmentation code trained with no weight decay on any SN parameter (``norm_weight_decay=0``); its
    ImageNet code decayed everything (``norm_weight_decay=weight_decay``).

    With ``mixture_lr_mult``, the mixture logits (:func:`mixture_parameters`) leave the normalization group
    for a group of their own with learning rate ``lr * mixture_lr_mult`` and no weight decay, as the SSN
    authors trained them (``mixture_lr_mult=0.1``; they also clipped the logits' gradient norm to 1:
    :func:`clip_mixture_grad_norm`). ``lr`` is the optimizer's base learning rate, the one given to the
    optimizer for the other groups. Learning-rate schedulers scale every group's rate by the same factor,
    so the logits keep their ratio to the base rate throughout training.

    Args:
        model: the network.
        weight_decay: weight decay of every parameter outside normalization layers.
        norm_weight_decay: weight decay of normalization layers' parameters. Default: 0.0
        lr: the optimizer's base learning rate; needed with ``mixture_lr_mult``. Default: None
        mixture_lr_mult: learning-rate multiplier of the mixture logits; ``None`` keeps them in the
            normalization group. Default: None

    Returns:
        ``[{'params': [...], 'weight_decay': weight_decay}, {'params': [...], 'weight_decay': norm_weight_decay}]``,
        plus ``{'params': [...], 'weight_decay': 0.0, 'lr': lr * mixture_lr_mult}`` with ``mixture_lr_mult``
        (empty groups are dropped), ready for any ``torch.optim`` optimizer.

    Examples::

        >>> import dynnorm
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), dynnorm.SparseSwitchNorm2d(8))
        >>> groups = dynnorm.param_groups(model, 1e-4, lr=0.2, mixture_lr_mult=0.5)
        >>> optimizer = torch.optim.SGD(groups, lr=0.2, momentum=0.9)
        >>> [(len(g["params"]), g["lr"], g["weight_decay"]) for g in optimizer.param_groups]
        [(2, 0.2, 0.0001), (2, 0.2, 0.0), (2, 0.1, 0.0)]
    """
    if mixture_lr_mult is not None:
        _check_non_negative("mixture_lr_mult", mixture_lr_mult)
        if lr is None:
            raise ValueError(f"mixture_lr_mult={mixture_lr_mult!r} needs the optimizer's base learning rate: pass lr=")
        _check_non_negative("lr", lr)
    norm_ids = {
        id(p) for m in model.modules() if isinstance(m, (DynNormBase, *_TORCH_NORMS)) for p in m.parameters()
    }
    mixture_ids = {id(p) for p in mixture_parameters(model)} if mixture_lr_mult is not None else set()
    decay, no_decay, mixture = [], [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        if id(parameter) in mixture_ids:
            mixture.append(parameter)
        else:
            (no_decay if id(parameter) in norm_ids else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": norm_weight_decay}]
    if mixture_lr_mult is not None:
        groups.append({"params": mixture, "weight_decay": 0.0, "lr": lr * mixture_lr_mult})
    return [g for g in groups if g["params"]]


def clip_mixture_grad_norm(model: nn.Module | Iterable[nn.Parameter], max_norm: float = 1.0,
                           norm_type: float = 2.0) -> Tensor:
    """Clip the gradient norm of the mixture logits, taken together, to ``max_norm``; other gradients are untouched.

    The SSN authors clipped their logits' gradients (all layers together) to norm 1 before every step.
    Call it between ``backward()`` and ``optimizer.step()`` (after unscaling, with AMP), as
    ``torch.nn.utils.clip_grad_norm_``, which does the work. ``model`` is a network (its
    :func:`mixture_parameters`) or the logits themselves (e.g. those of one optimizer).
    :class:`dynnorm.integrations.lightning.ClipMixtureGradNorm` and
    :class:`dynnorm.integrations.mm_hooks.ClipMixtureGradNormHook` call it in Lightning and mmengine runs.

    Returns:
        The total norm of the logits' gradients before clipping (0 when none has a gradient).

    Examples::

        >>> import dynnorm
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), dynnorm.SwitchNorm2d(8))
        >>> model(torch.randn(2, 3, 8, 8)).pow(3).sum().backward()
        >>> before = dynnorm.clip_mixture_grad_norm(model, max_norm=1e-3)
        >>> grads = torch.cat([p.grad for p in dynnorm.mixture_parameters(model)])
        >>> bool(torch.linalg.vector_norm(grads) <= 1e-3 * (1 + 1e-5))
        True
    """
    parameters = mixture_parameters(model) if isinstance(model, nn.Module) else list(model)
    _check_non_negative("max_norm", max_norm)
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type)
