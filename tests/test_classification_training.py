"""A short real training run on the embedded data learns the task, and the ratio logger records what SN learned."""
from __future__ import annotations

import csv
import functools

import pytest
import torch

pytest.importorskip("lightning")

from lightning.pytorch import Trainer, seed_everything  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from dynnorm.integrations.lightning import ImportanceRatioLogger  # noqa: E402
from tasks.classification import ImageClassifier, SyntheticShapesDataModule  # noqa: E402

pytestmark = [pytest.mark.lightning, pytest.mark.slow]

#: Chance is 1/3 and the largest class is 37% of the validation images; 6 epochs reach about 0.8.
MIN_ACCURACY = 0.65


@pytest.fixture
def one_thread():
    """A model this small trains fastest on one thread, and much faster on one when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_switchnorm_resnet_learns_the_synthetic_shapes(tmp_path_factory, tmp_path, one_thread):
    seed_everything(0)
    data = SyntheticShapesDataModule(root=str(tmp_path_factory.getbasetemp() / "shapes_800"), num_train=800,
                                     num_val=200, image_size=32, batch_size=32)
    epochs = 6
    model = ImageClassifier(
        norm="SN", num_classes=data.num_classes, backbone_options={"depth": 8, "width": 16},
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs),
        norm_weight_decay=0.0,
    )
    ratio_logger = ImportanceRatioLogger()
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", logger=CSVLogger(tmp_path), callbacks=[ratio_logger],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)

    (metrics,) = trainer.validate(model, data, verbose=False)
    print(f"validation accuracy after {epochs} epochs: {metrics['val_acc1']:.3f}")
    assert metrics["val_acc1"] >= MIN_ACCURACY, metrics

    # Ratios: logged every epoch, plotted at the end, and moved away from their uniform start.
    assert ratio_logger.plot_path == tmp_path / "lightning_logs" / "version_0" / "importance_ratios.png"
    assert ratio_logger.plot_path.stat().st_size > 10_000
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("ratios/model.bn1/mean/BN")]
    assert len(rows) == epochs
    last = {name: float(rows[-1][f"ratios/model.bn1/mean/{name}"]) for name in ("IN", "LN", "BN")}
    assert sum(last.values()) == pytest.approx(1.0, abs=1e-5)
    assert max(abs(v - 1 / 3) for v in last.values()) > 1e-3
