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
from .torch_layers import TORCH_NAMES

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
    **{_canonical(name): cls for name, cls in {**SHORT_NAMES, **TORCH_NAMES}.items()},
}


class UnknownNormError(KeyError, ValueError):
    """A norm name the registry does not know; the message lists the known names. A ``KeyError`` (as
    mmengine's registries raise) and a ``ValueError`` (an invalid option) alike.

    Examples::

        >>> try:
        ...     create_norm('XN', 8)
        ... except ValueError as error:
        ...     print(error)
        Unknown norm layer 'XN'; available: ['AssocNorm', 'BN', ...]
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def list_norms() -> list[str]:
    """The short names of dynnorm's layers (``'SN'``, ``'EN'``, ...); :func:`get_norm_layer` also knows
    ``'BN'`` and ``'GN'``."""
    return list(SHORT_NAMES)


def get_norm_layer(layer: LayerType) -> Callable[..., nn.Module]:
    """Resolve a name into a callable ``f(num_features, **kw)``.

    Accepts a registry name (``'SN'``, ``'sync_sn'``, ``'SwitchNorm2d'``, case- and ``_``-insensitive; also
    ``'BN'`` for ``nn.BatchNorm2d`` and ``'GN'`` for :class:`~dynnorm.torch_layers.GroupNorm2d`), a config
    dict ``{'type': name, **kwargs}``, a class or a callable. An unknown name raises
    :class:`UnknownNormError` listing the known ones.
    """
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
            known = sorted({**SHORT_NAMES, **TORCH_NAMES})
            raise UnknownNormError(f"Unknown norm layer {layer!r}; available: {known}") from None
    if callable(layer):
        return layer
    raise TypeError(f"norm layer must be a name, a config dict, a class or a callable, got {type(layer).__name__}")


def create_norm(layer: LayerType, num_features: int, **kwargs) -> nn.Module:
    """Build a norm layer: ``create_norm('SN', 64, using_bn=False)``, ``create_norm(dict(type='EN'), 64)``,
    ``create_norm('GN', 64, num_groups=16)``.

    Examples::

        >>> create_norm('GN', 24)
        GroupNorm2d(8, 24, eps=1e-05, affine=True, bias=True)
    """
    return get_norm_layer(layer)(num_features, **kwargs)
