"""Build any dynnorm layer by name (torch only; the mmengine registration lives in ``dynnorm.integrations``)."""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Union

from torch import nn

from .associate import AssociateNorm2d
from .dynamic import DynamicNorm2d, SyncDynamicNorm2d
from .dynamic_affine import DynamicNormB2d, DynamicNormC2d, SyncDynamicNormB2d, SyncDynamicNormC2d
from .exemplar import ExemplarNorm2d, SyncExemplarNorm2d
from .sparse import SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d, SyncSparseSwitchNorm2d
from .switchable import SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, SyncSwitchNorm2d

LayerType = Union[str, Mapping, Callable[..., nn.Module], type[nn.Module]]

#: Short registry names (as in configs: ``norm_cfg=dict(type='SN')``) -> 2d layer class.
SHORT_NAMES: dict[str, type[nn.Module]] = {
    "SN": SwitchNorm2d,
    "SSN": SparseSwitchNorm2d,
    "EN": ExemplarNorm2d,
    "DN": DynamicNorm2d,
    "DNB": DynamicNormB2d,
    "DNC": DynamicNormC2d,
    "AssocNorm": AssociateNorm2d,
    "SyncSN": SyncSwitchNorm2d,
    "SyncSSN": SyncSparseSwitchNorm2d,
    "SyncEN": SyncExemplarNorm2d,
    "SyncDN": SyncDynamicNorm2d,
    "SyncDNB": SyncDynamicNormB2d,
    "SyncDNC": SyncDynamicNormC2d,
}

#: Every layer class, by class name.
LAYER_CLASSES: tuple[type[nn.Module], ...] = tuple(dict.fromkeys([
    *SHORT_NAMES.values(), SwitchNorm1d, SwitchNorm3d, SparseSwitchNorm1d, SparseSwitchNorm3d,
]))

#: Classes with 1d/3d variants, for :func:`dynnorm.convert` of ``BatchNorm1d``/``BatchNorm3d``.
DIMENSION_VARIANTS: dict[type[nn.Module], dict[int, type[nn.Module]]] = {
    SwitchNorm2d: {1: SwitchNorm1d, 2: SwitchNorm2d, 3: SwitchNorm3d},
    SparseSwitchNorm2d: {1: SparseSwitchNorm1d, 2: SparseSwitchNorm2d, 3: SparseSwitchNorm3d},
}


def _canonical(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


_BY_NAME: dict[str, type[nn.Module]] = {
    **{_canonical(cls.__name__): cls for cls in LAYER_CLASSES},
    **{_canonical(name): cls for name, cls in SHORT_NAMES.items()},
}


def list_norms() -> list[str]:
    """The short registry names (``'SN'``, ``'EN'``, ...)."""
    return list(SHORT_NAMES)


def get_norm_layer(layer: LayerType) -> Callable[..., nn.Module]:
    """Resolve a name (``'SN'``, ``'sync_sn'``, ``'SwitchNorm2d'``, case- and ``_``-insensitive), a config
    dict ``{'type': name, **kwargs}``, a class or a callable into a callable ``f(num_features, **kw)``."""
    if isinstance(layer, Mapping):
        if "type" not in layer:
            raise KeyError(f"norm config must have a 'type' key, got {dict(layer)!r}")
        kwargs = {k: v for k, v in layer.items() if k != "type"}
        base = get_norm_layer(layer["type"])
        return functools.partial(base, **kwargs) if kwargs else base
    if isinstance(layer, str):
        try:
            return _BY_NAME[_canonical(layer)]
        except KeyError:
            raise KeyError(f"Unknown norm layer {layer!r}; available: {sorted(SHORT_NAMES)}") from None
    if callable(layer):
        return layer
    raise TypeError(f"norm layer must be a name, a config dict, a class or a callable, got {type(layer).__name__}")


def create_norm(layer: LayerType, num_features: int, **kwargs) -> nn.Module:
    """Build a norm layer: ``create_norm('SN', 64, using_bn=False)`` or ``create_norm(dict(type='EN'), 64)``."""
    return get_norm_layer(layer)(num_features, **kwargs)
