"""Checkpoints of the SN/SSN authors' code: converted state dicts reproduce the original layers' formulas."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dynnorm
from dynnorm.original_checkpoints import ABSENT_LOGIT

EPS = 1e-5


def _original_1d_state(c: int) -> dict[str, torch.Tensor]:
    """An original ``SwitchNorm1d``'s state: (1, C) affine and running statistics, logits (LN, BN)."""
    return {"weight": torch.rand(1, c) + 0.5, "bias": torch.randn(1, c), "mean_weight": torch.tensor([0.7, -0.4]),
            "var_weight": torch.tensor([-0.2, 0.9]), "running_mean": torch.randn(1, c),
            "running_var": torch.rand(1, c) + 0.5}


def _original_2d_state(c: int) -> dict[str, torch.Tensor]:
    """An original ``SwitchNorm2d``'s state: (1, C, 1, 1) affine, (1, C, 1) running statistics, logits (IN, LN, BN)."""
    return {"weight": torch.rand(1, c, 1, 1) + 0.5, "bias": torch.randn(1, c, 1, 1),
            "mean_weight": torch.tensor([0.3, -0.5, 0.8]), "var_weight": torch.tensor([0.6, 0.1, -0.7]),
            "running_mean": torch.randn(1, c, 1), "running_var": torch.rand(1, c, 1) + 0.5}


def _original_1d_forward(x: torch.Tensor, state: dict, training: bool) -> torch.Tensor:
    """The original ``SwitchNorm1d.forward`` on ``(N, C)`` in float64, with biased variances."""
    x, s = x.double(), {k: v.double() for k, v in state.items()}
    mean_ln, var_ln = x.mean(1, keepdim=True), x.var(1, keepdim=True, correction=0)
    if training:
        mean_bn, var_bn = x.mean(0, keepdim=True), x.var(0, keepdim=True, correction=0)
    else:
        mean_bn, var_bn = s["running_mean"], s["running_var"]
    mw, vw = torch.softmax(s["mean_weight"], 0), torch.softmax(s["var_weight"], 0)
    mean = mw[0] * mean_ln + mw[1] * mean_bn
    var = vw[0] * var_ln + vw[1] * var_bn
    return (x - mean) / (var + EPS).sqrt() * s["weight"] + s["bias"]


def _original_2d_forward(x: torch.Tensor, state: dict, training: bool) -> torch.Tensor:
    """The original ``SwitchNorm2d.forward`` in float64, with biased variances."""
    x, s = x.double(), {k: v.double() for k, v in state.items()}
    n, c, h, w = x.shape
    flat = x.view(n, c, -1)
    mean_in, var_in = flat.mean(-1, keepdim=True), flat.var(-1, keepdim=True, correction=0)
    mean_ln = mean_in.mean(1, keepdim=True)
    var_ln = (var_in + mean_in**2).mean(1, keepdim=True) - mean_ln**2
    if training:
        mean_bn = mean_in.mean(0, keepdim=True)
        var_bn = (var_in + mean_in**2).mean(0, keepdim=True) - mean_bn**2
    else:
        mean_bn, var_bn = s["running_mean"], s["running_var"]
    mw, vw = torch.softmax(s["mean_weight"], 0), torch.softmax(s["var_weight"], 0)
    mean = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn
    var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn
    return ((flat - mean) / (var + EPS).sqrt()).view(n, c, h, w) * s["weight"] + s["bias"]


def _load(layer: nn.Module, original: dict[str, torch.Tensor]) -> nn.Module:
    converted = dynnorm.convert_original_switchnorm_state_dict({f"norm.{k}": v for k, v in original.items()})
    model = nn.Module()
    model.norm = layer
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert missing == ["norm.num_batches_tracked"] and unexpected == []
    return layer


@pytest.mark.parametrize("training", [False, True])
def test_original_switchnorm1d_checkpoint_reproduces_the_original_layer(training):
    original = _original_1d_state(6)
    layer = _load(dynnorm.SwitchNorm1d(6, eps=EPS).double(), original).train(training)
    assert layer.mean_weight.tolist() == [ABSENT_LOGIT, pytest.approx(0.7), pytest.approx(-0.4)]
    assert torch.isfinite(layer.mean_weight).all() and layer.mixture_weights()[0][0] == 0  # IN has weight 0
    x = torch.randn(5, 6, dtype=torch.float64) * 2 + 1
    torch.testing.assert_close(layer(x), _original_1d_forward(x, original, training))


@pytest.mark.parametrize("training", [False, True])
def test_original_switchnorm2d_checkpoint_reproduces_the_original_layer(training):
    original = _original_2d_state(4)
    layer = _load(dynnorm.SwitchNorm2d(4, eps=EPS).double(), original).train(training)
    assert torch.equal(layer.running_var, original["running_var"].flatten().double())
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * 2 + 1
    torch.testing.assert_close(layer(x), _original_2d_forward(x, original, training))


def test_original_2d_layer_without_bn_keeps_its_in_ln_logits():
    original = {"conv.weight": torch.rand(4, 3, 1, 1), "norm.weight": torch.rand(1, 4, 1, 1),
                "norm.bias": torch.rand(1, 4, 1, 1), "norm.mean_weight": torch.tensor([0.2, 0.8]),
                "norm.var_weight": torch.tensor([0.5, 0.5])}
    converted = dynnorm.convert_original_switchnorm_state_dict(original)
    assert torch.equal(converted["norm.mean_weight"], original["norm.mean_weight"])
    assert converted["norm.weight"].shape == (4,) and converted["conv.weight"].shape == (4, 3, 1, 1)
    model = nn.Module()
    model.norm = dynnorm.SwitchNorm2d(4, using_bn=False)
    model.conv = nn.Conv2d(3, 4, 1, bias=False)
    assert model.load_state_dict(converted).missing_keys == []


def test_original_sparse_switchnorm_buffers_become_scalars():
    original = {**{f"norm.{k}": v for k, v in _original_2d_state(4).items()},
                "norm.radius": torch.tensor([0.4]), "norm.mean_fixed": torch.LongTensor([1]),
                "norm.var_fixed": torch.LongTensor([0])}
    converted = dynnorm.convert_original_switchnorm_state_dict(original)
    model = nn.Module()
    model.norm = dynnorm.SparseSwitchNorm2d(4)
    model.load_state_dict(converted, strict=False)
    assert float(model.norm.radius) == pytest.approx(0.4)
    assert converted["norm.mean_fixed"].dtype == torch.bool
    assert bool(model.norm.mean_fixed) and not bool(model.norm.var_fixed)


def test_conversion_is_idempotent():
    original = {**{f"a.{k}": v for k, v in _original_1d_state(3).items()},
                **{f"b.{k}": v for k, v in _original_2d_state(3).items()}}
    once = dynnorm.convert_original_switchnorm_state_dict(original)
    twice = dynnorm.convert_original_switchnorm_state_dict(once)
    assert once.keys() == twice.keys() and all(torch.equal(once[k], twice[k]) for k in once)


def test_two_logits_without_weight_or_running_mean_are_ambiguous():
    with pytest.raises(ValueError, match="norm.mean_weight has 2 logits"):
        dynnorm.convert_original_switchnorm_state_dict({"norm.mean_weight": torch.ones(2),
                                                        "norm.var_weight": torch.ones(2)})
