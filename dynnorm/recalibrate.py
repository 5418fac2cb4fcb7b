"""Re-estimate running statistics from training batches with the final weights (the SN authors' "batch average")."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._base import DynNormBase


def running_statistics_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of ``model`` that evaluate with running statistics, in module order.

    Torch's BatchNorm (``_BatchNorm``: ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``) and the dynnorm layers with
    batch statistics (SN, SSN, EN, DN, DN-B, DN-C), each only with ``track_running_stats=True``.
    """
    return [m for m in model.modules()
            if (isinstance(m, _BatchNorm) or (isinstance(m, DynNormBase) and m.uses_batch_statistics))
            and m.track_running_stats]


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable, num_batches: int = 200,
                forward: Callable[[nn.Module, Any], Any] | None = None) -> int:
    """Replace the running statistics of every batch-statistics layer by their average over ``num_batches`` batches.

    Running averages lag behind the weights and, with small batches or a slow decay (the SN authors'
    ``momentum=0.003``), average few or stale batches. This recomputes them with the current weights, as the
    first SN release did before evaluation (200 training batches). Each layer of
    :func:`running_statistics_layers` gets

    - ``running_mean``: the mean over the batches of the batch means it normalized with;
    - ``running_var``: the mean over the batches of its unbiased batch variances,

    the equal-weight average of exactly what it stores after every training batch (torch's ``momentum=None``
    cumulative average, which this function uses; ``torch.optim.swa_utils.update_bn`` does the same for
    BatchNorm). It estimates the variance each layer normalized with during training. The original SN
    helper pooled instead: ``E[x^2] - E[x]^2`` over all batches together, the variance of the union of the
    batches, which adds the spread of the batch means between batches: with 2 images per batch that is a
    large term the network never normalized with (and ``E[x^2] - E[x]^2`` loses precision in float32).

    The passes run under ``torch.no_grad()`` with the recalibrated layers in training mode and every other
    module in evaluation mode (dropout off: the layers see the activations they will see at evaluation).
    Nothing else changes: parameters (an SSN layer's logits freeze only when gradients are enabled), each
    module's ``training`` flag, each layer's ``momentum`` and ``num_batches_tracked`` are as before, also
    when a pass raises, in which case the previous running statistics are restored too. A layer that no pass
    reached (e.g. an auxiliary head outside ``forward``) keeps its statistics. Under DDP every process
    recalibrates on its own batches; with synchronized batch statistics all processes must pass the same
    number of batches.

    Args:
        model: the network.
        batches: an iterable of batches, e.g. a training ``DataLoader`` (same transforms as training; what
            ``forward`` receives, on the model's device).
        num_batches: batches to average over; fewer when ``batches`` runs out first. Default: 200
        forward: ``forward(model, batch)`` runs the model on one batch. Default: ``model(batch)``

    Returns:
        The number of batches averaged over.

    Raises:
        ValueError: ``num_batches`` is not a positive int, or ``batches`` yields nothing.

    Examples::

        >>> import dynnorm
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), dynnorm.SwitchNorm2d(8), nn.ReLU(), nn.BatchNorm2d(8))
        >>> loader = [(torch.randn(2, 3, 16, 16), torch.tensor([0, 1])) for _ in range(10)]
        >>> dynnorm.recalibrate(model, loader, forward=lambda m, batch: m(batch[0]))
        10
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches <= 0:
        raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")
    layers = running_statistics_layers(model)
    if not layers:
        return 0
    run = forward if forward is not None else (lambda module, batch: module(batch))
    modes = [(module, module.training) for module in model.modules()]
    saved = [(layer, layer.momentum, layer.running_mean.clone(), layer.running_var.clone(),
              layer.num_batches_tracked.clone()) for layer in layers]
    count = 0
    completed = False
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            layer.train()
        for batch in itertools.islice(batches, num_batches):
            run(model, batch)
            count += 1
        if count == 0:
            raise ValueError("recalibrate got no batches: the running statistics are left as they were")
        completed = True
    finally:
        for layer, momentum, mean, var, tracked in saved:
            if not completed or int(layer.num_batches_tracked) == 0:
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
            layer.num_batches_tracked.copy_(tracked)
            layer.momentum = momentum
        for module, training in modes:
            module.training = training
    return count


def repeat_batches(loader: Iterable) -> Iterator:
    """The batches of ``loader`` pass after pass, for :func:`recalibrate` on a loader shorter than ``num_batches``.

    A shuffling sampler gives new batches on each pass. Ends at once when ``loader`` yields nothing.

    Examples::

        >>> list(itertools.islice(repeat_batches([1, 2]), 5))
        [1, 2, 1, 2, 1]
    """
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return
