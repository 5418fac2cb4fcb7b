"""Model conversion BN/GN -> dynnorm and back, optimizer groups."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import dynnorm


def _pretrained_like_resnet18() -> nn.Module:
    """A ResNet-18 whose BN layers carry non-trivial 'pretrained' affine and running statistics."""
    model = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5), module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1), module.running_var.uniform_(0.5, 2)
                module.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.mark.parametrize("name", ["SN", "SSN", "EN", "DN", "DNB", "DNC", "AssocNorm", "SyncSN"])
def test_convert_replaces_every_batchnorm_and_copies_state(name):
    model = _pretrained_like_resnet18()
    bn_layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    converted = dynnorm.convert(model, name)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in converted.modules())
    expected_cls = dynnorm.get_norm_layer(name)
    for path, bn in bn_layers.items():
        layer = converted.get_submodule(path)
        assert type(layer) is expected_cls
        assert not layer.training
        # AssocNorm's rescaling is B_omega + 1/2 while its decoders are zero: it starts with the BN's weight
        start = layer.weight + 0.5 if isinstance(layer, dynnorm.AssociateNorm2d) else layer.weight
        torch.testing.assert_close(start, bn.weight)
        torch.testing.assert_close(layer.bias, bn.bias)
        if layer.track_running_stats:
            torch.testing.assert_close(layer.running_mean, bn.running_mean)
            torch.testing.assert_close(layer.running_var, bn.running_var)
            assert int(layer.num_batches_tracked) == 7
    assert converted(torch.randn(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize("name", ["DNB", "DNC"])
def test_converted_dn_b_network_keeps_its_function(name):
    model = _pretrained_like_resnet18()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    converted = dynnorm.convert(model, name)
    torch.testing.assert_close(converted(x), expected)
    reverted = dynnorm.revert(converted)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in reverted.modules()) == 20
    torch.testing.assert_close(reverted(x), expected)


def test_convert_respects_overrides_dimensions_and_groupnorm():
    model = nn.Sequential(nn.Conv1d(3, 8, 1), nn.BatchNorm1d(8, momentum=0.2), nn.Conv3d(8, 8, 1),
                          nn.BatchNorm3d(8), nn.GroupNorm(4, 8), nn.SyncBatchNorm(8))
    converted = dynnorm.convert(model, "SN", using_bn=False)
    assert [type(m) for m in converted if dynnorm.is_dynnorm(m)] == [
        dynnorm.SwitchNorm1d, dynnorm.SwitchNorm3d, dynnorm.SwitchNorm2d, dynnorm.SwitchNorm2d]
    assert converted[1].momentum == 0.2 and not converted[1].using_bn
    assoc = dynnorm.convert(nn.Sequential(nn.GroupNorm(16, 64)), "AssocNorm")
    assert assoc[0].num_groups == 16
    with pytest.raises(ValueError, match=r"0: BatchNorm1d has no 1d counterpart in ExemplarNorm2d"):
        dynnorm.convert(nn.Sequential(nn.BatchNorm1d(8)), "EN")


def test_convert_root_layer_and_dtype():
    layer = nn.BatchNorm2d(8, dtype=torch.float64)
    converted = dynnorm.convert(layer, dict(type="SN", momentum=0.01))
    assert isinstance(converted, dynnorm.SwitchNorm2d) and converted.momentum == 0.01
    assert converted.weight.dtype == torch.float64


def test_revert_strict_names_the_layer_without_equivalent():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), dynnorm.SwitchNorm2d(8))
    with pytest.raises(ValueError, match=r"1: SwitchNorm2d has no exact torch equivalent"):
        dynnorm.revert(model)
    assert isinstance(dynnorm.revert(model, strict=False)[1], dynnorm.SwitchNorm2d)


def test_param_groups_exempt_norm_parameters_from_weight_decay():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), dynnorm.SwitchNorm2d(8), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
    groups = dynnorm.param_groups(model, weight_decay=1e-4)
    decayed, exempt = groups
    assert decayed["weight_decay"] == 1e-4 and exempt["weight_decay"] == 0.0
    assert {id(p) for p in exempt["params"]} == {id(p) for p in [*model[1].parameters(), *model[3].parameters()]}
    assert len(decayed["params"]) == 4
    torch.optim.SGD(groups, lr=0.1)


def test_importance_ratios_lists_layers_in_model_order():
    model = nn.Sequential(dynnorm.SwitchNorm2d(8), dynnorm.ExemplarNorm2d(8), dynnorm.AssociateNorm2d(32))
    ratios = dynnorm.importance_ratios(model)
    assert list(ratios) == ["0", "1"]
    assert ratios["0"]["mean"] == pytest.approx({"IN": 1 / 3, "LN": 1 / 3, "BN": 1 / 3})


def test_ratio_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    from dynnorm.plotting import plot_importance_ratios

    model = nn.Sequential(dynnorm.SwitchNorm2d(8), dynnorm.ExemplarNorm2d(8))
    model(torch.randn(2, 8, 4, 4))
    path = plot_importance_ratios(dynnorm.importance_ratios(model), tmp_path / "ratios.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no IN/LN/BN ratios"):
        plot_importance_ratios({}, tmp_path / "empty.png")


@pytest.mark.parametrize("cls, expected", [
    (dynnorm.SwitchNorm1d, nn.BatchNorm1d), (dynnorm.SparseSwitchNorm1d, nn.BatchNorm1d),
    (dynnorm.SwitchNorm3d, nn.BatchNorm3d), (dynnorm.SparseSwitchNorm3d, nn.BatchNorm3d),
])
def test_one_hot_layers_revert_to_the_batchnorm_of_their_dimension(cls, expected):
    layer = cls(8)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([-1e4, -1e4, 1e4]))
        layer.var_weight.copy_(torch.tensor([-1e4, -1e4, 1e4]))
    assert type(dynnorm.torch_equivalent(layer)) is expected


def test_associate_norm_converted_from_groupnorm_starts_as_it_and_reverts_to_it():
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.GroupNorm(8, 32), nn.ReLU()).double()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.normal_()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    converted = dynnorm.convert(copy.deepcopy(model), "AssocNorm")
    assert isinstance(converted[1], dynnorm.AssociateNorm2d) and converted[1].num_groups == 8
    torch.testing.assert_close(converted(x), model(x), rtol=1e-12, atol=1e-12)
    reverted = dynnorm.revert(copy.deepcopy(converted))
    assert type(reverted[1]) is nn.GroupNorm
    torch.testing.assert_close(reverted(x), model(x), rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # once its decoders have learned something it is no longer a GroupNorm
        converted[1].scale_decoder_weight.fill_(0.1)
    assert converted[1].torch_equivalent() is None
