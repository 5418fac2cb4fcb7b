"""Swap normalization layers in a model: BatchNorm/GroupNorm -> dynnorm, and back for deployment."""
from __future__ import annotations

import inspect
import itertools
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._base import DynNormBase
from .dynamic_affine import _DynamicAffineNorm
from .registry import DIMENSION_VARIANTS, LayerType, get_norm_layer
from .switchable import _SwitchNorm

_BATCHNORM_DIMS = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3, nn.SyncBatchNorm: 2}


def is_dynnorm(module: nn.Module) -> bool:
    """True for any dynnorm layer."""
    return isinstance(module, DynNormBase)


def _accepted_kwargs(factory, candidates: dict) -> dict:
    """The subset of ``candidates`` that ``factory``'s signature accepts and a partial does not already bind."""
    parameters = inspect.signature(factory).parameters
    bound = getattr(factory, "keywords", {})
    return {k: v for k, v in candidates.items() if k in parameters and k not in bound}


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
    _copy_state(source, layer)
    layer.train(source.training)
    return layer


@torch.no_grad()
def _copy_state(source: nn.Module, target: nn.Module) -> None:
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        src, dst = getattr(source, name, None), getattr(target, name, None)
        if isinstance(src, Tensor) and isinstance(dst, Tensor) and src.shape == dst.shape:
            dst.copy_(src)


def convert(model: nn.Module, norm: LayerType, **kwargs) -> nn.Module:
    """Replace every ``BatchNorm{1,2,3}d``, ``SyncBatchNorm`` and ``GroupNorm`` in ``model`` by a dynnorm layer.

    ``norm`` is a registry name (``'SN'``), a config dict, a class or a factory; ``kwargs`` go to every new
    layer and override what is inherited from the replaced one (``eps``, ``momentum``, ``affine``,
    ``track_running_stats``, ``num_groups`` where the new layer accepts them, device and dtype). ``weight``,
    ``bias``, ``running_mean``, ``running_var`` and ``num_batches_tracked`` are copied when both layers
    have them, so a pretrained network keeps what the method allows: DN-B/DN-C start as exactly the
    BatchNorm they replace; SN/SSN/EN keep the affine parameters and the BN term's running statistics but
    start from uniform mixtures (as the papers initialise them); DN and AssocNorm change the statistics.
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
    """The plain torch layer that computes exactly what ``layer`` computes now, or ``None``.

    SN/SSN whose mean and variance mixtures are both one-hot on the same normalizer become
    ``BatchNorm`` (with the running statistics), ``InstanceNorm`` or ``GroupNorm(1, C)`` (LN over all of
    ``(C, *)`` with a per-channel affine); DN-B/DN-C whose generator outputs are zero become ``BatchNorm``.
    """
    factory = {"device": layer.weight.device if layer.weight is not None else None}
    dims = max(getattr(layer, "input_ranks", (4,))) - 2  # spatial dimensions of the layer's inputs
    if isinstance(layer, _SwitchNorm):
        mean_w, var_w = (w.detach() for w in layer.mixture_weights())
        selected = {int(mean_w.argmax()), int(var_w.argmax())}
        if len(selected) != 1 or float(mean_w.max()) < 1 - 1e-6 or float(var_w.max()) < 1 - 1e-6:
            return None
        name = layer.normalizer_names[selected.pop()]
        if name == "BN":
            plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1](
                layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats, **factory)
        elif name == "IN":
            plain = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[dims - 1](
                layer.num_features, layer.eps, affine=layer.affine, **factory)
        else:
            plain = nn.GroupNorm(1, layer.num_features, layer.eps, layer.affine, **factory)
    elif isinstance(layer, _DynamicAffineNorm):
        if layer.sc_w2.detach().abs().max() > 0 or layer.sc_b2.detach().abs().max() > 0:
            return None
        plain = nn.BatchNorm2d(layer.num_features, layer.eps, layer.momentum, layer.affine,
                               layer.track_running_stats, **factory)
    else:
        return None
    _copy_state(layer, plain)
    plain.train(layer.training)
    return plain


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


def convert_original_switchnorm_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert a checkpoint of the original SwitchNorm code to this package's layout.

    The original layers store ``weight``/``bias`` as ``(1, C, 1, 1)`` and ``running_mean``/``running_var``
    as ``(1, C, 1)``; here they are ``(C,)``. ``mean_weight``/``var_weight`` (order IN, LN, BN) are kept.
    The original ``momentum`` was a decay: build the layers with ``momentum = 1 - original_momentum``.
    Layers are recognised by their ``mean_weight`` key; other tensors are returned unchanged.
    """
    prefixes = {key[: -len("mean_weight")] for key in state_dict if key.endswith("mean_weight")}
    converted = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        prefix = f"{prefix}." if prefix else ""
        if prefix in prefixes and leaf in ("weight", "bias", "running_mean", "running_var"):
            value = value.reshape(-1)
        converted[key] = value
    return converted
