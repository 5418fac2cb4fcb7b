"""Lightning DDP with the SyncDynNorm plugin: 2 CPU processes train exactly like one process on the whole batch.

Each of the 2 processes (gloo) gets half of a batch of ``2 x N`` images. With the plugin, every SN layer
computes its BN statistics over both halves, so after a training step the running statistics and (with
DDP's averaged gradients) the parameters equal those of one process that took the step on the whole
batch; without it they differ. The callbacks and the plugin's apply/revert are checked without processes.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

pytest.importorskip("lightning")

from lightning.pytorch import Trainer  # noqa: E402

import dynnorm  # noqa: E402
from dynnorm.integrations.lightning import (  # noqa: E402
    ImportanceRatioLogger, SparsestMaxRadiusSchedule, SyncDynNorm, batch_statistics_layers,
)
from tasks.classification import ImageClassifier  # noqa: E402

pytestmark = pytest.mark.lightning

PER_RANK = 4
STEPS = 2


def _model() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(norm="SN", num_classes=3, backbone_options={"depth": 8, "width": 8},
                           optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9))


def _batches() -> TensorDataset:
    """``STEPS`` global batches of ``2 * PER_RANK`` samples whose halves have different statistics."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(STEPS * 2 * PER_RANK, 3, 16, 16, generator=generator)
    images[1::2] = images[1::2] * 3 + 2  # odd samples (rank 1's) are shifted and scaled
    labels = torch.randint(0, 3, (images.shape[0],), generator=generator)
    return TensorDataset(images, labels)


class RankInterleaved(Sampler):
    """Process ``r`` of ``w`` takes samples ``r, r + w, r + 2w, ...`` in order (read when iterating, in the process)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __iter__(self):
        return iter(range(dist.get_rank(), self.size, dist.get_world_size()))

    def __len__(self) -> int:
        return self.size // 2


def _single_process_reference() -> dict[str, torch.Tensor]:
    model = _model()
    optimizer = model.configure_optimizers()
    images, labels = _batches().tensors
    model.train()
    for step in range(STEPS):
        # RankInterleaved: rank r takes samples r, r + 2, ...; each step takes PER_RANK of them.
        index = torch.cat([torch.arange(rank, images.shape[0], 2)[step * PER_RANK:(step + 1) * PER_RANK] for rank in (0, 1)])
        loss = model.criterion(model(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.state_dict()


def _fit_two_processes(plugins: list) -> dict[str, torch.Tensor]:
    model = _model()
    trainer = Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, plugins=plugins, max_steps=STEPS,
                      use_distributed_sampler=False, limit_val_batches=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    dataset = _batches()
    trainer.fit(model, DataLoader(dataset, batch_size=PER_RANK, sampler=RankInterleaved(len(dataset))))
    return model.state_dict()  # rank 0's final state, sent back by the spawn launcher


@pytest.mark.slow
@pytest.mark.parametrize("synchronized", [True, False], ids=["SyncDynNorm", "per-process"])
def test_ddp_statistics_match_single_process_only_when_synchronized(synchronized):
    expected = _single_process_reference()
    actual = _fit_two_processes([SyncDynNorm()] if synchronized else [])
    statistics = [name for name in expected if name.endswith(("running_mean", "running_var"))]
    assert len(statistics) == 2 * 9
    if synchronized:
        for name, value in expected.items():
            torch.testing.assert_close(actual[name], value, rtol=1e-4, atol=1e-5, msg=name)
    else:
        assert not all(torch.allclose(actual[name], expected[name], rtol=1e-4, atol=1e-5) for name in statistics)


def test_sync_plugin_apply_and_revert():
    model = nn.Sequential(dynnorm.SwitchNorm2d(4), dynnorm.SyncExemplarNorm2d(4), dynnorm.AssociateNorm2d(4, num_groups=2),
                          dynnorm.SwitchNorm2d(4, using_bn=False), nn.BatchNorm2d(4))
    plugin = SyncDynNorm()
    synced = plugin.apply(model)
    assert [type(m) for m in batch_statistics_layers(synced)] == [dynnorm.SwitchNorm2d, dynnorm.SyncExemplarNorm2d]
    assert synced[0].sync_batch_stats and synced[1].sync_batch_stats
    assert not synced[2].sync_batch_stats and not synced[3].sync_batch_stats  # no batch statistics to sync
    assert isinstance(synced[4], nn.SyncBatchNorm)
    reverted = plugin.revert(synced)
    assert not reverted[0].sync_batch_stats and reverted[1].sync_batch_stats  # each layer's own setting again
    assert isinstance(reverted[4], nn.modules.batchnorm._BatchNorm) and not isinstance(reverted[4], nn.SyncBatchNorm)
    kept = SyncDynNorm(torch_batchnorm=False).apply(nn.Sequential(nn.BatchNorm2d(4)))
    assert type(kept[0]) is nn.BatchNorm2d


def test_sparsestmax_radius_grows_linearly():
    model = nn.Sequential(dynnorm.SparseSwitchNorm2d(4), dynnorm.SwitchNorm2d(4))
    schedule = SparsestMaxRadiusSchedule(final_radius=0.8)
    for step, expected in [(0, 0.0), (25, 0.2), (100, 0.8), (130, 0.8)]:
        schedule.on_train_batch_start(SimpleNamespace(global_step=step, estimated_stepping_batches=100), model, None, 0)
        assert float(model[0].radius) == pytest.approx(expected)


def test_ratio_logger_leaves_models_without_ratios_alone(tmp_path):
    logged = []
    trainer = SimpleNamespace(current_epoch=0, global_step=3, is_global_zero=True, log_dir=str(tmp_path),
                              default_root_dir=str(tmp_path),
                              loggers=[SimpleNamespace(log_metrics=lambda metrics, step: logged.append((metrics, step)))])
    callback = ImportanceRatioLogger()
    callback.on_train_epoch_end(trainer, nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    callback.on_fit_end(trainer, nn.Sequential(nn.BatchNorm2d(4), dynnorm.DynamicNormB2d(4)))
    assert logged == [] and callback.plot_path is None and not any(tmp_path.iterdir())
    callback.on_train_epoch_end(trainer, nn.Sequential(dynnorm.SwitchNorm2d(4)))
    ((metrics, step),) = logged
    assert step == 3 and set(metrics) == {f"ratios/0/{kind}/{name}" for kind in ("mean", "var") for name in ("IN", "LN", "BN")}
