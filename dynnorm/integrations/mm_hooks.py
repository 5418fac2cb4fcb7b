"""mmengine hooks for models with dynnorm layers.

- :class:`DynNormEvalHook`: honours a backbone's ``norm_eval=True`` for dynnorm layers (mmdet/mmseg backbones
  only put ``_BatchNorm`` layers in eval mode).
- :class:`DynNormSyncHook`: gives dynnorm layers cross-process batch statistics when the Runner converts
  BatchNorm to SyncBN (``sync_bn='torch'`` in the config), instead of leaving them local.
- :class:`ImportanceRatioHook`: records every layer's learned ratios (``dynnorm.importance_ratios``) during
  training and writes their history (JSON) and the per-layer figure (PNG) at the end of the run.
- :class:`ClipMixtureGradNormHook`: clips the mixture logits' gradient norm before every optimizer step
  (``dynnorm.clip_mixture_grad_norm``; the SSN authors' clipping to 1).
- :class:`RecalibrateBatchStatisticsHook`: re-estimates the running statistics from training batches before
  every validation (``dynnorm.recalibrate``).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..convert import is_dynnorm
from ..optim import clip_mixture_grad_norm, mixture_parameters
from ..ratios import importance_ratios
from ..recalibrate import recalibrate, repeat_batches

DATA_BATCH = dict | tuple | list | None


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def apply_norm_eval(model: nn.Module) -> int:
    """Put the dynnorm layers under every training module with ``norm_eval=True`` in eval mode.

    The counterpart, for dynnorm layers, of what mmdet/mmseg backbones do to ``_BatchNorm`` layers in
    ``train()``: the BN term then uses the running statistics, which stop updating. Returns the number of
    layers put in eval mode.
    """
    count = 0
    for module in model.modules():
        if module.training and getattr(module, "norm_eval", False) is True:
            for layer in module.modules():
                if is_dynnorm(layer) and layer.training:
                    layer.eval()
                    count += 1
    return count


def set_sync_batch_stats(model: nn.Module, enabled: bool = True) -> int:
    """Switch cross-process batch statistics on (or off) in every dynnorm layer that uses batch statistics.

    Returns the number of layers switched. Layers fall back to local statistics when not distributed.
    """
    count = 0
    for layer in model.modules():
        if is_dynnorm(layer) and layer.uses_batch_statistics and layer.sync_batch_stats != enabled:
            layer.sync_batch_stats = enabled
            count += 1
    return count


class DynNormEvalHook(Hook):
    """Honour ``norm_eval=True`` for dynnorm layers.

    mmdet and mmseg backbones (ResNet, MobileNetV2, ...) implement ``norm_eval`` in ``train()`` with
    ``isinstance(m, _BatchNorm)``, which skips dynnorm layers: they would keep training their statistics.
    This hook runs after the train loop's ``model.train()`` (before every iteration) and puts the dynnorm
    layers of every submodule with ``norm_eval=True`` in eval mode. The shipped dynnorm configs train with
    ``norm_eval=False`` (live statistics, as the SN authors did); the hook makes ``norm_eval=True`` mean the
    same for dynnorm layers as for BatchNorm. ``frozen_stages`` needs no hook (it evals whole stages).

    Examples::

        custom_hooks = [dict(type='DynNormEvalHook')]
        model = dict(backbone=dict(norm_cfg=dict(type='SN'), norm_eval=True))
    """

    priority = "VERY_HIGH"

    def __init__(self) -> None:
        self._reported = False

    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        count = apply_norm_eval(_unwrap(runner.model))
        if not self._reported:
            self._reported = True
            if count:
                runner.logger.info(f"DynNormEvalHook: {count} dynnorm layers under norm_eval=True modules "
                                   "use their running statistics (eval mode)")


class DynNormSyncHook(Hook):
    """Synchronized batch statistics for dynnorm layers in distributed training.

    The Runner's ``sync_bn='torch'|'mmcv'`` converts ``_BatchNorm`` layers only. With this hook, the same
    config key (or ``enabled=True``) switches on ``sync_batch_stats`` in every dynnorm layer that uses batch
    statistics, when the run is distributed; dynnorm layers are never replaced by torch's SyncBatchNorm,
    which would drop their extra parameters. (``norm_cfg=dict(type='SyncSN')`` etc. are synchronized
    already and need no hook.)

    Args:
        enabled: ``None`` follows the config's ``sync_bn``; ``True``/``False`` force it.

    Examples::

        sync_bn = 'torch'
        custom_hooks = [dict(type='DynNormSyncHook')]
    """

    priority = "VERY_HIGH"

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled not in (None, True, False):
            raise ValueError(f"enabled must be None, True or False, got {enabled!r}")
        self.enabled = enabled

    def before_run(self, runner) -> None:
        enabled = bool(runner.cfg.get("sync_bn")) if self.enabled is None else self.enabled
        if not (enabled and runner.distributed):
            return
        count = set_sync_batch_stats(_unwrap(runner.model), True)
        runner.logger.info(f"DynNormSyncHook: {count} dynnorm layers synchronize their batch statistics "
                           f"across {runner.world_size} processes")


class ImportanceRatioHook(Hook):
    """Record the learned ratios of every dynnorm layer during training and plot them at the end.

    Every ``interval`` training iterations (and before the first and after the last) the hook stores
    ``dynnorm.importance_ratios(model)`` (SN/SSN: mean and variance ratios of IN/LN/BN; EN: its batch-averaged
    ratios; DN: gates), and sends the per-normalizer average over layers to the visualizer's backends
    (``ratio/<kind>_<normalizer>`` scalars). After training, the main process writes to ``out_dir`` (default:
    the run's log directory):

    - ``importance_ratios.json``: ``{"history": [{"iter": i, "ratios": {layer: {kind: {normalizer: r}}}}, ...]}``;
    - ``importance_ratios.png``: the final ratios per layer (:func:`dynnorm.plotting.plot_importance_ratios`),
      when the model has IN/LN/BN ratios (SN, SSN, EN).

    The history is stored in checkpoints, so a resumed run writes the whole of it.

    Args:
        interval: record every ``interval`` training iterations. Default: 100
        out_dir: folder for the files; ``None`` for the run's log directory. Default: None

    Examples::

        custom_hooks = [dict(type='ImportanceRatioHook', interval=500)]
    """

    priority = "LOW"  # after the optimizer step, before CheckpointHook saves (VERY_LOW)
    checkpoint_key = "dynnorm_importance_ratios"

    def __init__(self, interval: int = 100, out_dir: str | os.PathLike | None = None) -> None:
        if not isinstance(interval, int) or interval <= 0:
            raise ValueError(f"interval must be a positive int, got {interval!r}")
        self.interval = interval
        self.out_dir = out_dir
        self.history: list[dict] = []

    def _record(self, runner, iteration: int) -> None:
        ratios = importance_ratios(_unwrap(runner.model))
        if not ratios or (self.history and self.history[-1]["iter"] == iteration):
            return
        self.history.append({"iter": iteration, "ratios": ratios})
        averages: dict[str, list[float]] = {}
        for kinds in ratios.values():
            for kind, values in kinds.items():
                for normalizer, value in values.items():
                    averages.setdefault(f"ratio/{kind}_{normalizer}", []).append(value)
        runner.visualizer.add_scalars({k: sum(v) / len(v) for k, v in averages.items()}, step=iteration)

    def before_train(self, runner) -> None:
        # After a resume the loaded history runs up to the checkpoint; after load_from it belongs to another run.
        self.history = [entry for entry in self.history if entry["iter"] < runner.iter]
        self._record(runner, runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None, outputs=None) -> None:
        if self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner):
            self._record(runner, runner.iter + 1)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[self.checkpoint_key] = self.history

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.history = list(checkpoint.get(self.checkpoint_key, []))

    def after_train(self, runner) -> None:
        self._record(runner, runner.iter)
        self._write(runner)

    @master_only
    def _write(self, runner) -> None:
        if not self.history:
            print_log("ImportanceRatioHook: the model has no dynnorm layer with learned ratios; nothing to write",
                      logger="current", level=logging.WARNING)
            return
        out_dir = Path(self.out_dir if self.out_dir is not None else runner.log_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path = out_dir / "importance_ratios.json"
        temporary = json_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps({"history": self.history}))
        os.replace(temporary, json_path)
        written = [json_path]
        try:
            from ..plotting import plot_importance_ratios

            final = self.history[-1]
            written.append(plot_importance_ratios(
                final["ratios"], out_dir / "importance_ratios.png",
                title=f"Learned importance ratios after {final['iter']} iterations"))
        except ValueError as error:  # only ratios that are not IN/LN/BN mixtures (DN gates)
            print_log(f"ImportanceRatioHook: no figure ({error})", logger="current", level=logging.WARNING)
        runner.logger.info("ImportanceRatioHook: wrote " + ", ".join(str(p) for p in written))


class ClipMixtureGradNormHook(Hook):
    """Clip the gradient norm of the mixture logits before every optimizer step, as the SSN authors did.

    mmengine has no hook point between ``backward()`` and the optimizer step (both run inside the model's
    ``train_step``, through the ``OptimWrapper``), and the wrapper's ``clip_grad`` clips all parameters
    together. So the hook registers a step pre-hook on each torch optimizer of the run
    (``Optimizer.register_step_pre_hook``) for the training's duration: it runs exactly before every update,
    after gradient accumulation, after ``clip_grad``, and with ``AmpOptimWrapper`` after the loss scaler
    unscaled the gradients (a step skipped for non-finite gradients is skipped by the hook too). It clips the
    mixture logits (``dynnorm.mixture_parameters``: SN/SSN logits, DN gates) that the optimizer updates,
    taken together, to ``max_norm`` (``dynnorm.clip_mixture_grad_norm``).

    Args:
        max_norm: the largest gradient norm of the logits. Default: 1.0 (the SSN authors')
        norm_type: the norm's ``p``. Default: 2.0

    Examples::

        custom_hooks = [dict(type='ClipMixtureGradNormHook', max_norm=1.0)]
    """

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0) -> None:
        if not max_norm >= 0:
            raise ValueError(f"max_norm must be non-negative, got {max_norm!r}")
        self.max_norm = max_norm
        self.norm_type = norm_type
        self._handles: list[RemovableHandle] = []

    def before_train(self, runner) -> None:
        self.after_train(runner)
        wrappers = runner.optim_wrapper.values() if isinstance(runner.optim_wrapper, OptimWrapperDict) \
            else [runner.optim_wrapper]
        logits = mixture_parameters(_unwrap(runner.model))
        for wrapper in wrappers:
            optimizer = wrapper.optimizer
            updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
            own = [p for p in logits if id(p) in updated]
            if own:
                self._handles.append(optimizer.register_step_pre_hook(self._clipping(own)))

    def _clipping(self, logits: list[nn.Parameter]):
        """An optimizer step pre-hook that clips ``logits``' gradient norm (and leaves the step's arguments)."""
        def clip(optimizer, args, kwargs) -> None:
            clip_mixture_grad_norm(logits, self.max_norm, self.norm_type)

        return clip

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def tensor_mode_forward(model: nn.Module, data_batch: DATA_BATCH) -> object:
    """Run an mmengine ``BaseModel`` on a training batch without a loss: its data preprocessor in training
    mode, then ``model(..., mode='tensor')`` (detectors: backbone, neck and heads' raw outputs)."""
    data = model.data_preprocessor(data_batch, True)
    return model(**data, mode="tensor") if isinstance(data, dict) else model(*data, mode="tensor")


class RecalibrateBatchStatisticsHook(Hook):
    """Re-estimate the running statistics from training batches before every validation.

    Before each validation epoch, ``dynnorm.recalibrate`` replaces the running mean and variance of every
    BatchNorm and batch-statistics dynnorm layer by their average over ``num_batches`` batches of the
    runner's training loader (again from its start when it holds fewer) with the current weights, the
    evaluation protocol of the first SN release. Each batch goes through the model's data preprocessor (in
    training mode) and the model's ``mode='tensor'`` forward (:func:`tensor_mode_forward`), which runs the
    network without a loss (detectors: backbone, neck and heads on test-time proposals); layers it does not
    reach keep their statistics. The statistics stay recalibrated afterwards (checkpoints saved later hold
    them; training continues its running averages from them). Needs a training loader: validation during
    ``runner.train()``.

    Args:
        num_batches: training batches to average over. Default: 200 (the SN authors')

    Examples::

        custom_hooks = [dict(type='RecalibrateBatchStatisticsHook', num_batches=200)]
    """

    priority = "VERY_HIGH"  # before any hook that evaluates or saves at the start of validation

    def __init__(self, num_batches: int = 200) -> None:
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches <= 0:
            raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")
        self.num_batches = num_batches

    def before_val_epoch(self, runner) -> None:
        loader = runner.train_dataloader
        count = recalibrate(_unwrap(runner.model), repeat_batches(loader), self.num_batches, tensor_mode_forward)
        runner.logger.info(f"RecalibrateBatchStatisticsHook: running statistics averaged over {count} training batches")
