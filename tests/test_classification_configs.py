"""Every shipped classification config runs one training and one validation batch (``fast_dev_run``).

The configs' data point at small stand-ins: a tiny generated synthetic set, fake CIFAR batch files, fake
Fashion-MNIST IDX files and the synthetic set's ImageFolder view. The DDP config runs as users run it,
``python -m tasks.classification`` with 2 CPU processes (gloo).
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("lightning")

import dynnorm  # noqa: E402
from tasks.classification import resolve_norm  # noqa: E402
from tasks.classification.cli import main  # noqa: E402
from tasks.synthetic_shapes import ShapesSpec, ensure_dataset  # noqa: E402

pytestmark = pytest.mark.lightning

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs" / "classification").glob("*.yaml"))
SMALL_SHAPES = ShapesSpec(num_train=24, num_val=12, image_size=32)
PLOTTED_NORMS = (dynnorm.SwitchNorm2d, dynnorm.SparseSwitchNorm2d, dynnorm.ExemplarNorm2d)  # IN/LN/BN ratios: plotted


def write_fake_cifar(root: Path, variant: str, per_file: int = 8) -> Path:
    """Python-pickle batch files laid out like the official archives, with random images."""
    rng = np.random.default_rng(0)
    if variant == "cifar10":
        folder, files, key, classes = root / "cifar-10-batches-py", [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"], "labels", 10
    else:
        folder, files, key, classes = root / "cifar-100-python", ["train", "test"], "fine_labels", 100
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        batch = {"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 key: rng.integers(0, classes, per_file).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


def write_fake_fashion_mnist(folder: Path, per_file: int = 20) -> Path:
    """The four gzipped IDX files of Fashion-MNIST, with random images."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        images, labels = rng.integers(0, 256, (per_file, 28, 28)), np.arange(per_file) % 10
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
            (folder / f"{split}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return folder


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])  # the CLI gets its arguments from args=


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    shapes = ensure_dataset(base / "shapes_small", SMALL_SHAPES)
    return {"shapes": shapes, "cifar10": write_fake_cifar(base / "cifar10", "cifar10"),
            "cifar100": write_fake_cifar(base / "cifar100", "cifar100"),
            "fashion-mnist": write_fake_fashion_mnist(base / "fashion-mnist")}


def data_overrides(config: dict, roots: dict) -> list[str]:
    data = config["data"]
    kind = data["class_path"].rsplit(".", 1)[1]
    if kind == "SyntheticShapesDataModule":
        return [f"--data.init_args.root={roots['shapes']}", f"--data.init_args.num_train={SMALL_SHAPES.num_train}",
                f"--data.init_args.num_val={SMALL_SHAPES.num_val}", f"--data.init_args.image_size={SMALL_SHAPES.image_size}"]
    if kind == "CIFARDataModule":
        return [f"--data.init_args.root={roots[data['init_args']['variant']]}", "--data.init_args.num_workers=0"]
    if kind == "FashionMNISTDataModule":
        return [f"--data.init_args.root={roots['fashion-mnist']}", "--data.init_args.val_size=10",
                "--data.init_args.num_workers=0"]
    if kind == "ImageFolderDataModule":
        return [f"--data.init_args.root={roots['shapes'] / 'classification'}", "--data.init_args.image_size=32",
                "--data.init_args.num_workers=0"]
    raise AssertionError(f"no test data for {kind} in {config}")


def fast_dev_run_args(path: Path, roots: dict, out: Path) -> list[str]:
    return ["fit", "--config", str(path), *data_overrides(yaml.safe_load(path.read_text()), roots),
            "--data.init_args.batch_size=4", "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_every_config_is_tested():
    names = {p.stem for p in CONFIGS}
    for norm in ("bn", "gn", "sn", "ssn", "en", "dn", "dnb", "dnc", "assocnorm"):
        assert f"resnet20_{norm}" in names
    assert {"resnet18_sn", "resnet50_sn", "mobilenetv2_sn", "resnet20_sn_ddp"} <= names


@pytest.mark.parametrize("path", [p for p in CONFIGS if yaml.safe_load(p.read_text())["trainer"].get("devices", 1) == 1],
                         ids=lambda p: p.stem)
def test_fast_dev_run(path, data_roots, tmp_path):
    cli = main(fast_dev_run_args(path, data_roots, tmp_path))
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes
    norm = yaml.safe_load(path.read_text())["model"]["norm"]
    if isinstance(resolve_norm(norm)(16), PLOTTED_NORMS):
        assert (tmp_path / "importance_ratios.png").stat().st_size > 0


def test_ddp_config_fast_dev_run_with_two_cpu_processes(data_roots, tmp_path):
    path = ROOT / "configs" / "classification" / "resnet20_sn_ddp.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "tasks.classification", *fast_dev_run_args(path, data_roots, tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr
    assert "`Trainer.fit` stopped: `max_steps=1` reached." in result.stdout + result.stderr
