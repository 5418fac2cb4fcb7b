"""Classification networks whose every normalization layer comes from one factory ``norm_layer(num_features)``.

- ``cifar_resnet``: the CIFAR ResNet of He et al. (2016, section 4.2): a 3x3 stem and three stages of
  ``n`` basic blocks with widths ``w, 2w, 4w`` (depth ``6n + 2``: 20, 32, 44, 56, 110), projection shortcuts
  (1x1 conv + norm) where the shape changes. Built from torchvision's ``BasicBlock``.
- ``resnet18``, ``resnet50``, ``mobilenet_v2``: torchvision's networks, randomly initialised, with
  ``norm_layer`` passed through. ``small_input=True`` adapts the ImageNet stem to 32-64 px images
  (ResNet: 3x3 stride-1 ``conv1`` and no max-pool; MobileNetV2: stride-1 first convolution).

Every network takes ``in_channels`` (default 3; 1 for grayscale images such as Fashion-MNIST), the input
channels of its first convolution. The torchvision ResNets also take the SN authors' ImageNet recipe:
``zero_init_residual`` (the last normalization weight of each residual block starts at 0) and ``dropout``
before the classifier (both off by default).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import Tensor, nn
from torchvision.models import mobilenet_v2, resnet18, resnet50
from torchvision.models.resnet import BasicBlock, conv1x1, conv3x3

NormFactory = Callable[[int], nn.Module]


def _check_in_channels(in_channels: int) -> None:
    if in_channels < 1:
        raise ValueError(f"in_channels must be positive, got {in_channels!r}")


class CifarResNet(nn.Module):
    """The CIFAR ResNet (depth ``6n + 2``, widths ``width x (1, 2, 4)``).

    Args:
        num_classes: outputs of the final linear layer.
        norm_layer: factory ``f(num_features)`` of every normalization layer.
        depth: ``6n + 2`` for ``n >= 1`` basic blocks per stage. Default: 20
        width: channels of the first stage. Default: 16
        in_channels: channels of the input images. Default: 3

    Shape:
        - Input: ``(N, in_channels, H, W)``; Output: ``(N, num_classes)`` logits.

    >>> import torch
    >>> CifarResNet(10, nn.BatchNorm2d, depth=8)(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> CifarResNet(10, nn.BatchNorm2d, depth=8, in_channels=1)(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int, norm_layer: NormFactory, depth: int = 20, width: int = 16,
                 in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CifarResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth!r}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width!r}")
        _check_in_channels(in_channels)
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, width)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        stages, in_channels = [], width
        for index, channels in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(blocks_per_stage):
                block_stride = stride if block_index == 0 else 1
                downsample = None
                if block_stride != 1 or in_channels != channels:
                    downsample = nn.Sequential(conv1x1(in_channels, channels, block_stride), norm_layer(channels))
                blocks.append(BasicBlock(in_channels, channels, block_stride, downsample, norm_layer=norm_layer))
                in_channels = channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _stem_conv(conv: nn.Conv2d, in_channels: int, **changes) -> nn.Conv2d:
    """A freshly initialised copy of the stem convolution ``conv`` with ``in_channels`` inputs and ``changes``
    (``kernel_size``, ``stride``, ``padding``) applied."""
    _check_in_channels(in_channels)
    options = {"kernel_size": conv.kernel_size, "stride": conv.stride, "padding": conv.padding,
               "bias": conv.bias is not None} | changes
    stem = nn.Conv2d(in_channels, conv.out_channels, **options)
    nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
    return stem


def _adapt_resnet_stem(model: nn.Module, small_input: bool, in_channels: int) -> nn.Module:
    if small_input:
        model.conv1 = _stem_conv(model.conv1, in_channels, kernel_size=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _stem_conv(model.conv1, in_channels)
    return model


def _add_classifier_dropout(model: nn.Module, dropout: float) -> nn.Module:
    """Dropout with probability ``dropout`` before a torchvision ResNet's ``fc``, inside ``avgpool`` (which has
    no parameters), so the state-dict keys stay those of torchvision's ResNet."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if dropout:
        model.avgpool = nn.Sequential(model.avgpool, nn.Dropout(dropout))
    return model


def torchvision_resnet18(num_classes: int, norm_layer: NormFactory, small_input: bool = False,
                         in_channels: int = 3, zero_init_residual: bool = False, dropout: float = 0.0) -> nn.Module:
    """torchvision's ResNet-18 (random init); ``small_input``: 3x3 stride-1 stem, no max-pool;
    ``zero_init_residual``: the last normalization weight of each residual block starts at 0; ``dropout``:
    dropout probability before the classifier."""
    model = resnet18(weights=None, num_classes=num_classes, norm_layer=norm_layer,
                     zero_init_residual=zero_init_residual)
    return _add_classifier_dropout(_adapt_resnet_stem(model, small_input, in_channels), dropout)


def torchvision_resnet50(num_classes: int, norm_layer: NormFactory, small_input: bool = False,
                         in_channels: int = 3, zero_init_residual: bool = False, dropout: float = 0.0) -> nn.Module:
    """torchvision's ResNet-50 (random init); options as :func:`torchvision_resnet18`. The SN authors' ImageNet
    recipe uses ``zero_init_residual=True`` (their ``last_gamma``) and ``dropout=0.5``."""
    model = resnet50(weights=None, num_classes=num_classes, norm_layer=norm_layer,
                     zero_init_residual=zero_init_residual)
    return _add_classifier_dropout(_adapt_resnet_stem(model, small_input, in_channels), dropout)


def torchvision_mobilenet_v2(num_classes: int, norm_layer: NormFactory, small_input: bool = False,
                             width_mult: float = 1.0, in_channels: int = 3) -> nn.Module:
    """torchvision's MobileNetV2 (random init); ``small_input``: stride-1 first convolution."""
    model = mobilenet_v2(weights=None, num_classes=num_classes, norm_layer=norm_layer, width_mult=width_mult)
    if in_channels != 3:
        model.features[0][0] = _stem_conv(model.features[0][0], in_channels)
    if small_input:
        model.features[0][0].stride = (1, 1)
    return model


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "cifar_resnet": CifarResNet,
    "resnet18": torchvision_resnet18,
    "resnet50": torchvision_resnet50,
    "mobilenet_v2": torchvision_mobilenet_v2,
}


def build_backbone(name: str, num_classes: int, norm_layer: NormFactory, **options) -> nn.Module:
    """Build network ``name`` (a key of :data:`BACKBONES`) with ``options`` (``depth``/``width`` for
    ``cifar_resnet``, ``small_input`` for the torchvision networks, ``width_mult`` for MobileNetV2,
    ``zero_init_residual``/``dropout`` for the torchvision ResNets, ``in_channels`` for all)."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; available: {sorted(BACKBONES)}")
    builder = BACKBONES[name]
    try:
        inspect.signature(builder).bind(num_classes, norm_layer, **options)
    except TypeError as error:
        raise ValueError(f"backbone {name!r} does not take options {options!r}: {error}") from None
    return builder(num_classes, norm_layer, **options)
