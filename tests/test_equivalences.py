"""Each method's degenerate settings reproduce the torch normalizer they generalise, exactly."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as tF
from torch import nn

import dynnorm
from layer_cases import randomize, ready_to_freeze

INF = 1e4  # softmax/sigmoid of +-1e4 is exactly one-hot / 0 / 1 in float64


def _x(shape=(4, 8, 5, 6)):
    return torch.randn(shape, dtype=torch.float64) * 3 + 1


def _one_hot_sn(index: int, **kwargs) -> dynnorm.SwitchNorm2d:
    layer = randomize(dynnorm.SwitchNorm2d(8, dtype=torch.float64, **kwargs))
    with torch.no_grad():
        for logits in (layer.mean_weight, layer.var_weight):
            logits.fill_(-INF)
            logits[index] = INF
    return layer


def _torch_outputs(layer, x):
    weight, bias = layer.weight, layer.bias
    return {
        0: tF.instance_norm(x, weight=weight, bias=bias, eps=layer.eps),
        1: tF.group_norm(x, 1, weight, bias, layer.eps),  # LN over (C, H, W) with a per-channel affine
        2: tF.batch_norm(x, None, None, weight, bias, training=True, eps=layer.eps),
    }


@pytest.mark.parametrize("index, name", [(0, "IN"), (1, "LN"), (2, "BN")])
def test_one_hot_switchnorm_equals_torch_normalizer(index, name):
    layer = _one_hot_sn(index)
    x = _x()
    torch.testing.assert_close(layer(x), _torch_outputs(layer, x)[index], rtol=1e-12, atol=1e-12)


def test_one_hot_bn_switchnorm_tracks_and_evaluates_like_batchnorm():
    layer = _one_hot_sn(2, momentum=0.3)
    bn = nn.BatchNorm2d(8, momentum=0.3, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(layer.weight), bn.bias.copy_(layer.bias)
    for _ in range(3):
        x = _x()
        torch.testing.assert_close(layer(x), bn(x))
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    layer.eval(), bn.eval()
    x = _x()
    torch.testing.assert_close(layer(x), bn(x))


def test_switchnorm_without_bn_is_batch_independent():
    layer = randomize(dynnorm.SwitchNorm2d(8, using_bn=False, dtype=torch.float64))
    assert layer.mean_weight.shape == (2,) and layer.running_mean is None
    x = _x()
    other = x.clone()
    other[1:] = _x()[1:]
    torch.testing.assert_close(layer(x)[0], layer(other)[0])


def test_switchnorm_1d_and_3d():
    layer1d = dynnorm.SwitchNorm1d(8, dtype=torch.float64)
    x2d = _x((6, 8))
    # (N, C): IN is left out, so with uniform logits the mixture is LN/BN half and half
    mean_ln, var_ln = x2d.mean(1, keepdim=True), x2d.var(1, unbiased=False, keepdim=True)
    mean_bn, var_bn = x2d.mean(0, keepdim=True), x2d.var(0, unbiased=False, keepdim=True)
    expected = (x2d - (mean_ln + mean_bn) / 2) / torch.sqrt((var_ln + var_bn) / 2 + layer1d.eps)
    torch.testing.assert_close(layer1d(x2d), expected)
    assert layer1d(_x((6, 8, 7))).shape == (6, 8, 7)
    layer3d = dynnorm.SwitchNorm3d(8, dtype=torch.float64)
    x5d = _x((2, 8, 3, 4, 5))
    flat = layer3d(x5d).reshape(2, 8, 60)
    layer2d = dynnorm.SwitchNorm2d(8, dtype=torch.float64)
    torch.testing.assert_close(flat, layer2d(x5d.reshape(2, 8, 6, 10)).reshape(2, 8, 60))


def test_switchnorm_single_spatial_value_leaves_instance_term_out():
    layer = randomize(dynnorm.SwitchNorm2d(8, dtype=torch.float64))
    x = _x((4, 8, 1, 1))
    out = layer(x)
    assert torch.isfinite(out).all()
    mean_w, var_w = layer.mixture_weights(single_value=True)
    assert mean_w[0] == 0 and var_w[0] == 0
    torch.testing.assert_close(mean_w.sum(), torch.tensor(1.0, dtype=torch.float64))


def _gated_dn(channel_gates, batch_gate, channels=8):
    layer = randomize(dynnorm.DynamicNorm2d(channels, dtype=torch.float64))
    with torch.no_grad():
        for logits in (layer.mean_gate_logits, layer.var_gate_logits):
            logits.copy_(torch.tensor([INF if g else -INF for g in channel_gates], dtype=torch.float64))
        for logit in (layer.mean_batch_logit, layer.var_batch_logit):
            logit.fill_(INF if batch_gate else -INF)
    return layer


@pytest.mark.parametrize(
    "channel_gates, batch_gate, expected",
    [
        ((0, 0, 0), 0, lambda x, l: tF.instance_norm(x, weight=l.weight, bias=l.bias, eps=l.eps)),
        ((1, 1, 1), 0, lambda x, l: tF.group_norm(x, 1, l.weight, l.bias, l.eps)),
        ((0, 1, 1), 0, lambda x, l: tF.group_norm(x, 2, l.weight, l.bias, l.eps)),
        ((0, 0, 1), 0, lambda x, l: tF.group_norm(x, 4, l.weight, l.bias, l.eps)),
        ((0, 0, 0), 1, lambda x, l: tF.batch_norm(x, None, None, l.weight, l.bias, True, eps=l.eps)),
    ],
    ids=["IN", "LN", "GN2", "GN4", "BN"],
)
def test_dynamic_norm_gates_reproduce_in_ln_gn_bn(channel_gates, batch_gate, expected):
    layer = _gated_dn(channel_gates, batch_gate)
    x = _x()
    torch.testing.assert_close(layer(x), expected(x, layer), rtol=1e-9, atol=1e-9)


def test_dynamic_norm_non_power_of_two_channels():
    assert dynnorm.dynamic.channel_factors(96) == (3, 2, 2, 2, 2, 2)
    assert dynnorm.dynamic.channel_factors(1) == ()
    layer = _gated_dn((1,) * 6, 0, channels=96)
    x = _x((2, 96, 3, 3))
    torch.testing.assert_close(layer(x), tF.group_norm(x, 1, layer.weight, layer.bias, layer.eps))


@pytest.mark.parametrize("cls", [dynnorm.DynamicNormB2d, dynnorm.DynamicNormC2d])
def test_dynamic_affine_norm_starts_as_batchnorm(cls):
    layer = cls(8, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2), layer.bias.normal_()
    bn = nn.BatchNorm2d(8, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(layer.weight), bn.bias.copy_(layer.bias)
    for _ in range(2):
        x = _x()
        torch.testing.assert_close(layer(x), bn(x))
    layer.eval(), bn.eval()
    x = _x()
    torch.testing.assert_close(layer(x), bn(x))


def _generated_scale(layer, x):
    """The per-(n, c) scale DN-B/DN-C apply to the BN-standardized input: (y - y(mean_BN)) / x_hat."""
    mean = x.mean((0, 2, 3), keepdim=True)
    standardized = (x - mean) / torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True) + layer.eps)
    return ((layer(x) - layer.bias.view(1, -1, 1, 1)) / standardized).mean((2, 3))


def test_dn_b_scale_is_per_sample_and_dn_c_per_batch():
    x = _x()
    for cls, per_sample in ((dynnorm.DynamicNormB2d, True), (dynnorm.DynamicNormC2d, False)):
        layer = randomize(cls(8, dtype=torch.float64))
        with torch.no_grad():
            layer.sc_b2[8:].zero_(), layer.sc_w2[8:].zero_()  # no generated shift: y - bias = gamma' x_hat
        scale = _generated_scale(layer, x)
        gamma_change = scale - layer.weight
        assert gamma_change.abs().max() < 1 and gamma_change.abs().max() > 1e-3  # tanh-bounded, not zero
        spread = (scale - scale[:1]).abs().max()
        assert (spread > 1e-3) if per_sample else (spread < 1e-9)
        if per_sample:  # DN-B's generator input does not depend on the input's offset or scale
            torch.testing.assert_close(_generated_scale(layer, 1000 * x + 50), scale, rtol=1e-6, atol=1e-6)


def test_associate_norm_without_decoders_is_group_norm():
    layer = dynnorm.AssociateNorm2d(64, dtype=torch.float64)
    with torch.no_grad():
        layer.scale_decoder_weight.zero_(), layer.shift_decoder_weight.zero_()
        layer.weight.fill_(0.5)  # sigmoid(0) + 0.5 = 1, tanh(0) + 0 = 0
    x = _x((2, 64, 4, 4))
    torch.testing.assert_close(layer(x), tF.group_norm(x, 32, eps=layer.eps))


def test_associate_norm_paper_initial_scale_is_about_one_and_a_half():
    layer = dynnorm.AssociateNorm2d(64, init="paper", dtype=torch.float64)
    x = _x((4, 64, 8, 8))
    standardized = tF.group_norm(x, 32, eps=layer.eps)
    with torch.no_grad():
        shift = layer(torch.zeros_like(x) + x.mean((1, 2, 3), keepdim=True))  # constant groups: y = beta
        omega = (layer(x) - shift).flatten(2).std(2) / standardized.flatten(2).std(2)
    assert ((omega > 1) & (omega < 2)).all()
    assert layer.embedding_size == 2  # M = G / 16, the paper's parameter count


def test_associate_norm_is_batch_independent():
    layer = dynnorm.AssociateNorm2d(64, dtype=torch.float64)
    x = _x((3, 64, 4, 4))
    torch.testing.assert_close(layer(x)[:1], layer(x[:1]))


def test_exemplar_norm_with_uniform_ratios_mixes_normalized_outputs():
    layer = randomize(dynnorm.ExemplarNorm2d(8, dtype=torch.float64))
    with torch.no_grad():
        layer.ratio_w2.zero_(), layer.ratio_b2.zero_()
    x = _x()
    plain = _torch_outputs(layer, x)
    affine = lambda y: y * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)  # noqa: E731
    standardized = [(plain[k] - layer.bias.view(1, -1, 1, 1)) / layer.weight.view(1, -1, 1, 1) for k in range(3)]
    torch.testing.assert_close(layer(x), affine(sum(standardized) / 3))
    assert layer.importance_ratios()["ratio"] == pytest.approx({"IN": 1 / 3, "LN": 1 / 3, "BN": 1 / 3})


def _exemplar_ratios(layer, x):
    """EN's per-sample ratios, read off its output: y_n = gamma * sum_k r_nk x_hat_k + beta is linear in the
    ratios, so with the three normalized outputs known they follow by least squares."""
    plain = _torch_outputs(layer, x)
    standardized = torch.stack([(plain[k] - layer.bias.view(1, -1, 1, 1)) / layer.weight.view(1, -1, 1, 1)
                                for k in range(3)], -1)
    target = ((layer(x) - layer.bias.view(1, -1, 1, 1)) / layer.weight.view(1, -1, 1, 1))
    return torch.stack([torch.linalg.lstsq(standardized[n].reshape(-1, 3), target[n].reshape(-1, 1)).solution[:, 0]
                        for n in range(x.shape[0])])


def test_exemplar_ratios_differ_between_samples_and_ignore_offset_and_scale():
    layer = randomize(dynnorm.ExemplarNorm2d(8, dtype=torch.float64))
    x = _x()
    ratios = _exemplar_ratios(layer, x)
    assert ratios.shape == (4, 3) and (ratios > 0).all()
    torch.testing.assert_close(ratios.sum(1), torch.ones(4, dtype=torch.float64))
    assert (ratios[0] - ratios[1]).abs().max() > 1e-3
    # the head sees statistics relative to the batch: an input offset or scale does not move the ratios
    torch.testing.assert_close(_exemplar_ratios(layer, 300 * x + 1e4), ratios, rtol=1e-5, atol=1e-6)


def test_sparsemax_and_sparsestmax():
    sparsemax, sparsestmax = dynnorm.sparsemax, dynnorm.sparsestmax
    torch.testing.assert_close(sparsemax(torch.ones(3)), torch.full((3,), 1 / 3))
    torch.testing.assert_close(sparsemax(torch.tensor([2.0, 0.0, -1.0])), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(sparsemax(torch.tensor([0.5, 0.3, -1.0])), torch.tensor([0.6, 0.4, 0.0]))
    logits = torch.tensor([0.3, 0.2, 0.1])
    torch.testing.assert_close(sparsestmax(logits, 0.0), sparsemax(logits))
    pushed = sparsestmax(logits, 0.3)
    assert pushed.sum() == pytest.approx(1.0) and (pushed >= 0).all()
    assert (pushed - torch.full((3,), 1 / 3)).norm() == pytest.approx(0.3, abs=1e-6)
    assert sparsestmax(logits, 1.0).max() == pytest.approx(1.0)
    for bad in (float("nan"), float("inf")):  # a diverged logit shows up, as in torch.softmax
        assert sparsestmax(torch.tensor([bad, 0.0, 0.0]), 0.1).isnan().all()


def test_sparse_switchnorm_becomes_one_hot_freezes_and_reverts_to_torch():
    layer = ready_to_freeze(8, var_logits=(0.1, 0.2, 0.6))
    x = torch.randn(4, 8, 5, 5)
    layer(x).sum().backward()
    assert bool(layer.mean_fixed) and bool(layer.var_fixed)
    assert int(layer.mean_selected) == int(layer.var_selected) == 2
    # frozen in the buffers: the logits are not written and get no gradient
    assert layer.mean_weight.grad is None and torch.equal(layer.mean_weight.detach(), torch.tensor([0.1, 0.2, 0.6]))
    for weights in layer.mixture_weights():
        assert torch.equal(weights, torch.tensor([0.0, 0.0, 1.0]))
    plain = dynnorm.revert(layer)
    assert type(plain) is nn.BatchNorm2d
    layer.eval(), plain.eval()
    torch.testing.assert_close(plain(x), layer(x))
