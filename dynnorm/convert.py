"""Swap normalization layers in a model: BatchNorm/GroupNorm -> dynnorm, and back for deployment."""
from __future__ import annotations

import inspect
import itertools

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._base import DynNormBase, copy_norm_state
from .registry import DIMENSION_VARIANTS, LayerType, get_norm_layer

_BATCHNORM_DIMS = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3, nn.SyncBatchNorm: 2}


def is_dynnorm(module: nn.Module) -> bool:
    """True for any dynnorm layer."""
    return isinstance(module, DynNormBase)


def accepted_keywords(factory) -> set[str]:
    """The keyword arguments ``factory`` accepts, following ``**kwargs`` up a class's ``__init__`` chain (the
    dynnorm layers pass their options on to :class:`~dynnorm._base.DynNormBase`)."""
    target = getattr(factory, "func", factory)
    functions = [klass.__dict__["__init__"] for klass in target.__mro__ if "__init__" in klass.__dict__] \
        if isinstance(target, type) else [target]
    names: set[str] = set()
    for function in functions:
        parameters = inspect.signature(function).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def _accepted_kwargs(factory, candidates: dict) -> dict:
    """The subset of ``candidates`` that ``factory`` accepts and a partial does not already bind."""
    accepted, bound = accepted_keywords(factory), getattr(factory, "keywords", {})
    return {k: v for k, v in candidates.items() if k in accepted and k not in bound}


def _build_replacement(source: nn.Module, factory, kwargs: dict, path: str) -> nn.Module:
    if isinstance(source, _BatchNorm):
        dims = _BATCHNORM_DIMS.get(type(source), 2)
        base = getattr(factory, "func", factory)
        if dims != 2:
            variants = DIMENSION_VARIANTS.get(base)
            if variants is None:
                raise ValueError(f"{path}: {type(source).__name__} has no {dims}d counterpart in {base.__name__}")
            factory = variants[dims] if base is factory else type(factory)(variants[dims], *factory.args, **factory.keywords)
        inherited = {"eps": source.eps, "momentum": source.momentum, "affine": source.affine,
                     "track_running_stats": source.track_running_stats}
        num_features = source.num_features
    else:  # nn.GroupNorm
        inherited = {"eps": source.eps, "affine": source.affine, "num_groups": source.num_groups}
        num_features = source.num_channels
    tensors = itertools.chain(source.parameters(), source.buffers())
    reference = next((t for t in tensors if t.is_floating_point()), None)
    if reference is not None:
        inherited.update(device=reference.device, dtype=reference.dtype)
    layer = factory(num_features, **{**_accepted_kwargs(factory, inherited), **kwargs})
    if isinstance(layer, DynNormBase):
        layer.load_torch_state(source)
    else:  # a torch layer built by name ('BN', 'GN')
        copy_norm_state(source, layer)
    layer.train(source.training)
    return layer


def convert(model: nn.Module, norm: LayerType, **kwargs) -> nn.Module:
    """Replace every ``BatchNorm{1,2,3}d``, ``SyncBatchNorm`` and ``GroupNorm`` in ``model`` by a dynnorm layer.

    ``norm`` is a registry name (``'SN'``), a config dict, a class or a factory; ``kwargs`` go to every new
    layer and override what is inherited from the replaced one (``eps``, ``momentum``, ``affine``,
    ``track_running_stats``, ``num_groups`` where the new layer accepts them, device and dtype). ``weight``,
    ``bias``, ``running_mean``, ``running_var`` and ``num_batches_tracked`` are copied when both layers
    have them, so a pretrained network keeps what the method allows: DN-B/DN-C start as exactly the
    BatchNorm they replace; SN/SSN/EN keep the affine parameters and the BN term's running statistics but
    start from uniform mixtures (as the papers initialise them); AssocNorm (with its GroupNorm start) starts as
    exactly a GroupNorm it replaces; DN changes the statistics.
    Returns the converted model (the root itself is replaced when it is a norm layer), like
    ``nn.SyncBatchNorm.convert_sync_batchnorm``.

    Example::

        >>> import torchvision
        >>> model = convert(torchvision.models.resnet18(), 'SN')
    """
    factory = get_norm_layer(norm)
    return _replace(model, lambda m, path: _build_replacement(m, factory, kwargs, path)
                    if isinstance(m, (_BatchNorm, nn.GroupNorm)) else None)


def _replace(module: nn.Module, build, path: str = "") -> nn.Module:
    replacement = build(module, path or type(module).__name__)
    if replacement is not None:
        return replacement
    for name, child in module.named_children():
        new_child = _replace(child, build, f"{path}.{name}" if path else name)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def torch_equivalent(layer: nn.Module) -> nn.Module | None:
    """The plain torch layer that computes exactly what dynnorm ``layer`` computes now, or ``None``.

    Each layer class knows its own equivalent (``layer.torch_equivalent()``): SN/SSN whose mean and variance
    mixtures are both one-hot on the same normalizer become ``BatchNorm`` (with the running statistics),
    ``InstanceNorm`` or ``GroupNorm(1, C)`` (LN over all of ``(C, *)`` with a per-channel affine); DN-B/DN-C
    whose generator outputs are zero become ``BatchNorm``; other layers have none.
    """
    return layer.torch_equivalent() if is_dynnorm(layer) else None


def revert(model: nn.Module, strict: bool = True) -> nn.Module:
    """Replace every dynnorm layer that has an exact torch equivalent (:func:`torch_equivalent`) by it.

    For deployment: a converged SSN, or a DN-B network whose generators stayed at zero, becomes a plain
    torch network. With ``strict=True`` a dynnorm layer without an equivalent raises ``ValueError`` naming
    it; with ``strict=False`` it is kept.
    """
    def build(module: nn.Module, path: str) -> nn.Module | None:
        if not is_dynnorm(module):
            return None
        plain = torch_equivalent(module)
        if plain is None and strict:
            raise ValueError(f"{path}: {type(module).__name__} has no exact torch equivalent in its current state")
        return plain if plain is not None else module

    return _replace(model, build)

