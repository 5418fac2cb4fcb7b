"""Train a small CNN with every dynnorm layer on the embedded shapes data and print what the layers learned.

    .venv/bin/python tools/demo.py [--epochs 6] [--batch-size 8] [--norms BN SN EN ...]

For each normalization the same network (3 conv blocks, global pooling, linear classifier), seed and
schedule are trained on the ImageFolder view of ``tasks.synthetic_shapes`` (3 classes, chance = 33%); the
script prints validation accuracy, seconds per epoch and, for SN/SSN/EN/DN, the learned mixing ratios
averaged over the network's layers.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dynnorm  # noqa: E402
from tasks.synthetic_shapes import ensure_dataset  # noqa: E402

def small_cnn(norm: str, num_classes: int) -> nn.Module:
    factory = dynnorm.get_norm_layer(norm)
    layers, channels = [], 3
    for width in (32, 64, 64):
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), factory(width), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def loaders(root: Path, batch_size: int) -> tuple[DataLoader, DataLoader, int]:
    normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.25] * 3)])
    train = datasets.ImageFolder(root / "classification" / "train", normalize)
    val = datasets.ImageFolder(root / "classification" / "val", normalize)
    generator = torch.Generator().manual_seed(0)
    return (DataLoader(train, batch_size, shuffle=True, drop_last=True, generator=generator),
            DataLoader(val, 50), len(train.classes))


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += int((model(images).argmax(1) == labels).sum())
        total += len(labels)
    return correct / total


def summarize_ratios(model: nn.Module) -> str:
    """Mixing ratios averaged over the layers, e.g. ``mean IN .21 LN .30 BN .49 | var ...``."""
    per_kind: dict[str, dict[str, list[float]]] = {}
    for kinds in dynnorm.importance_ratios(model).values():
        for kind, values in kinds.items():
            for key, value in values.items():
                per_kind.setdefault(kind, {}).setdefault(key, []).append(value)
    return " | ".join(
        f"{kind} " + " ".join(f"{key} {sum(v) / len(v):.2f}" for key, v in values.items())
        for kind, values in per_kind.items()
    ) or "-"


def train(norm: str, root: Path, epochs: int, batch_size: int) -> dict:
    torch.manual_seed(0)
    train_loader, val_loader, num_classes = loaders(root, batch_size)
    model = small_cnn(norm, num_classes)
    optimizer = torch.optim.SGD(dynnorm.param_groups(model, weight_decay=5e-4), lr=0.02 * batch_size / 8, momentum=0.9)
    steps = epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=optimizer.param_groups[0]["lr"], total_steps=steps)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for step, (images, labels) in enumerate(train_loader):
            dynnorm.set_sparsestmax_radius(model, (epoch * len(train_loader) + step) / steps)
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    seconds = (time.perf_counter() - start) / epochs
    return {"norm": norm, "accuracy": accuracy(model, val_loader), "seconds_per_epoch": seconds,
            "ratios": summarize_ratios(model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--norms", nargs="+", default=["BN", "GN", *[n for n in dynnorm.list_norms() if not n.startswith("Sync")]])
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    root = ensure_dataset()
    print(f"data: {root} (3 classes, chance 33%); {args.epochs} epochs, batch {args.batch_size}")
    print(f"{'norm':<10} {'val acc':>8} {'s/epoch':>8}  learned ratios (mean over layers)")
    for norm in args.norms:
        result = train(norm, root, args.epochs, args.batch_size)
        print(f"{norm:<10} {result['accuracy']:>8.1%} {result['seconds_per_epoch']:>8.1f}  {result['ratios']}", flush=True)


if __name__ == "__main__":
    main()
