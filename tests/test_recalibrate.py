"""dynnorm.recalibrate: running statistics re-estimated as the exact average over batches, nothing else changed."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import dynnorm


def _model() -> nn.Sequential:
    """BN and SN layers with non-trivial weights, a dropout between them, one BN in eval mode (``norm_eval``)."""
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6, momentum=0.1), nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(6, 8, 3, padding=1), dynnorm.SwitchNorm2d(8, momentum=0.003), nn.ReLU(),
        nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4, momentum=None),
    )
    with torch.no_grad():
        for layer in (model[1], model[5], model[8]):
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.normal_(0, 0.3)
            layer.running_mean.normal_(0, 1)
            layer.running_var.uniform_(2, 3)
            layer.num_batches_tracked.fill_(17)
        model[5].mean_weight.copy_(torch.tensor([0.3, -0.2, 0.5]))
        model[5].var_weight.copy_(torch.tensor([-0.1, 0.4, 0.2]))
    model.train()
    model[8].eval()
    return model


def _batches(count: int, n: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(n, 3, 5, 5, generator=generator) * 2 + 1 for _ in range(count)]


def _expected_statistics(model: nn.Module, batches: list[torch.Tensor]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer index: the float64 mean over batches of the batch mean and of the unbiased batch variance of
    the layer's input, with the batch-statistics layers in training mode and the rest (dropout) in eval."""
    reference = copy.deepcopy(model).eval()
    inputs: dict[int, list[torch.Tensor]] = {}
    for index in (1, 5, 8):
        reference[index].train()
        reference[index].register_forward_pre_hook(lambda m, args, i=index: inputs.setdefault(i, []).append(args[0]))
    with torch.no_grad():
        for batch in batches:
            reference(batch)
    expected = {}
    for index, values in inputs.items():
        flat = [v.double().transpose(0, 1).reshape(v.shape[1], -1) for v in values]
        means = torch.stack([f.mean(1) for f in flat])
        variances = torch.stack([f.var(1, correction=1) for f in flat])
        expected[index] = means.mean(0), variances.mean(0)
    return expected


def test_running_statistics_become_the_exact_average_over_the_batches():
    model = _model()
    batches = _batches(7)
    expected = _expected_statistics(model, batches)
    assert dynnorm.recalibrate(model, batches, num_batches=200) == 7
    for index, (mean, var) in expected.items():
        torch.testing.assert_close(model[index].running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model[index].running_var.double(), var, rtol=1e-5, atol=1e-6)


def test_only_the_first_num_batches_are_used():
    model = _model()
    batches = _batches(9)
    expected = _expected_statistics(model, batches[:4])
    assert dynnorm.recalibrate(model, iter(batches), num_batches=4) == 4
    for index, (mean, var) in expected.items():
        torch.testing.assert_close(model[index].running_var.double(), var, rtol=1e-5, atol=1e-6)


def test_nothing_but_the_running_statistics_changes():
    model = _model()
    parameters = {name: p.detach().clone() for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    momenta = [model[i].momentum for i in (1, 5, 8)]
    before = copy.deepcopy(model.state_dict())
    dynnorm.recalibrate(model, _batches(3))
    assert all(torch.equal(p, parameters[name]) for name, p in model.named_parameters())
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert [model[i].momentum for i in (1, 5, 8)] == momenta == [0.1, 0.003, None]
    after = model.state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed == {f"{i}.{stat}" for i in (1, 5, 8) for stat in ("running_mean", "running_var")}


def test_sparse_switchnorm_logits_and_freeze_flags_are_untouched():
    layer = dynnorm.SparseSwitchNorm2d(4)
    dynnorm.set_sparsestmax_radius(layer, 1.0)  # a training pass with gradients would freeze both mixtures
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.5, 0.3, 0.2]))
    model = nn.Sequential(nn.Conv2d(3, 4, 1), layer).train()
    state = copy.deepcopy(model.state_dict())
    dynnorm.recalibrate(model, _batches(3))
    for key in ("1.mean_weight", "1.var_weight", "1.mean_fixed", "1.var_fixed", "1.radius"):
        assert torch.equal(model.state_dict()[key], state[key]), key
    assert not bool(layer.mean_fixed)


def test_an_error_in_a_pass_restores_everything():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    modes = {name: m.training for name, m in model.named_modules()}

    def failing(module, batch):
        if failing.calls == 2:
            raise RuntimeError("loader broke")
        failing.calls += 1
        return module(batch)

    failing.calls = 0
    with pytest.raises(RuntimeError, match="loader broke"):
        dynnorm.recalibrate(model, _batches(5), forward=failing)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert [model[i].momentum for i in (1, 5, 8)] == [0.1, 0.003, None]


def test_no_batches_is_an_error_that_changes_nothing():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="no batches"):
        dynnorm.recalibrate(model, [])
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    with pytest.raises(ValueError, match="num_batches must be a positive int, got 0"):
        dynnorm.recalibrate(model, _batches(1), num_batches=0)


def test_a_layer_no_pass_reaches_keeps_its_statistics():
    auxiliary = nn.BatchNorm2d(8)  # e.g. an auxiliary head that the evaluation forward does not run
    with torch.no_grad():
        auxiliary.running_mean.fill_(3.0)
        auxiliary.num_batches_tracked.fill_(5)
    model = nn.ModuleDict({"body": _model(), "auxiliary": auxiliary})
    assert dynnorm.recalibrate(model, _batches(2), forward=lambda m, batch: m["body"](batch)) == 2
    assert torch.equal(auxiliary.running_mean, torch.full((8,), 3.0)) and int(auxiliary.num_batches_tracked) == 5
    assert torch.equal(auxiliary.running_var, torch.ones(8))


def test_layers_without_running_statistics_are_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), dynnorm.SwitchNorm2d(8, using_bn=False),
                          nn.BatchNorm2d(8, track_running_stats=False),
                          dynnorm.AssociateNorm2d(8, num_groups=4))
    assert dynnorm.running_statistics_layers(model) == []
    assert dynnorm.recalibrate(model, _batches(2)) == 0


def test_the_recalibrated_model_evaluates_with_the_averaged_statistics():
    # In eval mode a BN layer then normalizes a batch with the average of the batch statistics: an input
    # made of the recalibration batches comes out with per-channel mean close to 0.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False))
    batches = [torch.randn(2, 3, 9, 9) + 5 for _ in range(50)]
    dynnorm.recalibrate(model, batches)
    model.eval()
    with torch.no_grad():
        out = model(torch.cat(batches))
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-4


@pytest.mark.lightning
def test_lightning_callback_recalibrates_from_the_training_loader_before_validation(tmp_path):
    pytest.importorskip("lightning")
    from lightning.pytorch import LightningModule, Trainer

    from dynnorm.integrations.lightning import RecalibrateBatchStatistics

    class Classifier(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 4, 3), dynnorm.SwitchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1),
                                     nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

        def forward(self, images):
            return self.net(images)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self.evaluated = {name: t.clone() for name, t in self.net.state_dict().items() if "running" in name}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    images = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    dataset = torch.utils.data.TensorDataset(images, torch.tensor([0, 1] * 4))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)  # 4 batches, in order
    model = Classifier()
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
                      callbacks=[RecalibrateBatchStatistics(num_batches=6)], default_root_dir=tmp_path)
    trainer.fit(model, loader, loader)

    expected = copy.deepcopy(model.net)
    batches = [images[i:i + 2] for i in (0, 2, 4, 6, 0, 2)]  # the loader twice over, cut at 6 batches
    assert dynnorm.recalibrate(expected, batches) == 6
    for name, value in expected.state_dict().items():
        if "running" in name:
            torch.testing.assert_close(model.evaluated[name], value)
    assert int(model.net[1].num_batches_tracked) == 4  # the training steps, not the recalibration passes
