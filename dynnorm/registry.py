"""Build any dynnorm layer by name (torch only; the mmengine registration lives in ``dynnorm.integrations``)."""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
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

#: Short registry names of the synchronized variants (``norm_cfg=dict(type='SyncSN')``) -> layer class.
SYNC_NAMES: dict[str, type[nn.Module]] = {
    "SyncSN": SyncSwitchNorm2d,
    "SyncSSN": SyncSparseSwitchNorm2d,
    "SyncEN": SyncExemplarNorm2d,
    "SyncDN": SyncDynamicNorm2d,
    "SyncDNB": SyncDynamicNormB2d,
    "SyncDNC": SyncDynamicNormC2d,
}

#: Short registry names (as in configs: ``norm_cfg=dict(type='SN')``) -> 2d layer class.
SHORT_NAMES: dict[str, type[nn.Module]] = {
    "SN": SwitchNorm2d,
    "SSN": SparseSwitchNorm2d,
    "EN": ExemplarNorm2d,
    "DN": DynamicNorm2d,
    "DNB": DynamicNormB2d,
    "DNC": DynamicNormC2d,
    "AssocNorm": AssociateNorm2d,
    **SYNC_NAMES,
}

#: How tables, plots and logs label a layer where the papers spell it otherwise than its registry name.
DISPLAY_NAMES: dict[str, str] = {"DNB": "DN-B", "DNC": "DN-C", "SyncDNB": "SyncDN-B", "SyncDNC": "SyncDN-C"}

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

#: Canonical spelling -> every name as written (class names, short names, ``'BN'``/``'GN'``).
_SPELLINGS: dict[str, str] = {_canonical(name): name for name in [
    *(cls.__name__ for cls in LAYER_CLASSES), *SHORT_NAMES, *TORCH_NAMES]}

#: Canonical spelling -> the short name of its class where it has one (``'switchnorm2d'`` -> ``'SN'``).
_SHORT_NAME_OF: dict[str, str] = {
    **_SPELLINGS, **{_canonical(cls.__name__): name for name, cls in SHORT_NAMES.items()}}


class UnknownNormError(KeyError, ValueError):
    """A norm name the registry does not know; the message suggests the closest known names and lists them
    all. A ``KeyError`` (as mmengine's registries raise) and a ``ValueError`` (an invalid option) alike.

    Examples::

        >>> try:
        ...     create_norm('XN', 8)
        ... except ValueError as error:
        ...     print(error)
        Unknown norm layer 'XN'; available: ['AssocNorm', 'BN', ...]
        >>> try:
        ...     create_norm('SNN', 8)
        ... except KeyError as error:
        ...     print(error)
        Unknown norm layer 'SNN'; did you mean 'SN' or 'SSN'? available: ['AssocNorm', 'BN', ...]
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _edit_distance(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of neighbours that turn ``a`` into ``b``."""
    previous, current = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        before, previous, current = previous, current, [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)
    return current[-1]


def close_names(name: str, candidates: Iterable[str] | None = None, limit: int = 3) -> list[str]:
    """The names among ``candidates`` closest to ``name`` within a few typos; empty when none is that close.

    Spelling is compared case- and ``_``/``-``-insensitively. A name is close when it is at most one edit (an
    insertion, deletion, substitution or swap of neighbours) per four letters of ``name`` away, or one edit from
    a three-letter ``name``; of those, the ones the fewest edits away are returned.

    Args:
        name: the unknown name.
        candidates: the known names. Default: every name :func:`get_norm_layer` knows (short names, class
            names, ``'BN'`` and ``'GN'``)
        limit: at most this many names. Default: 3

    Examples::

        >>> close_names('SNN')
        ['SN', 'SSN']
        >>> close_names('SwitchNorm')
        ['SwitchNorm2d', 'SwitchNorm1d', 'SwitchNorm3d']
        >>> close_names('XN')
        []
    """
    query = _canonical(name)
    allowed = len(query) // 4 or int(len(query) == 3)
    distances = {spelling: _edit_distance(query, _canonical(spelling))
                 for spelling in (_SPELLINGS.values() if candidates is None else candidates)}
    closest = min(distances.values(), default=allowed + 1)
    return [spelling for spelling, distance in distances.items() if distance == closest <= allowed][:limit]


def unknown_norm_error(name: str, known: Iterable[str] | None = None) -> UnknownNormError:
    """The error for an unknown norm ``name``: the closest of the ``known`` names (:func:`close_names`), then
    all of them (default: the short names and ``'BN'``/``'GN'``, suggestions from every name
    :func:`get_norm_layer` knows)."""
    available = sorted({**SHORT_NAMES, **TORCH_NAMES} if known is None else set(known))
    suggestions = [repr(match) for match in close_names(name, None if known is None else available)]
    hint = ""
    if suggestions:
        hint = " did you mean " + (f"{', '.join(suggestions[:-1])} or {suggestions[-1]}" if len(suggestions) > 1
                                   else suggestions[0]) + "?"
    return UnknownNormError(f"Unknown norm layer {name!r};{hint} available: {available}")


def list_norms(*, sync: bool = True, torch_layers: bool = False) -> list[str]:
    """The short names of dynnorm's layers (``'SN'``, ``'EN'``, ...), in the registry's order.

    Args:
        sync: include the synchronized variants (``'SyncSN'``, ...). Default: True
        torch_layers: start with torch's ``'BN'`` and ``'GN'``, which :func:`get_norm_layer` also knows. Default: False

    Examples::

        >>> list_norms(sync=False, torch_layers=True)
        ['BN', 'GN', 'SN', 'SSN', 'EN', 'DN', 'DNB', 'DNC', 'AssocNorm']
    """
    names = [name for name in SHORT_NAMES if sync or name not in SYNC_NAMES]
    return [*TORCH_NAMES, *names] if torch_layers else names


def display_name(layer: str) -> str:
    """How tables and plots label the layer named ``layer`` (any spelling the registry accepts): its short name,
    with the papers' spelling where it differs (:data:`DISPLAY_NAMES`).

    Examples::

        >>> display_name('DNB'), display_name('dynamic_norm_c2d'), display_name('sn')
        ('DN-B', 'DN-C', 'SN')
    """
    try:
        name = _SHORT_NAME_OF[_canonical(layer)]
    except KeyError:
        raise unknown_norm_error(layer) from None
    return DISPLAY_NAMES.get(name, name)


def get_norm_layer(layer: LayerType) -> Callable[..., nn.Module]:
    """Resolve a name into a callable ``f(num_features, **kw)``.

    Accepts a registry name (``'SN'``, ``'sync_sn'``, ``'SwitchNorm2d'``, ``'DN-B'``, case- and
    ``_``/``-``-insensitive; also ``'BN'`` for ``nn.BatchNorm2d`` and ``'GN'`` for
    :class:`~dynnorm.torch_layers.GroupNorm2d`), a config dict ``{'type': name, **kwargs}``, a class or a
    callable. An unknown name raises :class:`UnknownNormError`, which suggests the closest known names and
    lists them all.
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
            raise unknown_norm_error(layer) from None
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
