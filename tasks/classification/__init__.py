"""Image classification with any dynnorm layer, trained with Lightning.

- :class:`ImageClassifier` (``module.py``): a backbone (:mod:`.backbones`) whose normalization is configured
  by name or class path (:mod:`.norms`), torchmetrics top-1/top-5, SGD/AdamW and schedulers from the config,
  optional no-weight-decay for normalization parameters.
- Data modules (``data.py``): :class:`SyntheticShapesDataModule` (embedded, generated on first use),
  :class:`FashionMNISTDataModule` (the original IDX files, local), :class:`CIFARDataModule` (local python
  batches), :class:`ImageFolderDataModule`.
- ``python -m tasks.classification fit --config configs/classification/<model>_<norm>.yaml`` (``cli.py``).
"""
from dynnorm import GroupNorm2d

from .backbones import BACKBONES, CifarResNet, build_backbone
from .data import (
    ClassificationDataModule, CIFARDataModule, FashionMNISTDataModule, ImageFolderDataModule, SyntheticShapesDataModule,
)
from .module import ImageClassifier
from .norms import norm_spec, resolve_norm

__all__ = [
    "BACKBONES", "CIFARDataModule", "CifarResNet", "ClassificationDataModule", "FashionMNISTDataModule", "GroupNorm2d",
    "ImageClassifier",
    "ImageFolderDataModule", "SyntheticShapesDataModule", "build_backbone", "norm_spec", "resolve_norm",
]
