"""Data modules: the embedded synthetic shapes, CIFAR-10/100 and Fashion-MNIST from local files, any
ImageFolder tree.

``batch_size`` is per device (per process under DDP, where Lightning adds a ``DistributedSampler``).
Training loaders shuffle and drop the last incomplete batch, so no step sees a batch of one (which batch
statistics reject); validation/test loaders keep every sample. The validation split doubles as the test
split (CIFAR's test batch; the ``val`` folder otherwise) unless the data module has a test split of its own
(Fashion-MNIST: the validation images come from the training set, the test split is the official 10,000).
"""
from __future__ import annotations

import gzip
import math
import pickle
import zlib
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
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)  # of the 60,000 training images


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


class ClassificationDataModule(LightningDataModule):
    """Base of the data modules: builds ``train_set``/``val_set``/``test_set`` in :meth:`setup` and serves
    the loaders.

    Subclasses define :attr:`num_classes` (readable right after construction, so the CLI can pass it to the
    model) and :meth:`build_datasets`; those with a test split of their own also :meth:`build_test_dataset`.

    Args:
        batch_size: samples per device and step. Default: 32
        num_workers: loader processes. Default: 0
        pin_memory: the loaders return batches in page-locked memory (faster copies to a GPU). Default: False
    """

    def __init__(self, batch_size: int = 32, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """``(train, val)`` datasets of ``(image (C, H, W) float, label)`` pairs."""
        raise NotImplementedError

    def build_test_dataset(self) -> Dataset:
        """The test split; by default the validation split (built first by :meth:`build_datasets`)."""
        return self.val_set

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.build_datasets()
            self.test_set = self.build_test_dataset()

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=train, drop_last=train,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)


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
                 batch_size: int = 32, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__(batch_size, num_workers, pin_memory)
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
                 seed: int = 0, batch_size: int = 32, num_workers: int = 0, pin_memory: bool = False) -> None:
        self.spec = ShapesSpec(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed)
        if root is None:
            root = DEFAULT_ROOT if self.spec == ShapesSpec() else DEFAULT_ROOT.with_name(
                f"synthetic_shapes_{num_train}-{num_val}_{image_size}px_seed{seed}")
        super().__init__(str(root), "classification/train", "classification/val", image_size,
                         SHAPES_MEAN, SHAPES_STD, batch_size, num_workers, pin_memory)

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
    """``(N, C, H, W)`` uint8 images and ``(N,)`` labels in memory, with a transform per image."""

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
                 augment: bool = True, batch_size: int = 128, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__(batch_size, num_workers, pin_memory)
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


def stratified_split(labels: Tensor, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Indices ``(chosen, rest)`` of a random sample of ``size`` of the ``(N,)`` integer ``labels`` whose classes
    keep their proportions, and of the other samples; both ``(size,)`` / ``(N - size,)``, increasing.

    Class ``c`` of ``n_c`` samples gets ``size * n_c / N`` of them, rounded by largest remainder (ties to the
    smaller label); which ones is drawn with ``generator``.

    >>> chosen, rest = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1]), 3, torch.Generator().manual_seed(0))
    >>> torch.tensor([0, 0, 0, 0, 1, 1])[chosen].tolist(), len(rest)
    ([0, 0, 1], 3)
    """
    count = labels.numel()
    if not 0 <= size <= count:
        raise ValueError(f"cannot choose {size!r} of {count} samples")
    classes, class_counts = labels.unique(return_counts=True)
    exact = class_counts.double() * size / count
    quotas = exact.floor().long()
    quotas[torch.argsort(exact - quotas, descending=True, stable=True)[: size - int(quotas.sum())]] += 1
    order = torch.randperm(count, generator=generator)
    shuffled = labels[order]
    chosen = torch.cat([order[:0], *(order[shuffled == c][:q] for c, q in zip(classes.tolist(), quotas.tolist()))])
    rest = torch.ones(count, dtype=torch.bool)
    rest[chosen] = False
    return chosen.sort().values, rest.nonzero().flatten()


GZIP_MAGIC = b"\x1f\x8b"
IDX_UNSIGNED_BYTE = 0x08


def read_idx_ubyte(path: Path, ndim: int) -> Tensor:
    """The ``ndim``-dimensional uint8 tensor stored in an IDX file (the MNIST format), gzipped or not.

    An IDX file starts with the magic number ``0x0000 08 <ndim>`` (``0x08``: unsigned bytes), then ``ndim``
    big-endian 32-bit sizes, then the data. ``ValueError`` names the file when its magic number is not
    that, when it is shorter or longer than its sizes say, or when it cannot be decompressed.
    """
    data = path.read_bytes()
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as error:
            raise ValueError(f"{path}: corrupt or truncated gzip file ({error})") from None
    magic, found = (IDX_UNSIGNED_BYTE << 8) | ndim, int.from_bytes(data[:4], "big")
    if len(data) < 4 or found != magic:
        raise ValueError(f"{path}: not an IDX file of {ndim}-d unsigned bytes (magic number 0x{found:08x}, "
                         f"expected 0x{magic:08x})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, expected {header})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise ValueError(f"{path}: {problem}: {len(data)} bytes, expected {expected} for an IDX array of shape {shape}")
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=header).reshape(shape).copy())


#: Label ``i`` of Fashion-MNIST is ``FASHION_MNIST_CLASSES[i]``.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
#: split -> (images file, labels file), each plain or gzipped (``.gz``).
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_MNIST_FILE_NAMES = tuple(name for pair in FASHION_MNIST_FILES.values() for name in pair)
#: Where :class:`FashionMNISTDataModule` looks for the files without ``root``, in this order (relative
#: paths from the working directory).
FASHION_MNIST_SEARCH_PATH = ("data/fashion-mnist", "/usr/share/datasets/fashion-mnist", "data/FashionMNIST/raw")
FASHION_MNIST_SOURCES = ("the Debian/Ubuntu package: apt-get install dataset-fashion-mnist "
                         "(installs /usr/share/datasets/fashion-mnist), or the four files from the dataset's "
                         "publisher, https://github.com/zalandoresearch/fashion-mnist, in data/fashion-mnist "
                         "or the folder given as root")


def fashion_mnist_files(folder: Path) -> dict[str, Path]:
    """The Fashion-MNIST files present in ``folder``, by name (the plain file if both it and ``.gz`` exist)."""
    found = {}
    for name in FASHION_MNIST_FILE_NAMES:
        for path in (folder / name, folder / f"{name}.gz"):
            if path.is_file():
                found[name] = path
                break
    return found


def fashion_mnist_search_path(root: Optional[str | Path] = None) -> list[Path]:
    """The folders that may hold the four files, in the order they are tried: ``root`` and its torchvision
    layout ``root/FashionMNIST/raw``, or without ``root`` :data:`FASHION_MNIST_SEARCH_PATH`."""
    if root is None:
        return [Path(folder) for folder in FASHION_MNIST_SEARCH_PATH]
    return [Path(root), Path(root) / "FashionMNIST" / "raw"]


def find_fashion_mnist(folders: Sequence[Path]) -> dict[str, Path]:
    """The four files from the first of ``folders`` that holds all of them; ``FileNotFoundError`` lists the
    folders searched and where to get the files otherwise."""
    searched = []
    for folder in folders:
        found = fashion_mnist_files(folder)
        if len(found) == len(FASHION_MNIST_FILE_NAMES):
            return found
        missing = [name for name in FASHION_MNIST_FILE_NAMES if name not in found]
        searched.append(f"{folder.absolute()}" + (f" (lacks {', '.join(missing)})" if found else ""))
    raise FileNotFoundError(
        f"Fashion-MNIST not found: no folder holds all four of {', '.join(FASHION_MNIST_FILE_NAMES)} "
        "(each plain or .gz). Searched: " + "; ".join(searched)
        + f". Get the files from {FASHION_MNIST_SOURCES} (nothing is downloaded).")


def load_fashion_mnist(images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
    """One split: ``(N, 1, 28, 28)`` uint8 images and ``(N,)`` int64 labels in ``0..9``.

    ``ValueError`` names the file that is corrupt, truncated or does not fit the other.
    """
    images, labels = read_idx_ubyte(images_path, 3), read_idx_ubyte(labels_path, 1)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images of {images.shape[1]}x{images.shape[2]} pixels, expected 28x28")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                         f"{labels.shape[0]} labels")
    if labels.numel() and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{labels_path}: label {int(labels.max())} outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
    return images.unsqueeze(1), labels.long()


class FashionMNISTDataModule(ClassificationDataModule):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): 28x28 grayscale images of 10 kinds of clothing, 60,000
    for training and 10,000 for testing, read from the original IDX files (never downloaded).

    ``root`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte``, each plain or gzipped (``.gz``), or holds them in torchvision's layout
    ``FashionMNIST/raw``. Without ``root`` they are looked for in :data:`FASHION_MNIST_SEARCH_PATH`:
    ``data/fashion-mnist``, ``/usr/share/datasets/fashion-mnist`` (where the Debian/Ubuntu package
    ``dataset-fashion-mnist`` installs them) and ``data/FashionMNIST/raw``.

    Splits: ``val_size`` training images, drawn with ``seed`` in the class proportions, are held out for
    validation; ``train_subset`` keeps a sample of that many of the rest for training, drawn the same way;
    the test split is the official 10,000 test images (``trainer.test``, ``python -m tasks.classification
    test``). Images are normalized with the training set's mean and standard deviation; ``augment`` adds
    2-pixel padded random 28x28 crops and horizontal flips to training.

    The images have one channel: the model needs ``backbone_options: {in_channels: 1}``.

    Args:
        root: folder of the four files. Default: the search path above
        val_size: training images held out for validation (0: none). Default: 5000
        train_subset: training images kept, ``None`` for all that are not held out. Default: None
        augment: random crops and flips for training. Default: False
        seed: of the validation split and the training subset (not of training). Default: 0
        batch_size, num_workers, pin_memory: as :class:`ClassificationDataModule`.

    Shape:
        - Samples: ``(image (1, 28, 28) float32, label int)``.
    """

    def __init__(self, root: Optional[str] = None, val_size: int = 5000, train_subset: Optional[int] = None,
                 augment: bool = False, seed: int = 0, batch_size: int = 128, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        super().__init__(batch_size, num_workers, pin_memory)
        if val_size < 0:
            raise ValueError(f"val_size must be 0 or more, got {val_size!r}")
        if train_subset is not None and train_subset < 1:
            raise ValueError(f"train_subset must be positive or None, got {train_subset!r}")
        self.root = None if root is None else Path(root)
        self.val_size, self.train_subset, self.augment, self.seed = val_size, train_subset, augment, seed

    @property
    def num_classes(self) -> int:
        return len(FASHION_MNIST_CLASSES)

    def search_path(self) -> list[Path]:
        """The folders that may hold the files, in the order they are tried."""
        return fashion_mnist_search_path(self.root)

    def files(self) -> dict[str, Path]:
        """The four files (:func:`find_fashion_mnist` over :meth:`search_path`)."""
        return find_fashion_mnist(self.search_path())

    def prepare_data(self) -> None:
        self.files()

    def transforms(self, train: bool) -> Callable:
        crop_flip = [v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip()] if train and self.augment else []
        return v2.Compose([*crop_flip, v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(list(FASHION_MNIST_MEAN), list(FASHION_MNIST_STD))])

    def _load(self, split: str) -> tuple[Tensor, Tensor]:
        files = self.files()
        return load_fashion_mnist(*(files[name] for name in FASHION_MNIST_FILES[split]))

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        images, labels = self._load("train")
        if self.val_size >= len(labels):
            raise ValueError(f"val_size={self.val_size} leaves none of the {len(labels)} training images to train on")
        generator = torch.Generator().manual_seed(self.seed)
        val_index, train_index = stratified_split(labels, self.val_size, generator)
        if self.train_subset is not None:
            if self.train_subset > len(train_index):
                raise ValueError(f"train_subset={self.train_subset} exceeds the {len(train_index)} training images "
                                 f"left after val_size={self.val_size}")
            train_index = train_index[stratified_split(labels[train_index], self.train_subset, generator)[0]]
        return (ArrayDataset(images[train_index], labels[train_index], self.transforms(train=True)),
                ArrayDataset(images[val_index], labels[val_index], self.transforms(train=False)))

    def build_test_dataset(self) -> Dataset:
        return ArrayDataset(*self._load("test"), self.transforms(train=False))
