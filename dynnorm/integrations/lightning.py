"""Lightning support for dynnorm layers: cross-process batch statistics, logging of their learned ratios, the
SSN authors' training recipe and recalibrated running statistics.

- :class:`SyncDynNorm`, a ``LayerSync`` plugin: ``Trainer(strategy='ddp', plugins=[SyncDynNorm()])`` is what
  ``sync_batchnorm=True`` is for torch's BatchNorm (which it also converts, by default), for every dynnorm
  layer with batch statistics (SN, SSN, EN, DN, DN-B, DN-C).
- :class:`ImportanceRatioLogger`, a ``Callback``: logs :func:`dynnorm.importance_ratios` every epoch and
  writes the per-layer figure (:func:`dynnorm.plotting.plot_importance_ratios`) at the end of fit.
- :class:`SparsestMaxRadiusSchedule`, a ``Callback``: the SSN authors' linear radius schedule.
- :class:`ClipMixtureGradNorm`, a ``Callback``: clips the mixture logits' gradient norm before every
  optimizer step (:func:`dynnorm.clip_mixture_grad_norm`; the SSN authors' clipping to 1).
- :class:`RecalibrateBatchStatistics`, a ``Callback``: re-estimates the running statistics from training
  batches before every validation (:func:`dynnorm.recalibrate`).

Needs ``pip install 'dynnorm[lightning]'``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
    from lightning.pytorch.plugins import LayerSync, TorchSyncBatchNorm
    from lightning.pytorch.trainer.states import TrainerFn
    from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("dynnorm.integrations.lightning requires Lightning: pip install 'dynnorm[lightning]'") from error
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from .._base import DynNormBase
from ..optim import clip_mixture_grad_norm, mixture_parameters
from ..plotting import COLOURS, plot_importance_ratios
from ..ratios import importance_ratios
from ..recalibrate import recalibrate, repeat_batches
from ..sparse import set_sparsestmax_radius


def _cpu_backend() -> bool:
    """True in a process group on the gloo backend (CPU training), where torch's SyncBatchNorm cannot run."""
    return dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo"


def batch_statistics_layers(model: nn.Module) -> list[DynNormBase]:
    """The dynnorm layers of ``model`` that compute batch statistics (and so can synchronize them)."""
    return [m for m in model.modules() if isinstance(m, DynNormBase) and m.uses_batch_statistics]


class SyncDynNorm(LayerSync):
    """Synchronize the batch statistics of dynnorm layers across the processes of a distributed run.

    Lightning's DDP/FSDP strategies call :meth:`apply` before fitting and :meth:`revert` after it (single
    device runs do not call it). :meth:`apply` sets ``sync_batch_stats = True`` on every dynnorm layer with
    batch statistics, so each computes its batch mean and variance over the global batch (one all-reduce
    per layer, with gradients flowing to every process); :meth:`revert` restores each layer's previous
    setting. With ``torch_batchnorm=True`` torch's BatchNorm layers are converted to ``SyncBatchNorm`` as
    ``sync_batchnorm=True`` does (the two options cannot be combined in one Trainer), except on the CPU
    (gloo) backend, where torch's ``SyncBatchNorm`` cannot run: they then keep per-process statistics,
    with a warning.

    Args:
        torch_batchnorm: also synchronize ``nn.BatchNorm*`` layers. Default: True

    Examples::

        trainer = Trainer(accelerator="gpu", devices=8, strategy="ddp", plugins=[SyncDynNorm()])
    """

    def __init__(self, torch_batchnorm: bool = True) -> None:
        self.torch_batchnorm = torch_batchnorm
        self._previous: list[tuple[DynNormBase, bool]] = []

    def apply(self, model: nn.Module) -> nn.Module:
        if self.torch_batchnorm and _cpu_backend():
            if any(isinstance(m, _BatchNorm) for m in model.modules()):
                rank_zero_warn("torch's SyncBatchNorm does not run on CPU (gloo): BatchNorm layers keep "
                               "per-process statistics; dynnorm layers are synchronized")
        elif self.torch_batchnorm:
            model = TorchSyncBatchNorm().apply(model)
        self._previous = [(layer, layer.sync_batch_stats) for layer in batch_statistics_layers(model)]
        for layer, _ in self._previous:
            layer.sync_batch_stats = True
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        for layer, previous in self._previous:
            layer.sync_batch_stats = previous
        self._previous = []
        if self.torch_batchnorm and any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
            model = TorchSyncBatchNorm().revert(model)
        return model


def _plottable(ratios: dict[str, dict[str, dict[str, float]]]) -> bool:
    return any(set(values) <= set(COLOURS) for kinds in ratios.values() for values in kinds.values())


class ImportanceRatioLogger(Callback):
    """Log every dynnorm layer's learned ratios and plot them per layer when fitting ends.

    Every ``log_every_n_epochs`` training epochs it logs ``ratios/<layer>/<kind>/<normalizer>`` (e.g.
    ``ratios/layer1.0.bn1/mean/BN``; the values of :func:`dynnorm.importance_ratios`: SN/SSN mixture
    weights, EN's batch-averaged ratios, DN's gates) to the trainer's loggers (``logger.log_metrics`` at the
    current step; they are not in ``trainer.callback_metrics``, so not monitorable). At the end of fit, global
    rank 0 writes ``filename`` (IN/LN/BN ratios: SN, SSN, EN) into ``dirpath``, by default the logger's
    folder (``trainer.log_dir``). Models without such layers are left alone.

    Args:
        log_every_n_epochs: logging period in epochs. Default: 1
        filename: the figure's file name. Default: ``importance_ratios.png``
        dirpath: folder of the figure. Default: ``trainer.log_dir``

    Attributes:
        plot_path: the figure written by the last fit, or ``None``.

    Examples::

        trainer = Trainer(max_epochs=30, callbacks=[ImportanceRatioLogger(log_every_n_epochs=5)])
    """

    def __init__(self, log_every_n_epochs: int = 1, filename: str = "importance_ratios.png",
                 dirpath: Optional[str] = None) -> None:
        if log_every_n_epochs < 1:
            raise ValueError(f"log_every_n_epochs must be positive, got {log_every_n_epochs!r}")
        self.log_every_n_epochs = log_every_n_epochs
        self.filename = filename
        self.dirpath = dirpath
        self.plot_path: Optional[Path] = None

    @staticmethod
    def flatten(ratios: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
        """``{'ratios/<layer>/<kind>/<normalizer>': value}``."""
        return {f"ratios/{layer}/{kind}/{name}": float(value)
                for layer, kinds in ratios.items() for kind, values in kinds.items() for name, value in values.items()}

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.log_every_n_epochs:
            return
        metrics = self.flatten(importance_ratios(pl_module))
        # The ratios are parameters, identical on every rank: straight to the loggers (which write on
        # rank 0 only), without the reductions and bookkeeping of self.log.
        for logger in trainer.loggers if metrics else ():
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = self.dirpath or trainer.log_dir or trainer.default_root_dir  # log_dir is collective: every rank
        ratios = importance_ratios(pl_module)
        if not trainer.is_global_zero or not _plottable(ratios):
            return
        self.plot_path = plot_importance_ratios(ratios, Path(os.fspath(folder)) / self.filename,
                                                title=f"Learned importance ratios after {trainer.global_step} steps")
        rank_zero_info(f"Importance ratios plotted in {self.plot_path}")


class SparsestMaxRadiusSchedule(Callback):
    """Grow the SparsestMax radius of every SSN layer linearly over training, as the SSN authors do.

    Before each training batch it sets ``radius = final_radius * min(step / total_steps, 1)`` with
    ``total_steps = trainer.estimated_stepping_batches`` (:func:`dynnorm.set_sparsestmax_radius`). With three
    normalizers the mixtures are all one-hot once the radius passes ``sqrt(2/3)``, about 0.82.

    Args:
        final_radius: radius at the end of training. Default: 1.0 (the authors' ``r = step / total``)

    Examples::

        trainer = Trainer(max_epochs=30, callbacks=[SparsestMaxRadiusSchedule()])
    """

    def __init__(self, final_radius: float = 1.0) -> None:
        if final_radius < 0:
            raise ValueError(f"final_radius must be non-negative, got {final_radius!r}")
        self.final_radius = final_radius

    def radius(self, trainer: Trainer) -> float:
        total = max(float(trainer.estimated_stepping_batches), 1.0)
        return self.final_radius * min(trainer.global_step / total, 1.0)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        set_sparsestmax_radius(pl_module, self.radius(trainer))


class ClipMixtureGradNorm(Callback):
    """Clip the gradient norm of the mixture logits before every optimizer step, as the SSN authors did.

    In ``on_before_optimizer_step`` (after gradient accumulation and, with mixed precision, after the
    gradients are unscaled; before ``gradient_clip_val`` clips all parameters) it clips the mixture logits
    (:func:`dynnorm.mixture_parameters`: SN/SSN logits, DN gates) that the optimizer updates, taken
    together, to ``max_norm`` (:func:`dynnorm.clip_mixture_grad_norm`). Other gradients are untouched.

    Args:
        max_norm: the largest gradient norm of the logits. Default: 1.0 (the SSN authors')
        norm_type: the norm's ``p``. Default: 2.0

    Examples::

        trainer = Trainer(callbacks=[ClipMixtureGradNorm(max_norm=1.0), SparsestMaxRadiusSchedule()])
    """

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0) -> None:
        if not max_norm >= 0:
            raise ValueError(f"max_norm must be non-negative, got {max_norm!r}")
        self.max_norm = max_norm
        self.norm_type = norm_type

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
        logits = [p for p in mixture_parameters(pl_module) if id(p) in updated]
        if logits:
            clip_mixture_grad_norm(logits, self.max_norm, self.norm_type)


def first_item(module: nn.Module, batch: Any) -> Any:
    """Run ``module`` on a batch's input: ``module(batch[0])`` for ``(input, target, ...)`` batches, else
    ``module(batch)``."""
    return module(batch[0] if isinstance(batch, (tuple, list)) else batch)


class RecalibrateBatchStatistics(Callback):
    """Re-estimate the running statistics from training batches before every validation.

    At ``on_validation_start`` during ``fit`` (not during the sanity check), :func:`dynnorm.recalibrate`
    replaces the running mean and variance of every BatchNorm and batch-statistics dynnorm layer by their
    average over ``num_batches`` training batches with the current weights, the evaluation protocol of the
    first SN release. The batches come from the trainer's training loader (again from its start when it
    holds fewer), moved to the device by the module's batch-transfer hooks and run under the trainer's
    precision context. The statistics stay recalibrated afterwards: checkpoints saved at validation hold
    them, and training continues its running averages from them. Meant for validation at epoch ends: a
    validation in the middle of an epoch (``val_check_interval < 1``) with ``persistent_workers=True``
    would restart the training loader's iterator.

    Args:
        num_batches: training batches to average over. Default: 200 (the SN authors')
        forward: ``forward(pl_module, batch)`` runs the model on one training batch. Default:
            :func:`first_item`, ``pl_module(batch[0])`` for ``(images, targets)`` batches

    Examples::

        trainer = Trainer(callbacks=[RecalibrateBatchStatistics(num_batches=200)])
    """

    def __init__(self, num_batches: int = 200, forward: Callable[[nn.Module, Any], Any] = first_item) -> None:
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches <= 0:
            raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")
        self.num_batches = num_batches
        self.forward = forward

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        strategy, precision = trainer.strategy, trainer.precision_plugin
        batches = (strategy.batch_to_device(batch) for batch in repeat_batches(trainer.train_dataloader))

        def run(module: nn.Module, batch: Any) -> Any:
            with precision.train_step_context():
                return self.forward(module, batch)

        count = recalibrate(pl_module, batches, self.num_batches, run)
        rank_zero_info(f"RecalibrateBatchStatistics: running statistics averaged over {count} training batches")
