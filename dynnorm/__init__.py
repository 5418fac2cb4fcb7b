"""dynnorm: learned normalization layers for PyTorch.

Switchable Norm (SN), Sparse SN (SSN), Exemplar Norm (EN), Dynamic Norm (DN), DN-B / DN-C and Associate
Norm, drop-in replacements for ``nn.BatchNorm2d`` with the same parameter and buffer layout, optional
cross-process batch statistics, a registry (:func:`create_norm`) and model conversion (:func:`convert`).
Imports torch only; the OpenMMLab registration is in :mod:`dynnorm.integrations.mmengine`.
"""
from .associate import AssociateNorm2d
from .convert import convert, is_dynnorm, revert, torch_equivalent
from .dynamic import DynamicNorm2d, SyncDynamicNorm2d
from .dynamic_affine import DynamicNormB2d, DynamicNormC2d, SyncDynamicNormB2d, SyncDynamicNormC2d
from .exemplar import ExemplarNorm2d, SyncExemplarNorm2d
from .kernels import cuda_kernels, fast_path, fast_path_enabled, set_cuda_kernels, set_fast_path
from .optim import clip_mixture_grad_norm, mixture_parameters, param_groups
from .original_checkpoints import convert_original_switchnorm_state_dict
from .ratios import importance_ratios
from .recalibrate import recalibrate, running_statistics_layers
from .registry import SHORT_NAMES, UnknownNormError, create_norm, display_name, get_norm_layer, list_norms
from .sparse import (
    SparseSwitchNorm1d,
    SparseSwitchNorm2d,
    SparseSwitchNorm3d,
    SyncSparseSwitchNorm2d,
    set_sparsestmax_radius,
    sparsemax,
    sparsestmax,
)
from .switchable import SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, SyncSwitchNorm2d
from .torch_layers import GroupNorm2d

__version__ = "0.1.0"

__all__ = [
    "AssociateNorm2d", "DynamicNorm2d", "GroupNorm2d", "UnknownNormError", "DynamicNormB2d", "DynamicNormC2d", "ExemplarNorm2d",
    "SparseSwitchNorm1d", "SparseSwitchNorm2d", "SparseSwitchNorm3d", "SwitchNorm1d", "SwitchNorm2d", "SwitchNorm3d",
    "SyncDynamicNorm2d", "SyncDynamicNormB2d", "SyncDynamicNormC2d", "SyncExemplarNorm2d", "SyncSparseSwitchNorm2d",
    "SyncSwitchNorm2d", "SHORT_NAMES", "clip_mixture_grad_norm", "convert", "cuda_kernels", "convert_original_switchnorm_state_dict", "create_norm", "display_name", "fast_path", "fast_path_enabled",
    "get_norm_layer", "importance_ratios", "is_dynnorm", "list_norms", "mixture_parameters", "param_groups", "recalibrate",
    "revert", "running_statistics_layers", "set_cuda_kernels", "set_fast_path", "set_sparsestmax_radius", "sparsemax",
    "sparsestmax", "torch_equivalent",
]
