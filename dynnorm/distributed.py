"""Batch statistics across processes.

A synchronized layer all-reduces, over its process group, the per-channel sums that the batch statistics
are made of, with torch's functional all-reduce, whose autograd sends the gradients back to every
rank's input. Outside an initialized process group (or with one process) the local statistics are used,
so the same model runs unchanged on one device.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .functional import pooled_moments


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


def batch_moments(
    instance_mean: Tensor, instance_var: Tensor, sync: bool, process_group: object | None = None
) -> tuple[Tensor, Tensor, int]:
    """Batch-norm statistics from per-(sample, channel) moments, optionally over all ranks.

    Args:
        instance_mean: ``(N, C)`` per-sample channel means (``N`` may be 0 on some ranks).
        instance_var: ``(N, C)`` per-sample biased channel variances.
        sync: all-reduce over ``process_group`` when distributed with more than one process.

    Returns:
        ``(mean, var, num_samples)``: ``(1, C)`` batch mean and biased variance, and the number of samples
        they were computed from (summed over ranks when synchronized).
    """
    if not sync or world_size(process_group) == 1:
        mean, var = pooled_moments(instance_mean, instance_var, dim=0)
        return mean, var, instance_mean.shape[0]

    num_samples = instance_mean.new_full((1,), float(instance_mean.shape[0]))
    sums = torch.cat(
        [instance_mean.sum(0), (instance_var + instance_mean.square()).sum(0), num_samples]
    )
    sums = all_reduce_sum(sums, process_group)
    channels = instance_mean.shape[1]
    total = sums[-1]
    mean = sums[:channels] / total
    # E[x^2] - E[x]^2 needs one all-reduce instead of two; accumulated in float32/64, clamped at 0.
    var = (sums[channels : 2 * channels] / total - mean.square()).clamp_min(0)
    return mean.unsqueeze(0), var.unsqueeze(0), int(total.item())
