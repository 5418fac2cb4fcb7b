"""The layer functions of :mod:`dynnorm.functional`, computed by one namespace's fused operators.

:class:`FusedLayers` calls a layer's forward operator (:mod:`dynnorm.kernels.ops`) with the running statistics
only when the BN term uses them (evaluation), and then averages the batch statistics that the operator
returns into the running statistics with the one implementation of that update,
:func:`dynnorm.functional.update_running_stats`. Everything runs on the tensors' device with no host
synchronization.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import functional


def _running(running_mean: Tensor | None, running_var: Tensor | None, training: bool) -> tuple[Tensor | None, ...]:
    """The running statistics the forward operator uses: given in evaluation, ``None`` (batch statistics) otherwise."""
    if training or running_mean is None:
        return None, None
    return running_mean, running_var


def _track(batch: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
           num_batches_tracked: Tensor | None, training: bool, momentum: float | None) -> None:
    """Average the batch statistics ``batch`` (``(2, C)``: mean, unbiased variance) into the running statistics
    (training only)."""
    if training and running_mean is not None:
        mean, var = batch.unbind()
        functional.update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, momentum)


def _local(batch_moments) -> None:
    if batch_moments is not None:
        raise ValueError("the fused operators compute local batch statistics only")


class FusedLayers:
    """The layer functions (same names and arguments as :mod:`dynnorm.functional`) on the operators of one
    namespace of ``torch.ops`` (``'dynnorm'``: C++ on CPU; ``'dynnorm_triton'``: Triton kernels).

    Examples::

        >>> layers = FusedLayers('dynnorm')
        >>> y = layers.switch_norm(torch.randn(2, 4, 3, 3), weight=None, bias=None, mean_mixture=torch.ones(3),
        ...                        var_mixture=torch.ones(3), running_mean=None, running_var=None,
        ...                        num_batches_tracked=None, training=True, momentum=0.1, eps=1e-5)
        >>> y.shape
        torch.Size([2, 4, 3, 3])
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._ops: dict[str, torch._ops.OpOverload] = {}

    def _op(self, name: str):
        try:
            return self._ops[name]
        except KeyError:
            self._ops[name] = getattr(getattr(torch.ops, self.namespace), name).default
            return self._ops[name]

    def switch_norm(self, x: Tensor, *, weight, bias, mean_mixture, var_mixture, running_mean, running_var,
                    num_batches_tracked, training: bool, momentum: float | None, eps: float,
                    mixture_logits: bool = True, batch_moments=None) -> Tensor:
        _local(batch_moments)
        y, _, batch = self._op("switch_norm")(x, weight, bias, mean_mixture, var_mixture,
                                           *_running(running_mean, running_var, training), training, eps,
                                           mixture_logits)
        _track(batch, running_mean, running_var, num_batches_tracked, training, momentum)
        return y

    def sparse_switch_norm(self, x: Tensor, *, weight, bias, mean_weight, var_weight, radius, mean_fixed, var_fixed,
                           mean_selected, var_selected, running_mean, running_var, num_batches_tracked,
                           training: bool, momentum: float | None, eps: float, freeze: bool,
                           batch_moments=None) -> Tensor:
        _local(batch_moments)
        y, _, batch, _, state = self._op("sparse_switch_norm")(
            x, weight, bias, mean_weight, var_weight, radius, mean_fixed, var_fixed, mean_selected, var_selected,
            *_running(running_mean, running_var, training), training, eps, freeze)
        _track(batch, running_mean, running_var, num_batches_tracked, training, momentum)
        if freeze:
            with torch.no_grad():
                for buffer, value in zip((mean_fixed, var_fixed, mean_selected, var_selected), state.unbind()):
                    buffer.copy_(value)
        return y

    def exemplar_norm(self, x: Tensor, *, weight, bias, ratio_w1, ratio_b1, ratio_w2, ratio_b2, running_mean,
                      running_var, num_batches_tracked, training: bool, momentum: float | None, eps: float,
                      batch_moments=None) -> tuple[Tensor, Tensor]:
        _local(batch_moments)
        y, _, batch, ratios = self._op("exemplar_norm")(x, weight, bias, ratio_w1, ratio_b1, ratio_w2, ratio_b2,
                                                     *_running(running_mean, running_var, training), training, eps)
        _track(batch, running_mean, running_var, num_batches_tracked, training, momentum)
        return y, ratios

    def dynamic_norm(self, x: Tensor, *, weight, bias, mean_gate_logits, var_gate_logits, mean_batch_logit,
                     var_batch_logit, factors: Sequence[int], running_mean, running_var, num_batches_tracked,
                     training: bool, momentum: float | None, eps: float, batch_moments=None) -> Tensor:
        _local(batch_moments)
        y, _, batch = self._op("dynamic_norm")(x, weight, bias, mean_gate_logits, var_gate_logits, mean_batch_logit,
                                            var_batch_logit, list(factors),
                                            *_running(running_mean, running_var, training), training, eps)
        _track(batch, running_mean, running_var, num_batches_tracked, training, momentum)
        return y

    def dynamic_affine_norm(self, x: Tensor, *, weight, bias, sc_w1, sc_b1, sc_w2, sc_b2, running_mean, running_var,
                            num_batches_tracked, training: bool, momentum: float | None, eps: float,
                            per_sample: bool, batch_moments=None) -> Tensor:
        _local(batch_moments)
        y, _, batch = self._op("dynamic_affine_norm")(x, weight, bias, sc_w1, sc_b1, sc_w2, sc_b2,
                                                   *_running(running_mean, running_var, training), training, eps,
                                                   per_sample)
        _track(batch, running_mean, running_var, num_batches_tracked, training, momentum)
        return y

    def associate_norm(self, x: Tensor, *, weight, bias, encoder_weight, scale_decoder_weight, shift_decoder_weight,
                       num_groups: int, eps: float, scale_from_mean: bool = True) -> Tensor:
        y, _, _ = self._op("associate_norm")(x, weight, bias, encoder_weight, scale_decoder_weight,
                                          shift_decoder_weight, num_groups, eps, scale_from_mean)
        return y
