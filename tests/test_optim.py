"""Optimizer treatment of the mixture logits: their own group (lr multiplier, no weight decay) and gradient clipping."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import dynnorm


def _ssn_model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3), dynnorm.SparseSwitchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))


def _ids(parameters) -> set[int]:
    return {id(p) for p in parameters}


def test_mixture_parameters_are_the_logits_each_layer_names():
    sn, ssn = dynnorm.SwitchNorm2d(8), dynnorm.SparseSwitchNorm2d(8)
    dn, en = dynnorm.DynamicNorm2d(8), dynnorm.ExemplarNorm2d(8)
    shared = nn.Sequential(sn, ssn, dn, en, sn)  # a layer used twice is listed once
    found = dynnorm.mixture_parameters(shared)
    gates = [getattr(dn, name) for name in type(dn).mixture_parameter_names]
    expected = [sn.mean_weight, sn.var_weight, ssn.mean_weight, ssn.var_weight, *gates]
    assert [id(p) for p in found] == [id(p) for p in expected]
    assert len(found) == len(_ids(found)) == 4 + len(type(dn).mixture_parameter_names)
    assert dynnorm.mixture_parameters(nn.Sequential(en, nn.BatchNorm2d(8))) == []


def test_param_groups_put_the_logits_in_a_group_of_their_own():
    model = _ssn_model()
    decay, norms, logits = dynnorm.param_groups(model, 1e-4, 0.0, lr=0.2, mixture_lr_mult=0.1)
    ssn, bn = model[1], model[4]
    assert _ids(logits["params"]) == {id(ssn.mean_weight), id(ssn.var_weight)}
    assert logits["lr"] == pytest.approx(0.02) and logits["weight_decay"] == 0.0
    assert _ids(norms["params"]) == _ids([ssn.weight, ssn.bias, bn.weight, bn.bias]) and "lr" not in norms
    assert norms["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-4 and "lr" not in decay
    assert len(decay["params"]) == 6  # two convolutions and the linear layer, weights and biases
    optimizer = torch.optim.SGD([decay, norms, logits], lr=0.2, momentum=0.9)
    assert [g["lr"] for g in optimizer.param_groups] == [0.2, 0.2, pytest.approx(0.02)]


def test_without_a_multiplier_the_groups_are_unchanged():
    model = _ssn_model()
    groups = dynnorm.param_groups(model, 1e-4, 0.0)
    assert [sorted(g) for g in groups] == [["params", "weight_decay"]] * 2
    assert _ids(groups[1]["params"]) == _ids([*model[1].parameters(), *model[4].parameters()])


def test_a_scheduler_keeps_the_logits_rate_proportional():
    model = _ssn_model()
    optimizer = torch.optim.SGD(dynnorm.param_groups(model, 1e-4, lr=0.1, mixture_lr_mult=0.1), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    base, logits = optimizer.param_groups[0]["lr"], optimizer.param_groups[-1]["lr"]
    assert base < 0.1 and logits == pytest.approx(0.1 * base)


def test_a_multiplier_without_the_base_rate_is_an_error():
    with pytest.raises(ValueError, match=r"mixture_lr_mult=0.1 needs the optimizer's base learning rate"):
        dynnorm.param_groups(_ssn_model(), 1e-4, mixture_lr_mult=0.1)
    with pytest.raises(ValueError, match="mixture_lr_mult must be a non-negative number, got -1"):
        dynnorm.param_groups(_ssn_model(), 1e-4, lr=0.1, mixture_lr_mult=-1)


def _gradients(model: nn.Module, seed: int = 0) -> None:
    model.zero_grad()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    (model(x) * torch.arange(2.0)).square().sum().mul(100).backward()


def test_clipping_scales_the_logits_gradients_together_and_nothing_else():
    model = _ssn_model()
    _gradients(model)
    logits = dynnorm.mixture_parameters(model)
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    total = torch.linalg.vector_norm(torch.cat([p.grad for p in logits]))
    assert total > 1e-3
    returned = dynnorm.clip_mixture_grad_norm(model, max_norm=1e-3)
    torch.testing.assert_close(returned, total)
    after = torch.linalg.vector_norm(torch.cat([p.grad for p in logits]))
    torch.testing.assert_close(after, torch.tensor(1e-3), rtol=1e-4, atol=0)
    scale = float(1e-3 / total)
    for name, parameter in model.named_parameters():
        if any(parameter is p for p in logits):
            torch.testing.assert_close(parameter.grad, before[name] * scale, rtol=1e-4, atol=1e-12)
        else:
            assert torch.equal(parameter.grad, before[name]), name


def test_clipping_below_the_threshold_changes_nothing():
    model = _ssn_model()
    _gradients(model)
    before = [p.grad.clone() for p in dynnorm.mixture_parameters(model)]
    total = dynnorm.clip_mixture_grad_norm(model, max_norm=1e6)
    assert all(torch.equal(p.grad, g) for p, g in zip(dynnorm.mixture_parameters(model), before))
    assert float(total) < 1e6


@pytest.mark.lightning
def test_lightning_callback_clips_before_every_step(tmp_path):
    pytest.importorskip("lightning")
    from lightning.pytorch import Callback, Trainer

    from dynnorm.integrations.lightning import ClipMixtureGradNorm
    from tasks.classification import ImageClassifier

    images, labels = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)
    model = ImageClassifier(norm="SSN", num_classes=3, backbone_options={"depth": 8, "width": 4},
                            optimizer=functools.partial(torch.optim.SGD, lr=0.1), norm_weight_decay=0.0,
                            mixture_lr_mult=0.1)
    norms = []

    class RecordAtStep(Callback):  # after the clipping callback: the gradients the optimizer will apply
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads = [p.grad for p in dynnorm.mixture_parameters(pl_module) if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.cat(grads))))

    def fit(callbacks):
        norms.clear()
        torch.manual_seed(0)
        trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                          default_root_dir=tmp_path)
        trainer.fit(model, loader)
        return list(norms)

    unclipped = fit([RecordAtStep()])
    assert len(unclipped) == 2 and min(unclipped) > 1e-6
    clipped = fit([ClipMixtureGradNorm(max_norm=1e-6), RecordAtStep()])
    assert len(clipped) == 2 and max(clipped) <= 1e-6 * (1 + 1e-4)


@pytest.mark.lightning
def test_classifier_puts_the_logits_in_their_own_group_at_the_optimizer_rate():
    pytest.importorskip("lightning")
    from tasks.classification import ImageClassifier

    model = ImageClassifier(norm="SSN", num_classes=3, backbone_options={"depth": 8}, weight_decay=1e-4,
                            mixture_lr_mult=0.1, optimizer=functools.partial(torch.optim.SGD, lr=0.4, momentum=0.9))
    optimizer = model.configure_optimizers()
    decay, norms, logits = optimizer.param_groups
    assert _ids(logits["params"]) == _ids(dynnorm.mixture_parameters(model)) and len(logits["params"]) == 9 * 2
    assert (logits["lr"], logits["weight_decay"]) == (pytest.approx(0.04), 0.0)
    assert (decay["lr"], decay["weight_decay"], norms["lr"], norms["weight_decay"]) == (0.4, 1e-4, 0.4, 1e-4)
