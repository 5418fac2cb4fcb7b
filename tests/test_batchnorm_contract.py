"""BatchNorm's contract, to the letter (torch's ``_BatchNorm`` is the anchor): what happens when
``track_running_stats`` is switched off after construction, what ``reset_parameters`` resets, and that
checkpoints written by earlier versions of the layers still load."""
from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

import dynnorm
from layer_cases import BATCH_CASES, randomize, ready_to_freeze


def _as_batchnorm(layer: dynnorm.SwitchNorm2d) -> dynnorm.SwitchNorm2d:
    """SN with both mixtures one-hot on BN (exactly, in float64): the same function as nn.BatchNorm2d."""
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([-1e4, -1e4, 0.0]))
        layer.var_weight.copy_(torch.tensor([-1e4, -1e4, 0.0]))
    return layer


@pytest.mark.parametrize("fast", [True, False], ids=["fused", "reference"])
def test_switching_off_running_statistics_after_construction_behaves_as_batchnorm(fast):
    layer = _as_batchnorm(dynnorm.SwitchNorm2d(4, dtype=torch.float64))
    bn = nn.BatchNorm2d(4, dtype=torch.float64)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * 2 + 1
    with dynnorm.fast_path(fast):
        for module in (layer, bn):
            module(x)  # running statistics now differ from their initial values
            module.track_running_stats = False
        for step in range(2):
            for training in (True, False):
                layer.train(training), bn.train(training)
                torch.testing.assert_close(layer(x + step), bn(x + step), msg=f"training={training}")
                for name in ("running_mean", "running_var", "num_batches_tracked"):
                    torch.testing.assert_close(getattr(layer, name), getattr(bn, name), msg=name)
    assert int(layer.num_batches_tracked) == 1  # not counted once switched off


@pytest.mark.parametrize("case", BATCH_CASES, ids=str)
def test_untracked_training_leaves_the_buffers_alone_and_evaluation_still_uses_them(case):
    layer = randomize(case.build(4, dtype=torch.float64))
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    layer(x)
    layer.track_running_stats = False
    buffers = {name: b.clone() for name, b in layer.named_buffers()}
    for fast in (True, False):
        with dynnorm.fast_path(fast):
            layer(x * 3 + 2)
        for name, b in layer.named_buffers():
            assert torch.equal(b, buffers[name]), name
    layer.eval()
    tracked = copy.deepcopy(layer)
    tracked.track_running_stats = True
    torch.testing.assert_close(layer(x), tracked(x))  # evaluation uses the running statistics either way


def test_sparse_switchnorm_reset_parameters_unfreezes_and_resets_the_radius():
    layer = ready_to_freeze(8)
    layer(torch.randn(4, 8, 3, 3)).sum().backward()
    assert bool(layer.mean_fixed) and bool(layer.var_fixed) and float(layer.radius) == 1.0
    layer.reset_parameters()
    fresh = dynnorm.SparseSwitchNorm2d(8)
    for (name, a), b in zip(layer.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def _written_by_version_1(state: dict, renames: dict[str, str] = {}, drop: tuple[str, ...] = ()) -> OrderedDict:
    """A state dict as version 1 of the layers wrote it."""
    old = OrderedDict((renames.get(key, key), value) for key, value in state.items() if key not in drop)
    old._metadata = OrderedDict({"": {"version": 1}})
    return old


def test_exemplar_norm_loads_checkpoints_written_before_its_static_logits_were_renamed():
    trained = randomize(dynnorm.ExemplarNorm2d(8))
    old = _written_by_version_1(trained.state_dict(), renames={"ratio_b2": "ratio_bias"})
    assert "ratio_bias" in old and "ratio_b2" not in old
    layer = dynnorm.ExemplarNorm2d(8)
    layer.load_state_dict(old)
    torch.testing.assert_close(layer.ratio_b2, trained.ratio_b2)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(layer(x), trained(x))
    assert layer.state_dict()._metadata[""]["version"] == 2


def test_sparse_switchnorm_loads_checkpoints_that_froze_by_writing_the_logits():
    """Version 1 froze a mixture by writing its one-hot vector into the logits; the selection is their argmax."""
    trained = dynnorm.SparseSwitchNorm2d(8)
    state = trained.state_dict()
    state["mean_weight"], state["mean_fixed"] = torch.tensor([0.0, 1.0, 0.0]), torch.tensor(True)
    old = _written_by_version_1(state, drop=("mean_selected", "var_selected"))
    layer = dynnorm.SparseSwitchNorm2d(8)
    layer.load_state_dict(old)
    assert bool(layer.mean_fixed) and int(layer.mean_selected) == 1 and not bool(layer.var_fixed)
    assert torch.equal(layer.mixture_weights()[0], torch.tensor([0.0, 1.0, 0.0]))
    current = trained.state_dict()  # version 2: its selections are part of it
    del current["mean_selected"]
    with pytest.raises(RuntimeError, match="mean_selected"):
        dynnorm.SparseSwitchNorm2d(8).load_state_dict(current)
