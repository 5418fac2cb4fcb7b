"""Sparse Switchable Normalization (SSN): SN with SparsestMax instead of softmax.

Shao, Li, Zhang, Luo, Wang, Li, "SSN: Learning Sparse Switchable Normalization via SparsestMax", CVPR 2019,
https://arxiv.org/abs/1903.03793.
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor, nn

from .functional import accumulation_dtype, one_hot, sparsemax, sparsestmax
from .switchable import _SwitchNorm

__all__ = ["SparseSwitchNorm1d", "SparseSwitchNorm2d", "SparseSwitchNorm3d", "SyncSparseSwitchNorm2d",
           "set_sparsestmax_radius", "sparsemax", "sparsestmax"]


class _SparseSwitchNorm(_SwitchNorm):
    r"""Sparse Switchable Normalization: SN whose mixtures are SparsestMax of the logits.

    .. math::
        w = \mathrm{sparsestmax}(\lambda, r),\quad w' = \mathrm{sparsestmax}(\lambda', r)

    The radius ``r`` grows during training (the authors use ``r = iteration / total_iterations``; call
    :func:`set_sparsestmax_radius` on the model every step, or use the Lightning callback
    ``SparsestMaxRadiusSchedule``). When a mixture becomes one-hot in a training step (training mode with
    gradients enabled) it is frozen: ``mean_fixed`` / ``var_fixed`` are set and the selected normalizer is
    recorded in ``mean_selected`` / ``var_selected``; from then on the mixture is that one-hot vector, and its
    logits receive no gradient (``grad`` stays ``None`` on CPU in eager mode, zero elsewhere: either way an
    optimizer step cannot change a frozen mixture, whose selection lives in the buffers). Freezing writes only
    these buffers, never the logits, so traced and compiled training steps replay it. A layer whose two mixtures froze on the same normalizer is that torch layer
    (:func:`dynnorm.revert`). Statistics, buffers and arguments as :class:`SwitchNorm2d`.

    .. note::
        Confirmed from the authors' code: SparsestMax, the linear radius schedule, freezing once one-hot, and
        the optimizer treatment of the logits (lr/10, no weight decay, gradient norm clipped to 1;
        :func:`dynnorm.param_groups` and :func:`dynnorm.clip_mixture_grad_norm`) and running-statistics decay
        0.997 (``momentum=0.003``). Choices here: freezing happens only in training steps with gradients
        enabled (a no-grad training-mode pass, as in :func:`dynnorm.recalibrate`, changes no parameter); for
        inputs with a single value per (n, c) the IN weight is dropped and the rest renormalized (an error if
        IN alone was selected).

    Shape:
        - Input: ``(N, C, *)`` (rank fixed by the subclass); Output: same shape and dtype.

    Examples::

        >>> layer = SparseSwitchNorm2d(16)
        >>> set_sparsestmax_radius(layer, 0.5)
        >>> layer(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 16, 8, 8])
    """

    def __init__(self, num_features: int, *args, **kwargs) -> None:
        factory = {"device": kwargs.get("device")}
        super().__init__(num_features, *args, **kwargs)
        self.register_buffer("radius", torch.zeros((), dtype=kwargs.get("dtype"), **factory))
        self.register_buffer("mean_fixed", torch.zeros((), dtype=torch.bool, **factory))
        self.register_buffer("var_fixed", torch.zeros((), dtype=torch.bool, **factory))
        self.register_buffer("mean_selected", torch.zeros((), dtype=torch.long, **factory))
        self.register_buffer("var_selected", torch.zeros((), dtype=torch.long, **factory))

    def reset_parameters(self) -> None:
        """Reset the running statistics, the affine parameters and the logits, and unfreeze both mixtures with
        the radius back at 0."""
        super().reset_parameters()
        if "var_selected" in self._buffers:  # not yet while the base class's __init__ runs
            for buffer in (self.radius, self.mean_fixed, self.var_fixed, self.mean_selected, self.var_selected):
                buffer.zero_()

    def mixture_weights(self, single_value: bool = False) -> tuple[Tensor, Tensor]:
        weights = []
        for logits, fixed, selected in ((self.mean_weight, self.mean_fixed, self.mean_selected),
                                        (self.var_weight, self.var_fixed, self.var_selected)):
            acc = accumulation_dtype(logits.dtype)
            mixture = torch.where(fixed, one_hot(selected, logits.numel(), acc, logits.device),
                                  sparsestmax(logits.to(acc), self.radius.to(acc)))
            if single_value:
                mixture = torch.cat([mixture.new_zeros(1), mixture[1:]]) / mixture[1:].sum()
            weights.append(mixture)
        return weights[0], weights[1]

    def _normalize(self, ops: ModuleType, x: Tensor, synchronized: bool) -> Tensor:
        return ops.sparse_switch_norm(
            x, weight=self.weight, bias=self.bias, mean_weight=self.mean_weight, var_weight=self.var_weight,
            radius=self.radius, mean_fixed=self.mean_fixed, var_fixed=self.var_fixed,
            mean_selected=self.mean_selected, var_selected=self.var_selected,
            freeze=self.training and torch.is_grad_enabled(), **self._batch_arguments(synchronized))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args) -> None:
        # Checkpoints written before version 2 (and the original SSN code's) froze a mixture by writing its
        # one-hot vector into the logits: the selection is their argmax.
        if local_metadata.get("version", 1) < 2:
            for kind in ("mean", "var"):
                logits = state_dict.get(f"{prefix}{kind}_weight")
                if f"{prefix}{kind}_selected" not in state_dict and logits is not None:
                    state_dict[f"{prefix}{kind}_selected"] = logits.detach().argmax().to(torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


class SparseSwitchNorm1d(_SparseSwitchNorm, input_ranks=(2, 3)):
    pass


class SparseSwitchNorm2d(_SparseSwitchNorm):
    __doc__ = _SparseSwitchNorm.__doc__


class SparseSwitchNorm3d(_SparseSwitchNorm, input_ranks=(5,)):
    pass


class SyncSparseSwitchNorm2d(SparseSwitchNorm2d, synchronized=True):
    pass


def set_sparsestmax_radius(model: nn.Module, radius: float) -> None:
    """Set the SparsestMax radius of every SSN layer in ``model`` (``r = step / total_steps`` in the paper)."""
    if radius < 0:
        raise ValueError(f"radius must be non-negative, got {radius}")
    for module in model.modules():
        if isinstance(module, _SparseSwitchNorm):
            module.radius.fill_(radius)
