"""OpenMMLab integration: ``norm_cfg=dict(type='SN')`` in mmdet, mmseg and any other mmengine-based config.

Load it from a config with::

    custom_imports = dict(imports=['dynnorm.integrations.mmengine'], allow_failed_imports=False)

Importing the module calls :func:`register_all_modules`, which registers, in mmengine's *root* registries
(so that every downstream scope, ``mmdet`` and ``mmseg`` alike, finds them through the registry parent chain):

- ``MODELS``: every dynnorm layer under its short name (``'SN'``, ``'SyncSN'``, ``'EN'``, ``'DN'``, ``'DNB'``,
  ``'DNC'``, ``'AssocNorm'``, ``'SSN'``, ...) and its class name (``'SwitchNorm2d'``, ...), so mmcv's
  ``build_norm_layer(dict(type='SN'), 64)`` works. Layers are named ``bn1``, ``bn2``, ... by mmcv (their
  ``_abbr_`` is ``'bn'``), so ImageNet BatchNorm checkpoints load into them: only the new parameters (SN's
  ``mean_weight``/``var_weight``, ...) are missing;
- ``OPTIM_WRAPPER_CONSTRUCTORS``: :class:`~dynnorm.integrations.mm_optim.DynNormOptimWrapperConstructor`
  (no weight decay on normalization parameters; the SSN authors' learning rate of the mixture logits);
- ``HOOKS``: :class:`~dynnorm.integrations.mm_hooks.DynNormEvalHook` (``norm_eval``),
  :class:`~dynnorm.integrations.mm_hooks.DynNormSyncHook` (``sync_bn``),
  :class:`~dynnorm.integrations.mm_hooks.ImportanceRatioHook` (ratio history and figure),
  :class:`~dynnorm.integrations.mm_hooks.ClipMixtureGradNormHook` (the SSN authors' gradient clipping of the
  mixture logits) and :class:`~dynnorm.integrations.mm_hooks.RecalibrateBatchStatisticsHook` (running
  statistics re-estimated before validation).

Besides, an unknown ``norm_cfg`` type in mmcv's ``build_norm_layer`` raises an error that names the closest
registered norm layers ("did you mean 'SN' or 'SSN'?", :mod:`dynnorm.integrations.mm_errors`); every other
registry lookup keeps mmengine's behaviour. Nothing else changes: checkpoints load as mmengine and torch load
them (weights-only under torch >= 2.6). A script opts into the weights-only policy for mmengine's own
checkpoints with :mod:`dynnorm.integrations.mm_checkpoint` and into the config adjustments of the repository's
``tools/train.py`` and ``tools/test.py`` with :mod:`dynnorm.integrations.mm_runtime`.

Needs only mmengine (mmcv, mmdet and mmseg are needed by the models that use the layers, not here).
"""
from __future__ import annotations

try:
    from mmengine.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("dynnorm.integrations.mmengine requires mmengine: pip install 'dynnorm[mm]'") from error

from ..registry import LAYER_CLASSES, SHORT_NAMES
from .mm_errors import suggest_norm_names
from .mm_hooks import (
    ClipMixtureGradNormHook, DynNormEvalHook, DynNormSyncHook, ImportanceRatioHook, RecalibrateBatchStatisticsHook,
)
from .mm_optim import DynNormOptimWrapperConstructor

__all__ = [
    "ClipMixtureGradNormHook", "DynNormEvalHook", "DynNormOptimWrapperConstructor", "DynNormSyncHook",
    "ImportanceRatioHook", "RecalibrateBatchStatisticsHook",
    "registered_names", "register_all_modules",
]


def registered_names() -> dict[str, type]:
    """The names under which :func:`register_all_modules` puts dynnorm layers in ``MODELS``."""
    return {**SHORT_NAMES, **{cls.__name__: cls for cls in LAYER_CLASSES}}


def _register(registry, name: str, obj: type) -> None:
    existing = registry.module_dict.get(name)
    if existing is obj:
        return
    if existing is not None:
        raise KeyError(f"{name!r} is already registered in mmengine's {registry.name} registry as "
                       f"{existing.__module__}.{existing.__qualname__}; dynnorm will not replace it")
    registry.register_module(name=name, module=obj)


def register_all_modules() -> None:
    """Register dynnorm's layers, optimizer constructor and hooks in mmengine's root registries, and make
    unknown norm types in mmcv's ``build_norm_layer`` suggest the closest names
    (:func:`~dynnorm.integrations.mm_errors.suggest_norm_names`).

    Idempotent: registering twice (or after a reload of this module) changes nothing. Raises ``KeyError``
    if a name is already taken by another class.
    """
    for name, cls in registered_names().items():
        _register(MODELS, name, cls)
    _register(OPTIM_WRAPPER_CONSTRUCTORS, DynNormOptimWrapperConstructor.__name__, DynNormOptimWrapperConstructor)
    for hook in (DynNormEvalHook, DynNormSyncHook, ImportanceRatioHook, ClipMixtureGradNormHook,
                 RecalibrateBatchStatisticsHook):
        _register(HOOKS, hook.__name__, hook)
    suggest_norm_names()


register_all_modules()
