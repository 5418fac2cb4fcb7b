"""Fashion-MNIST: the IDX reader and data module on small files written here in the real format, the real
dataset where it is installed, a fashion-mnist config through the CLI (fit, then test from its checkpoint),
and the batch-size study's resume and aggregation on fake results (no training)."""
from __future__ import annotations

import gzip
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

from tasks.classification import data as data_module  # noqa: E402
from tasks.classification.cli import main  # noqa: E402
from tasks.classification.data import (  # noqa: E402
    FASHION_MNIST_MEAN, FASHION_MNIST_STD, FashionMNISTDataModule, load_fashion_mnist, read_idx_ubyte, stratified_split,
)
from benchmarks import batch_size_study  # noqa: E402

pytestmark = pytest.mark.lightning

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "classification" / "resnet8_sn_fashion_mnist.yaml"
NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(path: Path, array: np.ndarray, gzipped: bool = False) -> Path:
    """``array`` (uint8) as an IDX file: magic ``0x0000 08 <ndim>``, big-endian sizes, the bytes."""
    content = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape) + array.astype(np.uint8).tobytes()
    if gzipped:
        path, content = path.with_name(path.name + ".gz"), gzip.compress(content)
    path.write_bytes(content)
    return path


def fake_split(per_class: int, first_id: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled images whose pixel (0, 0) is the label and pixels (0, 1), (0, 2) a unique sample id."""
    labels = rng.permutation(np.repeat(np.arange(10), per_class))
    images = rng.integers(0, 256, (labels.size, 28, 28)).astype(np.uint8)
    ids = np.arange(first_id, first_id + labels.size)
    images[:, 0, 0], images[:, 0, 1], images[:, 0, 2] = labels, ids // 256, ids % 256
    return images, labels


def write_fashion_mnist(folder: Path, train_per_class: int = 8, test_per_class: int = 3,
                        gzipped: tuple[bool, ...] = (True, True, False, False)) -> Path:
    """The four files with ``train_per_class`` / ``test_per_class`` images of each of the 10 classes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train, test = fake_split(train_per_class, 0, rng), fake_split(test_per_class, 10 * train_per_class, rng)
    for name, array, compress in zip(NAMES, (*train, *test), gzipped):
        write_idx(folder / name, array, compress)
    return folder


def raw_pixels(image: torch.Tensor) -> torch.Tensor:
    """Undo the normalization: the uint8 values of a ``(1, 28, 28)`` sample."""
    return (image * FASHION_MNIST_STD[0] + FASHION_MNIST_MEAN[0]).mul(255).round().to(torch.int64)


def ids_and_labels(dataset) -> tuple[list[int], list[int]]:
    samples = [(raw_pixels(image), label) for image, label in dataset]
    for pixels, label in samples:
        assert pixels[0, 0, 0] == label  # images and labels stay paired
    return [int(p[0, 0, 1]) * 256 + int(p[0, 0, 2]) for p, _ in samples], [label for _, label in samples]


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])  # the CLI gets its arguments from args=


def test_reads_gzipped_and_plain_files_with_seeded_balanced_splits(tmp_path):
    root = write_fashion_mnist(tmp_path)
    data = FashionMNISTDataModule(root=str(root), val_size=20, train_subset=30, seed=1, batch_size=4)
    assert data.num_classes == 10
    data.prepare_data()
    data.setup("fit")
    train_ids, train_labels = ids_and_labels(data.train_set)
    val_ids, val_labels = ids_and_labels(data.val_set)
    test_ids, test_labels = ids_and_labels(data.test_set)
    assert np.bincount(val_labels).tolist() == [2] * 10 and np.bincount(test_labels).tolist() == [3] * 10
    assert sorted(np.bincount(train_labels)) == [3] * 10  # 30 of the 60 not held out, 3 per class
    assert not set(train_ids) & set(val_ids) and set(train_ids) | set(val_ids) <= set(range(80))
    assert sorted(test_ids) == list(range(80, 110))  # the t10k files, not the validation images
    assert data.test_dataloader().dataset is data.test_set and len(data.test_dataloader()) == 8  # 30 images, batch 4
    image, _ = data.train_set[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32

    same = FashionMNISTDataModule(root=str(root), val_size=20, train_subset=30, seed=1)
    same.setup()
    other = FashionMNISTDataModule(root=str(root), val_size=20, train_subset=30, seed=2)
    other.setup()
    assert ids_and_labels(same.train_set)[0] == train_ids and ids_and_labels(other.train_set)[0] != train_ids


def test_augmentation_randomizes_training_images_only(tmp_path):
    data = FashionMNISTDataModule(root=str(write_fashion_mnist(tmp_path)), val_size=10, augment=True)
    data.setup()
    torch.manual_seed(0)
    assert any(not torch.equal(data.train_set[0][0], data.train_set[0][0]) for _ in range(10))
    assert torch.equal(data.val_set[0][0], data.val_set[0][0]) and torch.equal(data.test_set[0][0], data.test_set[0][0])


def test_split_sizes_are_checked(tmp_path):
    root = str(write_fashion_mnist(tmp_path))
    with pytest.raises(ValueError, match="train_subset=71 exceeds the 70 training images left after val_size=10"):
        FashionMNISTDataModule(root=root, val_size=10, train_subset=71).setup()
    with pytest.raises(ValueError, match="val_size=80 leaves none of the 80"):
        FashionMNISTDataModule(root=root, val_size=80).setup()
    with pytest.raises(ValueError, match="val_size must be 0 or more, got -1"):
        FashionMNISTDataModule(val_size=-1)


def test_stratified_split_keeps_class_proportions():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    chosen, rest = stratified_split(labels, 10, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[chosen]).tolist() == [5, 3, 2]
    assert sorted(chosen.tolist() + rest.tolist()) == list(range(100))
    odd, _ = stratified_split(labels, 7, torch.Generator().manual_seed(0))  # 3.5, 2.1, 1.4: largest remainders
    assert torch.bincount(labels[odd]).tolist() == [4, 2, 1]
    with pytest.raises(ValueError, match="cannot choose 101 of 100"):
        stratified_split(labels, 101, torch.Generator())


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_wrong_magic_number_names_the_file(tmp_path, gzipped):
    images = np.zeros((5, 28, 28), np.uint8)
    path = write_idx(tmp_path / "t10k-labels-idx1-ubyte", images, gzipped)  # images where labels belong
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*magic number 0x00000803, expected 0x00000801"):
        read_idx_ubyte(path, 1)


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_truncated_file_names_the_file(tmp_path, gzipped):
    root = write_fashion_mnist(tmp_path, gzipped=(gzipped,) * 4)
    path = next(root.glob("train-images-idx3-ubyte*"))
    path.write_bytes(path.read_bytes()[:-100])
    expected = "truncated gzip" if gzipped else "truncated: 62636 bytes, expected 62736"
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + expected):
        FashionMNISTDataModule(root=str(root)).setup()


def test_labels_that_do_not_match_the_images_are_named(tmp_path):
    root = write_fashion_mnist(tmp_path, gzipped=(False,) * 4)
    write_idx(root / "t10k-labels-idx1-ubyte", np.zeros(29, np.uint8))
    with pytest.raises(ValueError, match="holds 30 images but .*t10k-labels-idx1-ubyte holds 29 labels"):
        FashionMNISTDataModule(root=str(root), val_size=10).setup()


def test_missing_files_list_the_places_searched_and_where_to_get_them(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as error:
        FashionMNISTDataModule(root=str(tmp_path)).prepare_data()
    message = str(error.value)
    assert f"Searched: {tmp_path}; {tmp_path / 'FashionMNIST' / 'raw'}." in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "https://github.com/zalandoresearch/fashion-mnist" in message

    partial = write_fashion_mnist(tmp_path / "partial")
    (partial / "t10k-labels-idx1-ubyte").unlink()
    monkeypatch.setattr(data_module, "FASHION_MNIST_SEARCH_PATH", (str(tmp_path / "absent"), str(partial)))
    searched = f"{tmp_path / 'absent'}; {partial} (lacks t10k-labels-idx1-ubyte)"
    with pytest.raises(FileNotFoundError, match=re.escape(searched)):
        FashionMNISTDataModule().files()


def test_search_path_order_and_torchvision_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_fashion_mnist(tmp_path / "data" / "fashion-mnist")
    found = FashionMNISTDataModule().files()["t10k-images-idx3-ubyte"]
    assert found == Path("data/fashion-mnist/t10k-images-idx3-ubyte")  # the first place, before the system folder
    torchvision_root = tmp_path / "tv"
    write_fashion_mnist(torchvision_root / "FashionMNIST" / "raw")
    files = FashionMNISTDataModule(root=str(torchvision_root)).files()
    assert files["train-images-idx3-ubyte"] == torchvision_root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"


def test_real_dataset_sizes_balance_and_statistics():
    data = FashionMNISTDataModule()
    try:
        files = data.files()
    except FileNotFoundError as error:
        pytest.skip(f"Fashion-MNIST is not installed: {str(error)[:200]}")
    train_images, train_labels = load_fashion_mnist(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"])
    test_images, test_labels = load_fashion_mnist(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"])
    assert train_images.shape == (60_000, 1, 28, 28) and test_images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(train_labels).tolist() == [6_000] * 10
    assert torch.bincount(test_labels).tolist() == [1_000] * 10
    pixels = train_images.float().div_(255)
    assert abs(pixels.mean() - FASHION_MNIST_MEAN[0]) < 1e-3 and abs(pixels.std() - FASHION_MNIST_STD[0]) < 1e-3
    data.setup()
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (55_000, 5_000, 10_000)
    assert torch.bincount(data.val_set.labels).tolist() == [500] * 10


def test_config_fits_then_tests_its_best_checkpoint_on_the_test_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's work_dirs/... paths
    root = write_fashion_mnist(tmp_path / "fashion")
    common = ["--config", str(CONFIG), f"--data.init_args.root={root}", "--data.init_args.val_size=10",
              "--data.init_args.batch_size=8", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false"]
    fit = main(["fit", *common, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"])
    assert fit.model.model.conv1.in_channels == 1 and fit.trainer.global_step == 2
    best = tmp_path / "work_dirs" / "classification" / CONFIG.stem / "checkpoints" / "best.ckpt"
    assert best.is_file()
    test = main(["test", *common, "--ckpt_path", str(best)])
    assert test.trainer.state.finished and 0.0 <= test.trainer.callback_metrics["test_acc1"] <= 1.0
    assert len(test.datamodule.test_dataloader().dataset) == 30  # the t10k files' 30 images, not the 10 held out
    assert torch.equal(test.model.model.conv1.weight, fit.model.model.conv1.weight)  # weights from the checkpoint


def fake_run(norm: str, batch_size: int, seed: int, settings, threads: int) -> dict:
    """A run record as :func:`batch_size_study.run_one` returns it, without training."""
    return {"dataset": settings.dataset, "norm": norm, "batch_size": batch_size, "seed": seed, "lr": 0.1,
            "steps": 64 // batch_size, "test_acc1": 0.5 + 0.01 * seed + 0.001 * batch_size, "test_loss": 1.0,
            "seconds": 2.0, "seconds_per_step": 0.01 * seed, "threads": threads}


def test_study_records_each_run_resumes_and_aggregates(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(batch_size_study, "run_one", lambda *args: calls.append(args[:3]) or fake_run(*args))
    monkeypatch.setattr(batch_size_study, "majority_baseline", lambda settings: 0.1)
    out = tmp_path / "study"
    args = ["--dataset", "fashion-mnist", "--norms", "BN", "GN", "--batch-sizes", "1", "4", "--seeds", "0", "1", "2",
            "--epochs", "1", "--num-train", "64", "--workers", "1", "--out", str(out)]
    batch_size_study.main([*args, "--max-runs", "5"])
    first = json.loads(out.with_suffix(".json").read_text())
    assert len(first["runs"]) == len(calls) == 5 and not list(tmp_path.glob("*.tmp"))
    assert first["settings"]["dataset"] == "fashion-mnist" and first["settings"]["num_train"] == 64
    recorded = {"dataset", "norm", "batch_size", "seed", "test_acc1", "seconds", "seconds_per_step"}
    assert set(first["runs"][0]) >= recorded

    batch_size_study.main(args)  # resumes: only the 8 missing runs (12 cells + SN (no BN) at batch 1 x 3 seeds)
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert len(calls) == 15 and len({batch_size_study.run_key(r) for r in runs}) == 15
    assert {(r["norm"], r["batch_size"]) for r in runs if r["norm"] == "SN_noBN"} == {("SN_noBN", 1)}
    batch_size_study.main(args)  # nothing left
    assert len(calls) == 15

    cell = batch_size_study.aggregate(runs)["GN", 4]
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(50.4 + 1.0) and cell["std"] == pytest.approx(1.0)
    table = out.with_suffix(".md").read_text()
    assert "| normalizer | bs 1 | bs 4 |" in table and "| SN (no BN) | 51.1 ± 1.0 | - |" in table
    assert "| GN | 51.1 ± 1.0 | **51.4 ± 1.0** |" in table
    assert out.with_suffix(".png").stat().st_size > 10_000

    other_epochs = ["--dataset", "fashion-mnist", "--epochs", "2", "--num-train", "64", "--out", str(out)]
    with pytest.raises(SystemExit, match="other settings .differing: epochs"):
        batch_size_study.main(other_epochs)
