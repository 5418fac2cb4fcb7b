"""Turn the ``norm`` setting of a classifier (a name, a class path or a factory) into a layer factory.

``resolve_norm`` accepts what a YAML config or a Python caller naturally writes:

- a name known to :func:`dynnorm.get_norm_layer` — ``'BN'`` (``nn.BatchNorm2d``), ``'GN'``
  (:class:`dynnorm.GroupNorm2d`), ``'SN'``, ``'SSN'``, ``'EN'``, ``'DN'``, ``'DNB'``, ``'DNC'``, ``'AssocNorm'``,
  ``'SyncSN'``, ... — or a dotted import path (``'dynnorm.SwitchNorm2d'``);
- a class path with init args, ``{'class_path': 'dynnorm.SwitchNorm2d', 'init_args': {'using_bn': False}}``
  (what jsonargparse writes, and what :func:`norm_spec` stores in a checkpoint);
- a dynnorm config dict, ``{'type': 'SN', 'using_bn': False}``;
- any callable ``f(num_features) -> nn.Module`` (a class, a ``functools.partial``).

:func:`norm_spec` goes the other way, to a primitive value that a checkpoint can hold under torch's
``weights_only`` loading.
"""
from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Union

from torch import nn

import dynnorm
from dynnorm.convert import accepted_keywords

NormFactory = Callable[[int], nn.Module]
NormSetting = Union[str, Mapping, NormFactory]


def _import(path: str) -> Any:
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ValueError(f"not a dotted import path: {path!r}")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import norm layer {path!r}: {error}") from None


def _from_name(name: str) -> NormFactory:
    """A dotted import path, or a registry name (an unknown one raises :class:`dynnorm.UnknownNormError`,
    a ``ValueError``, listing the known names)."""
    return _import(name) if "." in name else dynnorm.get_norm_layer(name)


def resolve_norm(norm: NormSetting) -> NormFactory:
    """A factory ``f(num_features) -> nn.Module`` for any accepted ``norm`` setting (see the module doc).

    Raises ``ValueError`` for an unknown name (:class:`dynnorm.UnknownNormError`) or an init arg the class does
    not take.

    >>> resolve_norm('GN')(24)
    GroupNorm2d(8, 24, eps=1e-05, affine=True, bias=True)
    >>> resolve_norm({'class_path': 'dynnorm.SwitchNorm2d', 'init_args': {'using_bn': False}})(8)
    SwitchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, using_bn=False)
    """
    if isinstance(norm, str):
        return _from_name(norm)
    if isinstance(norm, Mapping):
        if "class_path" in norm:
            unknown = set(norm) - {"class_path", "init_args"}
            if unknown:
                raise ValueError(f"norm {dict(norm)!r}: unexpected keys {sorted(unknown)}")
            factory, kwargs = _from_name(norm["class_path"]), dict(norm.get("init_args") or {})
        elif "type" in norm:
            factory, kwargs = _from_name(norm["type"]), {k: v for k, v in norm.items() if k != "type"}
        else:
            raise ValueError(f"a norm mapping needs 'class_path' (with optional 'init_args') or 'type', got {dict(norm)!r}")
        if kwargs:
            unknown = set(kwargs) - accepted_keywords(factory)
            if unknown:
                raise ValueError(f"norm {dict(norm)!r}: {getattr(factory, '__name__', factory)} does not take "
                                 f"{sorted(unknown)}")
            return functools.partial(factory, **kwargs)
        return factory
    if callable(norm):
        return norm
    raise TypeError(f"norm must be a name, a mapping or a callable, got {type(norm).__name__}: {norm!r}")


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _primitive(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(_primitive(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _primitive(v) for k, v in value.items())
    return False


def norm_spec(norm: NormSetting) -> str | dict:
    """A primitive (str/dict) description of ``norm`` that :func:`resolve_norm` turns back into the same factory.

    Names and mappings are kept; a class becomes ``{'class_path': ...}``; a ``functools.partial`` of a class,
    and the factory jsonargparse builds from ``class_path`` + ``init_args``, keep their keyword arguments.
    Other callables cannot be described and raise ``ValueError``.

    >>> norm_spec(functools.partial(dynnorm.SwitchNorm2d, using_bn=False))
    {'class_path': 'dynnorm.switchable.SwitchNorm2d', 'init_args': {'using_bn': False}}
    """
    if isinstance(norm, str):
        return norm
    if isinstance(norm, Mapping):
        if not _primitive(norm):
            raise ValueError(f"norm mapping holds non-primitive values: {dict(norm)!r}")
        return dict(norm)
    if inspect.isclass(norm):
        return {"class_path": _class_path(norm)}
    if isinstance(norm, functools.partial) and _primitive(norm.keywords):
        if inspect.isclass(norm.func) and not norm.args:
            return {"class_path": _class_path(norm.func), "init_args": dict(norm.keywords)}
        # jsonargparse's factory for {class_path, init_args}: partial(<instantiator helpers>, cls, **init_args)
        if norm.func.__module__.startswith("jsonargparse") and norm.args and inspect.isclass(norm.args[-1]):
            return {"class_path": _class_path(norm.args[-1]), "init_args": dict(norm.keywords)}
    raise ValueError(
        f"cannot describe norm {norm!r} with primitive values; pass a name, a class, a partial of a class "
        "or {'class_path': ..., 'init_args': {...}}"
    )
