"""The image classifier: any backbone of :mod:`.backbones` with any normalization layer, trained by Lightning."""
from __future__ import annotations

import inspect
from typing import Literal, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

import dynnorm

from .backbones import BACKBONES, build_backbone
from .norms import NormSetting, norm_spec, resolve_norm


class ImageClassifier(LightningModule):
    """A classifier whose normalization layers are chosen by configuration.

    Args:
        backbone: network name, one of ``cifar_resnet``, ``resnet18``, ``resnet50``, ``mobilenet_v2``.
            Default: ``cifar_resnet``
        norm: every normalization layer of the network: a name (``'BN'``, ``'GN'``, ``'SN'``, ``'EN'``, ...),
            ``{class_path: ..., init_args: {...}}`` or a factory ``f(num_features)`` (see
            :func:`tasks.classification.norms.resolve_norm`). Default: ``'BN'``
        num_classes: classes (linked from the data module by the CLI). Default: 10
        backbone_options: keyword arguments of the backbone (``depth``/``width`` for ``cifar_resnet``,
            ``small_input`` for the torchvision networks). Default: none
        optimizer: optimizer factory, called with the parameter groups (which carry their weight decay).
            Default: ``torch.optim.SGD`` (set ``lr`` in the config)
        lr_scheduler: scheduler factory called with the optimizer, stepped every ``scheduler_interval``.
            Default: none (constant learning rate)
        scheduler_interval: ``'epoch'`` or ``'step'``. Default: ``'epoch'``
        weight_decay: L2 weight decay of all parameters except, when ``norm_weight_decay`` is set, those
            of normalization layers. Default: 5e-4
        norm_weight_decay: weight decay of the normalization layers' parameters (affine, mixture logits,
            gates; :func:`dynnorm.param_groups`); ``0.0`` is the SN authors' detection/segmentation
            setting, ``None`` decays them like the rest. Default: None
        mixture_lr_mult: put the mixture logits (SN/SSN logits, DN gates; :func:`dynnorm.mixture_parameters`)
            in an optimizer group of their own, without weight decay, at this multiple of the optimizer's
            learning rate; ``0.1`` is the SSN authors' setting. ``None`` treats them as the other
            normalization parameters. Default: None
        label_smoothing: of the cross-entropy loss. Default: 0.0

    Logs ``train_loss``, ``train_acc1``, ``val_loss``, ``val_acc1`` (and ``val_acc5`` with more than 5
    classes); ``test_*`` likewise.

    >>> model = ImageClassifier(norm="SN", num_classes=3, backbone_options={"depth": 8})
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 3])
    """

    def __init__(
        self,
        backbone: Literal["cifar_resnet", "resnet18", "resnet50", "mobilenet_v2"] = "cifar_resnet",
        norm: NormSetting = "BN",
        num_classes: int = 10,
        backbone_options: Optional[dict] = None,
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        weight_decay: float = 5e-4,
        norm_weight_decay: Optional[float] = None,
        mixture_lr_mult: Optional[float] = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"Unknown backbone {backbone!r}; available: {sorted(BACKBONES)}")
        # Only primitive values go into the checkpoint, so it loads under torch's weights_only default.
        self.save_hyperparameters(ignore=["norm", "optimizer", "lr_scheduler"])
        try:
            self.save_hyperparameters({"norm": norm_spec(norm)})
        except ValueError as error:
            rank_zero_warn(f"{error}; the checkpoint will not record it: pass norm= to load_from_checkpoint")
        self.model = build_backbone(backbone, num_classes, resolve_norm(norm), **(backbone_options or {}))
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        metrics = {"acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
        if num_classes > 5:
            metrics["acc5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        self.train_metrics = MetricCollection({"acc1": metrics["acc1"].clone()}, prefix="train_")
        self.val_metrics = MetricCollection(metrics, prefix="val_")
        self.test_metrics = self.val_metrics.clone(prefix="test_")

    def forward(self, images: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` images -> ``(N, num_classes)`` logits."""
        return self.model(images)

    def _step(self, batch: tuple[Tensor, Tensor], split: str, metrics: MetricCollection) -> Tensor:
        images, targets = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        metrics.update(logits, targets)
        on_step = split == "train"
        self.log(f"{split}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=not on_step,
                 batch_size=images.shape[0])
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_metrics)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val", self.val_metrics)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test", self.test_metrics)

    def parameter_groups(self, lr: Optional[float] = None) -> list[dict]:
        """Optimizer groups (:func:`dynnorm.param_groups`): everything at ``weight_decay``, or the
        normalization layers' parameters at ``norm_weight_decay`` when it is set; with ``mixture_lr_mult``,
        the mixture logits at learning rate ``lr * mixture_lr_mult`` without weight decay (``lr``: the
        optimizer's learning rate)."""
        weight_decay, norm_weight_decay = self.hparams.weight_decay, self.hparams.norm_weight_decay
        mixture_lr_mult = self.hparams.mixture_lr_mult
        if norm_weight_decay is None and mixture_lr_mult is None:
            return [{"params": [p for p in self.parameters() if p.requires_grad], "weight_decay": weight_decay}]
        norm_weight_decay = weight_decay if norm_weight_decay is None else norm_weight_decay
        return dynnorm.param_groups(self, weight_decay, norm_weight_decay, lr=lr, mixture_lr_mult=mixture_lr_mult)

    def configure_optimizers(self):
        if self.hparams.mixture_lr_mult is None:
            optimizer = self.optimizer(self.parameter_groups())
        else:
            # The logits' rate is relative to the optimizer's, which the optimizer factory holds: read it
            # from an optimizer over the plain groups, then build the real one (no state exists yet).
            base_lr = self.optimizer([{"params": [p for p in self.parameters() if p.requires_grad]}]).defaults["lr"]
            optimizer = self.optimizer(self.parameter_groups(lr=base_lr))
        requested = optimizer.defaults.get("weight_decay")
        class_default = inspect.signature(type(optimizer)).parameters.get("weight_decay")
        if requested not in (None, self.hparams.weight_decay) and (class_default is None or requested != class_default.default):
            rank_zero_warn(f"the optimizer's weight_decay={requested} is overridden by the model's "
                           f"weight_decay={self.hparams.weight_decay} (set it on the model)")
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval,
                                 "monitor": "val_loss"}}
