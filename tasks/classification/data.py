"""Data modules: the embedded synthetic shapes, CIFAR-10/100 from a local folder, any ImageFolder tree.

``batch_size`` is per device (per process under DDP, where Lightning adds a ``DistributedSampler``).
Training loaders shuffle and drop the last incomplete batch, so no step sees a batch of one (which batch
statistics reject); validation/test loaders keep every sample. The validation split doubles as the test
split (CIFAR's test batch; the ``val`` folder otherwise).
"""
from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes
from torchvision.transforms import v2

from tasks.synthetic_shapes import CLASSES, DEFAULT_ROOT, ShapesSpec, ensure_dataset

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SHAPES_MEAN, SHAPES_STD = (0.35, 0.35, 0.35), (0.3, 0.3, 0.3)


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


class ClassificationDataModule(LightningDataModule):
    """Base of the data modules: builds ``train_set``/``val_set`` in :meth:`setup` and serves the loaders.

    Subclasses define :attr:`num_classes` (readable right after construction, so the CLI can pass it to the
    model) and :meth:`build_datasets`.

    Args:
        batch_size: samples per device and step. Default: 32
        num_workers: loader processes. Default: 0
    """

    def __init__(self, batch_size: int = 32, num_workers: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """``(train, val)`` datasets of ``(image (3, H, W) float, label)`` pairs."""
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.build_datasets()

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=train, drop_last=train,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)


class ImageFolderDataModule(ClassificationDataModule):
    """Images in ``root/<train_dir>/<class>/*`` and ``root/<val_dir>/<class>/*`` (torchvision ``ImageFolder``).

    Training: ``RandomResizedCrop(image_size)`` and horizontal flips; validation: resize to
    ``image_size / 0.875`` and center crop (the ImageNet recipe).

    Args:
        root: dataset folder.
        train_dir, val_dir: split subfolders. Default: ``train``, ``val``
        image_size: side of the network input. Default: 224
        mean, std: per-channel normalization. Default: ImageNet's
    """

    def __init__(self, root: str, train_dir: str = "train", val_dir: str = "val", image_size: int = 224,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
                 batch_size: int = 32, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.root = Path(root)
        self.train_dir, self.val_dir = train_dir, val_dir
        self.image_size = image_size
        self.mean, self.std = mean, std

    def _split_dir(self, split_dir: str) -> Path:
        path = self.root / split_dir
        if not path.is_dir():
            raise FileNotFoundError(f"image folder not found: {path} (expected {path}/<class>/<image files>)")
        return path

    @property
    def num_classes(self) -> int:
        return len(find_classes(str(self._split_dir(self.train_dir)))[0])

    def transforms(self, train: bool) -> Callable:
        if train:
            resize = [v2.RandomResizedCrop(self.image_size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            resize = [v2.Resize(round(self.image_size / 0.875), antialias=True), v2.CenterCrop(self.image_size)]
        return v2.Compose([v2.ToImage(), *resize, *_to_normalized_tensor(self.mean, self.std)[1:]])

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        train = ImageFolder(str(self._split_dir(self.train_dir)), self.transforms(train=True), allow_empty=True)
        val = ImageFolder(str(self._split_dir(self.val_dir)), self.transforms(train=False), allow_empty=True)
        if train.classes != val.classes:
            raise ValueError(f"class folders differ between {self.root / self.train_dir} ({train.classes}) "
                             f"and {self.root / self.val_dir} ({val.classes})")
        return train, val


class SyntheticShapesDataModule(ImageFolderDataModule):
    """The embedded dataset (:mod:`tasks.synthetic_shapes`): which shape is the largest, 3 classes.

    The images are generated on first use (deterministic in ``seed``; the detection/segmentation tasks
    share the default set). Training augmentation: horizontal flips only (crops could cut the largest
    shape out and change the label).

    Args:
        root: dataset folder. Default: ``data/synthetic_shapes`` for the default sizes, else a folder
            named after them, so differently sized sets never overwrite each other
        num_train, num_val: images per split. Default: 400, 100
        image_size: image side in pixels. Default: 64
        seed: generator seed. Default: 0
    """

    def __init__(self, root: Optional[str] = None, num_train: int = 400, num_val: int = 100, image_size: int = 64,
                 seed: int = 0, batch_size: int = 32, num_workers: int = 0) -> None:
        self.spec = ShapesSpec(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed)
        if root is None:
            root = DEFAULT_ROOT if self.spec == ShapesSpec() else DEFAULT_ROOT.with_name(
                f"synthetic_shapes_{num_train}-{num_val}_{image_size}px_seed{seed}")
        super().__init__(str(root), "classification/train", "classification/val", image_size,
                         SHAPES_MEAN, SHAPES_STD, batch_size, num_workers)

    @property
    def num_classes(self) -> int:
        return len(CLASSES)

    def prepare_data(self) -> None:
        ensure_dataset(self.root, self.spec)

    def transforms(self, train: bool) -> Callable:
        flip = [v2.RandomHorizontalFlip()] if train else []
        return v2.Compose([*flip, *_to_normalized_tensor(self.mean, self.std)])

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        ensure_dataset(self.root, self.spec)  # no-op when prepare_data ran; setup() may be called alone
        return super().build_datasets()


class ArrayDataset(Dataset):
    """``(N, 3, H, W)`` uint8 images and ``(N,)`` labels in memory, with a transform per image."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


#: variant -> (folder, training batch files, test batch files, label key, classes)
CIFAR_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def load_cifar_batches(files: Sequence[Path], label_key: str) -> tuple[Tensor, Tensor]:
    """Read CIFAR python-pickle batch files into ``(N, 3, 32, 32)`` uint8 images and ``(N,)`` int64 labels.

    The files are pickles: load only trusted copies of the official archives.
    """
    images, labels = [], []
    for path in files:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


class CIFARDataModule(ClassificationDataModule):
    """CIFAR-10 or CIFAR-100 from the extracted python archives (never downloaded).

    ``root`` is the folder holding ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``) or
    ``cifar-100-python/`` (``train``, ``test``), or that folder itself. Training augmentation: 4-pixel
    padded random crops and horizontal flips (the ResNet CIFAR recipe).

    Args:
        root: dataset folder. Default: ``data/cifar10``
        variant: ``cifar10`` or ``cifar100``. Default: ``cifar10``
        augment: random crops and flips for training. Default: True
    """

    def __init__(self, root: str = "data/cifar10", variant: Literal["cifar10", "cifar100"] = "cifar10",
                 augment: bool = True, batch_size: int = 128, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        if variant not in CIFAR_LAYOUTS:
            raise ValueError(f"variant must be one of {sorted(CIFAR_LAYOUTS)}, got {variant!r}")
        self.root, self.variant, self.augment = Path(root), variant, augment

    @property
    def num_classes(self) -> int:
        return CIFAR_LAYOUTS[self.variant][4]

    def batch_files(self, train: bool) -> list[Path]:
        """The batch files of a split; ``FileNotFoundError`` names the first one missing."""
        folder_name, train_files, test_files, _, _ = CIFAR_LAYOUTS[self.variant]
        folder = self.root if self.root.name == folder_name else self.root / folder_name
        files = [folder / name for name in (train_files if train else test_files)]
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(
                    f"{self.variant} batch file not found: {path}. Extract the python version of the dataset "
                    f"so that {folder}/ holds {train_files + test_files} (nothing is downloaded)")
        return files

    def prepare_data(self) -> None:
        self.batch_files(train=True)
        self.batch_files(train=False)

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        label_key = CIFAR_LAYOUTS[self.variant][3]
        crop_flip = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if self.augment else []
        normalize = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(CIFAR_MEAN), list(CIFAR_STD))]
        train = ArrayDataset(*load_cifar_batches(self.batch_files(train=True), label_key),
                             v2.Compose([*crop_flip, *normalize]))
        val = ArrayDataset(*load_cifar_batches(self.batch_files(train=False), label_key), v2.Compose(normalize))
        return train, val
