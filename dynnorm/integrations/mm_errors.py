"""An unknown ``norm_cfg`` type in mmcv's ``build_norm_layer`` names the closest registered norm layers.

mmcv 2.x looks a ``norm_cfg`` type up with ``registry.get(type)`` and, when nothing is registered under it,
raises ``KeyError('Cannot find None in registry under scope name mmdet')``. Once
:func:`suggest_norm_names` has run (importing :mod:`dynnorm.integrations.mmengine` runs it), that lookup raises
:class:`dynnorm.UnknownNormError`, a ``KeyError`` too, with the closest names and every norm layer the scope
knows::

    Unknown norm layer 'SNN'; did you mean 'SN' or 'SSN'? available: ['AssocNorm', 'BN', 'BN1d', ...]

Only lookups made by ``build_norm_layer`` itself change: every other use of mmengine's registries keeps
mmengine's behaviour (``MODELS.build(dict(type='SNN'))`` raises mmengine's own error, ``'SNN' in MODELS`` is
``False``), and a type that is registered resolves as before.
"""
from __future__ import annotations

import functools
import sys
from typing import Any

from mmengine.registry import Registry
from torch import nn

from ..registry import LAYER_CLASSES, unknown_norm_error

__all__ = ["registered_norm_names", "suggest_norm_names"]

#: The function whose failed registry lookups are reported, as (module, function name).
NORM_BUILDER = ("mmcv.cnn.bricks.norm", "build_norm_layer")

_NORM_CLASSES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, *LAYER_CLASSES)


def registered_norm_names(registry: Registry) -> list[str]:
    """The names of the normalization layers (torch's batch, instance, group and layer norms and dynnorm's
    layers) that ``registry`` and its parents hold, sorted."""
    names = set()
    while registry is not None:
        names.update(name for name, obj in registry.module_dict.items()
                     if isinstance(obj, type) and issubclass(obj, _NORM_CLASSES))
        registry = registry.parent
    return sorted(names)


def _called_from_norm_builder(frame) -> bool:
    return (frame.f_globals.get("__name__"), frame.f_code.co_name) == NORM_BUILDER


def suggest_norm_names() -> None:
    """Make ``Registry.get``, when called by mmcv's ``build_norm_layer`` for a type nothing is registered
    under, raise :class:`dynnorm.UnknownNormError` naming the closest registered norm layers. Idempotent."""
    original = Registry.get
    if getattr(original, "suggests_norm_names", False):
        return

    @functools.wraps(original)
    def get(self: Registry, key: str) -> Any:
        found = original(self, key)
        if found is None and isinstance(key, str) and _called_from_norm_builder(sys._getframe(1)):
            raise unknown_norm_error(key, registered_norm_names(self))
        return found

    get.suggests_norm_names = True
    Registry.get = get
