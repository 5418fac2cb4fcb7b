"""Batch statistics across processes.

A synchronized layer gathers, over its process group, each rank's sample count and per-channel batch mean
and variance, and merges them with the parallel-variance formula (the variance of the union is the
count-weighted mean of the variances plus the spread of the means), as torch's ``SyncBatchNorm`` merges
Welford statistics: nothing is computed as ``E[x^2] - E[x]^2``, so a large input offset costs no precision.
The gather is an all-reduce of a zero-padded ``(world, 2C + 1)`` table, whose autograd sums every rank's
gradient of every row, so gradients reach the inputs of all ranks. Outside an initialized process group (or
with one process) the local statistics are used, so the same model runs unchanged on one device.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .functional import BatchMoments, pooled_moments


def world_size(process_group: object | None = None) -> int:
    """Number of processes in ``process_group`` (the default group if ``None``); 1 when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


def all_reduce_sum(tensor: Tensor, process_group: object | None = None) -> Tensor:
    """Differentiable sum over the processes of ``process_group``: the backward all-reduces the gradients.

    The functional collective ops are called with the group's name rather than through
    ``_functional_collectives.all_reduce``: that wrapper keeps references to the process group alive
    after ``destroy_process_group()``, so gloo's worker threads outlive it and can abort the process at
    interpreter exit. Importing ``_functional_collectives`` registers the ops' autograd formulas.
    """
    import torch.distributed._functional_collectives  # noqa: F401  (registers the autograd of the ops)

    group = process_group if process_group is not None else dist.group.WORLD
    ops = torch.ops._c10d_functional
    return ops.wait_tensor(ops.all_reduce(tensor, "sum", group.group_name))


def merge_moments(counts: Tensor, means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance ``(C,)`` of the union of sets with sizes ``counts (R, 1)``, means and biased
    variances ``(R, C)`` (the parallel-variance formula; empty sets contribute nothing)."""
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    variance = (counts * (variances + (means - mean).square())).sum(0) / total
    return mean, variance


def synchronized_batch_moments(process_group: object | None = None) -> BatchMoments:
    """A ``batch_moments`` for :mod:`dynnorm.functional`: batch statistics over all ranks of ``process_group``.

    The returned function maps ``(N, C)`` instance moments (means relative to this rank's reference value
    ``R``; ``N`` may differ between ranks, or be 0) to the ``(1, C)`` mean (relative to ``R``) and biased
    variance of the global batch and the number of values per channel. Ranks exchange their ``R`` with their
    relative means, and the merge works relative to their count-weighted average, so offsets stay out of the sums. The
    count is read on the host (one synchronization), as the unbiased running variance needs it.
    """
    def moments(mean: Tensor, var: Tensor, reference: Tensor, values_per_sample: int) -> tuple[Tensor, Tensor, int]:
        ranks, rank = world_size(process_group), dist.get_rank(process_group)
        channels = mean.shape[1]
        if mean.shape[0] > 0:
            local_mean, local_var = pooled_moments(mean, var, dim=0)
        else:  # an empty rank still takes part in the collective, with weight 0
            local_mean = local_var = mean.new_zeros(1, channels) + 0 * mean.sum()
        count = mean.new_full((1, 1), float(mean.shape[0]))
        row = torch.cat([count, reference.reshape(1, 1).to(mean.dtype), local_mean, local_var], dim=1)
        table = torch.cat([row.new_zeros(rank, row.shape[1]), row, row.new_zeros(ranks - rank - 1, row.shape[1])])
        table = all_reduce_sum(table, process_group)
        counts, references = table[:, :1], table[:, 1:2].detach()
        shared = (counts.detach() * references).sum() / counts.detach().sum()
        means = table[:, 2:channels + 2] + (references - shared)  # every rank's means relative to the shared R
        batch_mean, batch_var = merge_moments(counts, means, table[:, channels + 2:])
        batch_mean = batch_mean + (shared - reference)  # back to this rank's R
        return batch_mean.unsqueeze(0), batch_var.unsqueeze(0), int(counts.sum().item()) * values_per_sample

    return moments
