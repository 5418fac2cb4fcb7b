"""A new AssocNorm and a new DN compute the normalizer their notes state, and the diagnostics of their learned
parts measure what they say (float64 references written here from the notes' formulas)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as tF
from torch import nn

import dynnorm
from dynnorm import diagnostics

GROUP_CASES = [(16, 8, (2, 16, 5, 5)), (64, None, (3, 64, 4, 4)), (24, 6, (1, 24, 7, 3)), (12, 3, (4, 12, 1, 9)),
               (32, 1, (2, 32, 3, 3))]


def _x(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64) * 3 + 5


def _affine(layer, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.num_features, generator=generator, dtype=torch.float64) + 0.25)
        layer.bias.copy_(torch.randn(layer.num_features, generator=generator, dtype=torch.float64))
    return layer


@pytest.mark.parametrize("fast", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("scale_from", ["mean", "var"])
@pytest.mark.parametrize("channels, groups, shape", GROUP_CASES, ids=lambda v: str(v))
def test_new_associate_norm_is_group_norm_with_the_same_affine_parameters(channels, groups, shape, scale_from, fast):
    layer = dynnorm.AssociateNorm2d(channels, groups, scale_from=scale_from, dtype=torch.float64)
    groups = layer.num_groups
    x = _x(shape)
    plain = nn.GroupNorm(groups, channels, eps=layer.eps, dtype=torch.float64)  # weight 1, bias 0
    with dynnorm.fast_path(fast):
        for mode in (True, False):
            layer.train(mode)
            torch.testing.assert_close(layer(x), plain(x), rtol=1e-12, atol=1e-12)
        # Trained affine parameters: omega = sigmoid(0) + B_omega, beta = tanh(0) + B_beta.
        _affine(layer)
        expected = tF.group_norm(x, groups, layer.weight + 0.5, layer.bias, layer.eps)
        for mode in (True, False):
            layer.train(mode)
            torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_new_associate_norm_starts_with_identity_rescaling_and_learns_it():
    layer = dynnorm.AssociateNorm2d(64, dtype=torch.float64)
    assert torch.equal(layer.weight, torch.full((64,), 0.5, dtype=torch.float64))
    assert not layer.bias.any() and not layer.scale_decoder_weight.any() and not layer.shift_decoder_weight.any()
    bound = 1 / math.sqrt(layer.num_groups)  # the encoder as nn.Linear(G, M, bias=False) draws it
    assert layer.encoder_weight.abs().max() <= bound and layer.encoder_weight.std() > bound / 4
    activations = layer.autoencoder_activations(_x((4, 64, 3, 3)))
    assert torch.equal(activations["scale_decoded"], torch.full((4, 32), 0.5, dtype=torch.float64))
    assert not activations["shift_decoded"].any()
    # The decoders get gradients from the first step; the encoder's follow once the decoders move.
    x = _x((4, 64, 3, 3))
    layer(x).mul(torch.randn_like(x)).sum().backward()
    assert layer.scale_decoder_weight.grad.abs().sum() > 0 and layer.shift_decoder_weight.grad.abs().sum() > 0
    assert not layer.encoder_weight.grad.any()


def test_associate_norm_paper_initialisation_is_kept():
    torch.manual_seed(0)
    layer = dynnorm.AssociateNorm2d(512, init="paper", dtype=torch.float64)
    weights = torch.cat([w.flatten() for w in (layer.encoder_weight, layer.scale_decoder_weight,
                                                layer.shift_decoder_weight)])
    assert abs(weights.std() - 1) < 0.1 and abs(weights.mean()) < 0.1  # N(0, 1), 3 x 32 x 2 values
    assert torch.equal(layer.weight, torch.ones(512, dtype=torch.float64)) and not layer.bias.any()
    assert "init='paper'" in repr(layer)


@pytest.mark.parametrize("cls, message", [(dynnorm.AssociateNorm2d, r"init must be one of 'gn', 'paper', got 'bn'"),
                                          (dynnorm.DynamicNorm2d, r"init must be one of 'bn', 'in', 'half', got 'gn'")])
def test_unknown_init_is_named(cls, message):
    with pytest.raises(ValueError, match=message):
        cls(16, init="bn" if cls is dynnorm.AssociateNorm2d else "gn")


def _pooling_matrix(batch_gate, channel_gates, factors, n):
    """The note's ``A = (b/N J + (1 - b) I) kron U_1 kron ... kron U_K``, dense, float64."""
    matrix = batch_gate * torch.full((n, n), 1 / n, dtype=torch.float64) + (1 - batch_gate) * torch.eye(n, dtype=torch.float64)
    for gate, size in zip(channel_gates, factors):
        u = gate * torch.full((size, size), 1 / size, dtype=torch.float64) + (1 - gate) * torch.eye(size, dtype=torch.float64)
        matrix = torch.kron(matrix, u)
    return matrix


@pytest.mark.parametrize("fast", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("init, batch_logit", [("bn", 3.0), ("in", -3.0)])
@pytest.mark.parametrize("channels, n", [(16, 4), (12, 3), (24, 2), (8, 1)])
def test_new_dynamic_norm_pools_the_statistics_its_note_states(channels, n, init, batch_logit, fast):
    layer = _affine(dynnorm.DynamicNorm2d(channels, init=init, dtype=torch.float64))
    b, g = 1 / (1 + math.exp(-batch_logit)), 1 / (1 + math.exp(3.0))  # sigmoid(batch logit), sigmoid(-3)
    gates = layer.gates()
    for kind in ("mean", "var"):
        torch.testing.assert_close(gates[f"{kind}_batch"], torch.tensor(b, dtype=torch.float64), rtol=0, atol=1e-15)
        torch.testing.assert_close(gates[f"{kind}_channel"], torch.full((len(layer.factors),), g, dtype=torch.float64),
                                   rtol=0, atol=1e-15)
    x = _x((n, channels, 3, 4))
    flat = x.flatten(2)
    m1, m2 = flat.mean(2).flatten(), flat.square().mean(2).flatten()  # per (n, c), index n * C + c
    matrix = _pooling_matrix(b, [g] * len(layer.factors), layer.factors, n)
    mean = (matrix @ m1).view(n, channels, 1, 1)
    var = (matrix @ m2).view(n, channels, 1, 1) - mean.square()
    expected = (x - mean) / torch.sqrt(var + layer.eps) * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    with dynnorm.fast_path(fast):
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
        # Evaluation: the batch part pools the running statistics instead of the batch's moments.
        layer.eval()
        running_m1, running_m2 = layer.running_mean, layer.running_var + layer.running_mean.square()
        staged = [((1 - b) * m.view(n, channels) + b * r).flatten() for m, r in ((m1, running_m1), (m2, running_m2))]
        channel_matrix = torch.kron(torch.eye(n, dtype=torch.float64), _pooling_matrix(0.0, [g] * len(layer.factors),
                                                                                       layer.factors, 1))
        mean = (channel_matrix @ staged[0]).view(n, channels, 1, 1)
        var = (channel_matrix @ staged[1]).view(n, channels, 1, 1) - mean.square()
        expected = (x - mean) / torch.sqrt(var + layer.eps) * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("channels, share", [(16, 0.865), (64, 0.825)])
def test_dynamic_norm_own_batch_statistic_share_is_the_notes(channels, share):
    layer = dynnorm.DynamicNorm2d(channels, dtype=torch.float64)
    gates = {k: v.detach() for k, v in layer.gates().items()}
    matrix = _pooling_matrix(float(gates["mean_batch"]), gates["mean_channel"].tolist(), layer.factors, 1)
    own = float(gates["mean_batch"]) * matrix[0, 0]  # weight of channel 0's batch average in its statistic
    assert round(float(own), 3) == share


def test_dynamic_norm_half_init_is_every_gate_at_one_half():
    layer = dynnorm.DynamicNorm2d(16, init="half")
    assert all(torch.equal(v, torch.full_like(v, 0.5)) for v in layer.gates().values())
    assert "init='half'" in repr(layer)


def test_saturation_shares_count_dead_and_saturated_values():
    activations = {
        "scale_embedding": torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
        "shift_embedding": torch.tensor([[2.0, 1.0], [0.5, 0.0]]),
        "scale_decoded": torch.tensor([[0.01, 0.5], [0.99, 0.9]]),   # |2s - 1|: 0.98, 0, 0.98, 0.8
        "shift_decoded": torch.tensor([[-0.99, 0.2], [0.96, 0.5]]),  # |t|: 0.99, 0.2, 0.96, 0.5
    }
    assert diagnostics.saturation_shares(activations) == pytest.approx(
        {"dead_scale_embedding": 0.75, "dead_shift_embedding": 0.25, "saturated_scale": 0.5, "saturated_shift": 0.5})
    assert diagnostics.saturation_shares(activations, threshold=0.97)["saturated_shift"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\), got 1.5"):
        diagnostics.saturation_shares(activations, threshold=1.5)


def test_autoencoder_activations_are_the_rescaling_the_layer_applies():
    torch.manual_seed(0)
    layer = _affine(dynnorm.AssociateNorm2d(16, 4, init="paper", dtype=torch.float64))
    x = _x((3, 16, 4, 4))
    activations = layer.autoencoder_activations(x)
    omega = activations["scale_decoded"].repeat_interleave(4, 1) + layer.weight
    beta = activations["shift_decoded"].repeat_interleave(4, 1) + layer.bias
    expected = tF.group_norm(x, 4, eps=layer.eps) * omega[..., None, None] + beta[..., None, None]
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def test_associate_norm_saturation_of_a_model():
    model = nn.Sequential(nn.Conv2d(2, 16, 3), dynnorm.AssociateNorm2d(16, 4), nn.ReLU(), nn.Conv2d(16, 8, 1),
                          nn.BatchNorm2d(8), dynnorm.AssociateNorm2d(8, 2)).double()
    x = _x((5, 2, 6, 6))
    fresh = diagnostics.associate_norm_saturation(model, x)
    assert list(fresh) == ["1", "5"]
    assert all(s["saturated_scale"] == 0 and s["saturated_shift"] == 0 for s in fresh.values())
    with torch.no_grad():  # layer 5: a negative encoder kills every variance embedding (variances are >= 0)
        model[5].encoder_weight.fill_(-1.0)
        model[1].encoder_weight.fill_(1.0)  # layer 1: positive embeddings of the variances, huge decoders
        model[1].shift_decoder_weight.fill_(100.0)
    model.train()
    running = model[4].running_mean.clone()
    shares = diagnostics.associate_norm_saturation(model, x)
    assert shares["5"]["dead_shift_embedding"] == 1.0 and shares["1"]["dead_shift_embedding"] == 0.0
    assert shares["1"]["saturated_shift"] == 1.0
    assert model.training and torch.equal(model[4].running_mean, running)  # evaluation mode, then restored
    assert not model[1]._forward_pre_hooks


def test_effective_pooled_channels_matches_the_dense_matrix():
    factors = (3, 2, 2, 2)
    torch.manual_seed(0)
    for gates in (torch.zeros(4), torch.ones(4), torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.rand(4)):
        row = _pooling_matrix(0.0, gates.tolist(), factors, 1)[5]
        expected = float(1 / row.square().sum())
        assert diagnostics.effective_pooled_channels(gates, factors) == pytest.approx(expected, rel=1e-12)
    assert diagnostics.effective_pooled_channels(torch.ones(4), factors) == pytest.approx(24)  # LN
    assert diagnostics.effective_pooled_channels(torch.tensor([0.0, 0.0, 1.0, 1.0]), factors) == pytest.approx(4)  # GN


def test_dynamic_norm_mixture_of_a_model():
    model = nn.Sequential(dynnorm.DynamicNorm2d(8), nn.Conv2d(8, 8, 1), dynnorm.DynamicNorm2d(8, init="half"))
    with torch.no_grad():
        model[2].var_batch_logit.fill_(-1e4)
        model[2].var_gate_logits.fill_(1e4)
    mixture = diagnostics.dynamic_norm_mixture(model)
    assert list(mixture) == ["0", "2"]
    assert mixture["0"]["mean"]["batch"] == pytest.approx(1 / (1 + math.exp(-3)))
    assert mixture["2"]["mean"] == pytest.approx({"batch": 0.5, "pooled_channels": 1.6 ** 3})
    assert mixture["2"]["var"] == pytest.approx({"batch": 0.0, "pooled_channels": 8.0})
