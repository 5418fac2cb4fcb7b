"""The state every dynnorm layer shares: affine parameters, running statistics, input checks, batch statistics."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from . import functional as F
from .distributed import batch_moments, world_size


def head_hidden_size(num_features: int, reduction: int) -> int:
    """Hidden width ``max(C // reduction, 4)`` of a layer's small statistics head (EN's ratio head, DN-B's
    generator); rejects a ``reduction`` that is not a positive int."""
    if not isinstance(reduction, int) or isinstance(reduction, bool) or reduction <= 0:
        raise ValueError(f"reduction must be a positive int, got {reduction!r}")
    return max(num_features // reduction, 4)


class DynNormBase(nn.Module):
    """Base of the dynnorm layers (a plain ``nn.Module``: not a ``_BatchNorm``, on purpose).

    It owns what users switching from ``nn.BatchNorm2d`` expect, with the same names, shapes and meaning:
    ``weight``/``bias`` ``(C,)``, ``running_mean``/``running_var``/``num_batches_tracked`` buffers (the
    variance starts at 1 and is stored unbiased), torch's ``momentum`` (``None`` = cumulative average),
    ``track_running_stats``. Subclasses set ``uses_batch_statistics`` and implement ``forward``.

    Batch statistics can be synchronized across processes (``sync_batch_stats=True`` or the ``Sync*``
    classes), with autograd through the all-reduce; they fall back to local statistics when not distributed.
    Not subclassing ``_BatchNorm`` keeps ``convert_sync_batchnorm``, conv-BN fusion and ``norm_eval`` code
    from silently treating these layers as BatchNorm.
    """

    _abbr_: ClassVar[str] = "bn"  # mmcv layer naming: keeps the state-dict keys of BN networks (bn1.weight, ...)
    input_ranks: ClassVar[tuple[int, ...]] = (4,)
    uses_batch_statistics: ClassVar[bool] = True
    sync_batch_stats_default: ClassVar[bool] = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        sync_batch_stats: bool | None = None,
        process_group: object | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features <= 0:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] (torch convention) or None, got {momentum!r}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats and self.uses_batch_statistics
        self.sync_batch_stats = self.sync_batch_stats_default if sync_batch_stats is None else sync_batch_stats
        self.process_group = process_group
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    # -- state -------------------------------------------------------------------------------------------

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset running statistics and the affine parameters (weight 1, bias 0)."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        text = f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
        if self.uses_batch_statistics:
            text += f", track_running_stats={self.track_running_stats}"
            if self.sync_batch_stats:
                text += ", sync_batch_stats=True"
        return text

    def __getstate__(self) -> dict:
        # A process group handle cannot be pickled; a restored layer uses the default group.
        state = self.__dict__.copy()
        state["process_group"] = None
        return state

    # -- helpers for forward ----------------------------------------------------------------------------

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in self.input_ranks:
            ranks = " or ".join(f"{r}D" for r in self.input_ranks)
            raise ValueError(f"{type(self).__name__} expected {ranks} input (got {x.dim()}D input of shape {list(x.shape)})")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expected {self.num_features} channels, got {x.shape[1]} channels "
                f"(input of shape {list(x.shape)})"
            )
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} expected a floating-point input, got {x.dtype}")

    def _syncing(self) -> bool:
        return self.training and self.sync_batch_stats and world_size(self.process_group) > 1

    def _is_empty_local_batch(self, x: Tensor) -> bool:
        """True for an empty batch that needs no collective: the layer then returns an empty output."""
        return x.shape[0] == 0 and not (self.uses_batch_statistics and self._syncing())

    def _empty_output(self, x: Tensor) -> Tensor:
        """An empty output shaped like ``x``, still connected to the affine parameters (zero gradients)."""
        if self.weight is None:
            return x.clone()
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(view).to(x.dtype) + self.bias.view(view).to(x.dtype)

    def _uses_batch_statistics_now(self) -> bool:
        return self.training or not self.track_running_stats

    def _batch_statistics(self, x: Tensor, instance_mean: Tensor, instance_var: Tensor) -> tuple[Tensor, Tensor]:
        """Per-channel ``(1, C)`` mean and biased variance of the batch term.

        Training (or ``track_running_stats=False``): statistics of the current batch, synchronized across
        processes when asked, and the running statistics are updated. Evaluation: the running statistics.
        """
        if not self._uses_batch_statistics_now():
            acc = instance_mean.dtype
            return self.running_mean.to(acc).unsqueeze(0), self.running_var.to(acc).unsqueeze(0)
        mean, var, num_samples = batch_moments(instance_mean, instance_var, self._syncing(), self.process_group)
        count = num_samples * F.spatial_size(x)
        if self.training:
            F.check_batch_statistics_size(count, x)
            if self.track_running_stats:
                self.num_batches_tracked.add_(1)
                factor = F.exponential_average_factor(self.momentum, self.num_batches_tracked)
                F.update_running_stats_(self.running_mean, self.running_var, mean[0], var[0], count, factor)
        return mean, var
