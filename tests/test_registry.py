"""Building layers by name, and the torch-only import."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import dynnorm


@pytest.mark.parametrize("name", dynnorm.list_norms())
def test_every_short_name_builds_a_working_layer(name):
    layer = dynnorm.create_norm(name, 64)
    assert layer(torch.randn(2, 64, 4, 4)).shape == (2, 64, 4, 4)
    documented = type(layer).__mro__[1] if name.startswith("Sync") else type(layer)
    assert "Confirmed" in documented.__doc__  # every method says what is confirmed and what is interpreted
    if name.startswith("Sync"):
        assert "synchronized across processes" in type(layer).__doc__


@pytest.mark.parametrize("spelling", ["SN", "sn", "switch_norm_2d", "SwitchNorm2d", "switchnorm2d"])
def test_names_are_case_and_underscore_insensitive(spelling):
    assert dynnorm.get_norm_layer(spelling) is dynnorm.SwitchNorm2d


def test_config_dicts_classes_and_sync_names():
    layer = dynnorm.create_norm(dict(type="EN", hidden_size=8), 64)
    assert isinstance(layer, dynnorm.ExemplarNorm2d) and layer.hidden_size == 8
    assert isinstance(dynnorm.create_norm(dynnorm.DynamicNorm2d, 16), dynnorm.DynamicNorm2d)
    synced = dynnorm.create_norm("SyncSN", 16)
    assert synced.sync_batch_stats and not dynnorm.create_norm("SN", 16).sync_batch_stats
    assert not dynnorm.create_norm("SyncSN", 16, sync_batch_stats=False).sync_batch_stats


def test_unknown_names_and_bad_configs_raise_clearly():
    with pytest.raises(KeyError, match=r"Unknown norm layer 'XN'; available: \["):
        dynnorm.create_norm("XN", 8)
    with pytest.raises(KeyError, match="must have a 'type' key"):
        dynnorm.create_norm({"momentum": 0.1}, 8)
    with pytest.raises(TypeError, match="got int"):
        dynnorm.get_norm_layer(3)


@pytest.mark.parametrize("name, suggested", [
    ("SNN", "did you mean 'SN' or 'SSN'?"),
    ("AssocNrom", "did you mean 'AssocNorm'?"),
    ("sync-sn-2d", "did you mean 'SyncSN'?"),
    ("ExamplarNorm2d", "did you mean 'ExemplarNorm2d'?"),
    ("switch_norm", "did you mean 'SwitchNorm2d', 'SwitchNorm1d' or 'SwitchNorm3d'?"),
])
def test_an_unknown_name_suggests_the_closest_known_ones(name, suggested):
    with pytest.raises(dynnorm.UnknownNormError) as raised:
        dynnorm.create_norm(name, 8)
    assert str(raised.value) == (f"Unknown norm layer {name!r}; {suggested} available: "
                                 f"{sorted(['BN', 'GN', *dynnorm.list_norms()])}")
    with pytest.raises(ValueError, match=suggested.replace("?", r"\?")):
        dynnorm.get_norm_layer({"type": name})


def test_nothing_close_is_not_suggested():
    from dynnorm.registry import close_names

    assert close_names("XN") == close_names("BatchNorm2d") == close_names("EN2d") == close_names("SSNorm") == []
    assert close_names("SyncBn", ["BN", "SyncBN", "GN"]) == ["SyncBN"]  # a spelling away from a name given


def test_display_names_come_from_the_registry():
    assert [dynnorm.display_name(n) for n in dynnorm.list_norms(sync=False, torch_layers=True)] == [
        "BN", "GN", "SN", "SSN", "EN", "DN", "DN-B", "DN-C", "AssocNorm"]
    assert dynnorm.display_name("dynamic_norm_b2d") == dynnorm.display_name("dn-b") == "DN-B"
    assert dynnorm.display_name("SyncDynamicNormC2d") == "SyncDN-C"
    assert dynnorm.display_name("SwitchNorm1d") == "SwitchNorm1d"  # no short name of its own
    # every display name builds the layer it names
    for name in dynnorm.list_norms(torch_layers=True):
        assert dynnorm.get_norm_layer(dynnorm.display_name(name)) is dynnorm.get_norm_layer(name)
    with pytest.raises(KeyError, match="did you mean 'DNB'"):
        dynnorm.display_name("DNBB")


def test_list_norms_without_sync_variants_or_with_torch_layers():
    assert dynnorm.list_norms(sync=False) == ["SN", "SSN", "EN", "DN", "DNB", "DNC", "AssocNorm"]
    assert dynnorm.list_norms() == [*dynnorm.list_norms(sync=False), *dynnorm.registry.SYNC_NAMES]
    assert dynnorm.list_norms(torch_layers=True)[:2] == ["BN", "GN"]


def test_import_dynnorm_loads_torch_and_nothing_heavier():
    heavy = ["mmengine", "mmcv", "mmdet", "mmseg", "lightning", "pytorch_lightning", "torchvision",
             "matplotlib", "torchmetrics", "triton"]
    code = ("import sys, dynnorm; loaded = [m for m in %r if m in sys.modules]; "
            "print(','.join(loaded)); assert not loaded, loaded" % heavy)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
