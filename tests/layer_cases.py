"""One table of layer cases shared by the core tests: how to build each layer with non-trivial parameters,
and how to compute its output with the float64 reference in ``reference.py``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import dynnorm
import reference as ref


@dataclass
class Case:
    name: str
    build: Callable[..., nn.Module]
    reference: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    batch_statistics: bool = True

    def __str__(self) -> str:
        return self.name


@torch.no_grad()
def randomize(layer: nn.Module) -> nn.Module:
    """Give every parameter a random value so no term of a layer is trivially zero or uniform."""
    for name, parameter in layer.named_parameters():
        if name == "weight":
            parameter.uniform_(0.5, 1.5)
        elif name in ("mean_weight", "var_weight"):  # small enough that sparsemax is not one-hot
            parameter.normal_(0, 0.15)
        else:
            parameter.normal_(0, 0.5)
    return layer


def ready_to_freeze(channels: int, mean_logits=(0.1, 0.2, 0.6), var_logits=(0.3, 0.2, 0.1)) -> nn.Module:
    """An SSN whose mixtures become one-hot, and so freeze, in its next training step: uneven logits and the
    largest SparsestMax radius (mean on BN, variance on IN by default)."""
    layer = dynnorm.SparseSwitchNorm2d(channels)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor(mean_logits))
        layer.var_weight.copy_(torch.tensor(var_logits))
    dynnorm.set_sparsestmax_radius(layer, 1.0)
    return layer


def _running(layer: nn.Module):
    if layer.training or not getattr(layer, "track_running_stats", False):
        return None, None
    return layer.running_mean.double(), layer.running_var.double()


def _sn(layer, x):
    return ref.switch_norm(x, layer.weight, layer.bias, layer.mean_weight, layer.var_weight, layer.eps, *_running(layer))


def _en(layer, x):
    return ref.exemplar_norm(x, layer.weight, layer.bias, layer.ratio_w1, layer.ratio_b1, layer.ratio_w2,
                             layer.ratio_b2, layer.eps, *_running(layer))


def _dn(layer, x):
    return ref.dynamic_norm(
        x, layer.weight, layer.bias, layer.factors, torch.sigmoid(layer.mean_gate_logits),
        torch.sigmoid(layer.var_gate_logits), torch.sigmoid(layer.mean_batch_logit),
        torch.sigmoid(layer.var_batch_logit), layer.eps, *_running(layer))


def _dn_affine(per_sample):
    def reference(layer, x):
        return ref.dynamic_affine_norm(x, layer.weight, layer.bias, layer.sc_w1, layer.sc_b1, layer.sc_w2,
                                       layer.sc_b2, layer.eps, per_sample, *_running(layer))
    return reference


def _assoc(layer, x):
    return ref.associate_norm(x, layer.weight, layer.bias, layer.num_groups, layer.encoder_weight,
                              layer.scale_decoder_weight, layer.shift_decoder_weight, layer.eps, layer.scale_from)


CASES = [
    Case("SN", lambda c, **kw: dynnorm.SwitchNorm2d(c, **kw), _sn),
    Case("SN-noBN", lambda c, **kw: dynnorm.SwitchNorm2d(c, using_bn=False, **kw), _sn, batch_statistics=False),
    Case("SSN", lambda c, **kw: dynnorm.SparseSwitchNorm2d(c, **kw), None),
    Case("EN", lambda c, **kw: dynnorm.ExemplarNorm2d(c, **kw), _en),
    Case("DN", lambda c, **kw: dynnorm.DynamicNorm2d(c, **kw), _dn),
    Case("DNB", lambda c, **kw: dynnorm.DynamicNormB2d(c, reduction=4, **kw), _dn_affine(True)),
    Case("DNC", lambda c, **kw: dynnorm.DynamicNormC2d(c, reduction=4, **kw), _dn_affine(False)),
    Case("AssocNorm", lambda c, **kw: dynnorm.AssociateNorm2d(c, num_groups=4, **kw), _assoc, batch_statistics=False),
    Case("AssocNorm-ILM", lambda c, **kw: dynnorm.AssociateNorm2d(c, num_groups=4, scale_from="var", **kw), _assoc,
         batch_statistics=False),
]
REFERENCE_CASES = [case for case in CASES if case.reference is not None]
BATCH_CASES = [case for case in CASES if case.batch_statistics]
