"""Training resumes from a checkpoint through the CLI, and checkpoints load under torch's ``weights_only`` default."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

from tasks.classification import ImageClassifier  # noqa: E402
from tasks.classification.cli import main  # noqa: E402
from tasks.synthetic_shapes import ShapesSpec, ensure_dataset  # noqa: E402

pytestmark = [pytest.mark.lightning, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SN_CONFIG = ROOT / "configs" / "classification" / "resnet20_sn.yaml"
STEPS_PER_EPOCH = 2


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])


def _fit(shapes_root: Path, out: Path, max_epochs: int, *extra: str):
    return main([
        "fit", "--config", str(SN_CONFIG),
        # a norm given by class path and init args: the checkpoint must still hold only primitive values
        '--model.norm={"class_path": "dynnorm.SwitchNorm2d", "init_args": {"momentum": 0.2}}',
        "--model.backbone_options={depth: 8, width: 8}",
        f"--data.init_args.root={shapes_root}", "--data.init_args.num_train=24", "--data.init_args.num_val=12",
        "--data.init_args.image_size=32", "--data.init_args.batch_size=8",
        f"--trainer.max_epochs={max_epochs}", f"--trainer.limit_train_batches={STEPS_PER_EPOCH}",
        "--trainer.accelerator=cpu", f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra,
    ])


def test_resume_from_checkpoint(tmp_path_factory, tmp_path):
    shapes = ensure_dataset(tmp_path_factory.getbasetemp() / "shapes_small", ShapesSpec(num_train=24, num_val=12, image_size=32))
    first = _fit(shapes, tmp_path, max_epochs=1)
    log_dir = Path(first.trainer.log_dir)
    assert (log_dir / "config.yaml").is_file()  # the run's resolved configuration
    checkpoint = log_dir / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)  # torch's default: primitives and tensors only
    norm = state["hyper_parameters"]["norm"]
    assert norm["class_path"] == "dynnorm.switchable.SwitchNorm2d" and norm["init_args"]["momentum"] == 0.2
    assert state["global_step"] == STEPS_PER_EPOCH

    second = _fit(shapes, tmp_path, 2, f"--ckpt_path={checkpoint}")
    assert second.trainer.global_step == 2 * STEPS_PER_EPOCH  # continued, not restarted
    assert second.trainer.current_epoch == 2
    resumed_layer = second.model.model.bn1
    assert resumed_layer.momentum == 0.2
    assert int(resumed_layer.num_batches_tracked) == 2 * STEPS_PER_EPOCH

    final = Path(second.trainer.log_dir) / "checkpoints" / "last.ckpt"
    restored = ImageClassifier.load_from_checkpoint(final)
    assert restored.model.bn1.momentum == 0.2
    for (name, expected), actual in zip(second.model.state_dict().items(), restored.state_dict().values()):
        torch.testing.assert_close(actual, expected, msg=name)
