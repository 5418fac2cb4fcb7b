"""Test accuracy with running averages vs recalibrated statistics, for networks trained at 2 images per batch.

    python -m benchmarks.recalibration_study [--norms BN SN] [--momenta 0.1 0.003] [--seeds 0 1] [--steps 300 2000]
                                             [--recalibration-batches 200] [--out benchmarks/results/recalibration]

A CIFAR-style ResNet-8 (width 16, one input channel) learns Fashion-MNIST (read from local files, see
:class:`tasks.classification.data.FashionMNISTDataModule`) at batch 2 with each normalizer and running-statistics
momentum: SGD (Nesterov momentum 0.9, learning rate 0.1 x 2 / 32 cosine-annealed to 0 per step, weight decay
5e-4 except on normalization parameters) for each number of ``--steps``. The 10,000 test images are then classified
twice in evaluation mode: with the running averages accumulated during training, and after
:func:`dynnorm.recalibrate` re-estimated them over ``--recalibration-batches`` training batches of 2 (the first
SN release's evaluation protocol, 200 batches). Momentum 0.1 is torch's default; 0.003 is the SN/SSN authors'
decay of 0.997, with which the running statistics of a short run still hold much of their initial value
(0.997^300 = 0.41). The momentum only changes the running statistics, not training: with the same seed, the
recalibrated accuracy does not depend on it. ``--norms`` takes any name :func:`dynnorm.create_norm` knows.

Writes ``<out>.json`` (settings, command, every run) and ``<out>.md`` (the table). Runs one after the other, on
``--threads`` threads.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import dynnorm
from benchmarks.results_io import RESULTS_DIR, command_line, write_atomically
from dynnorm.recalibrate import repeat_batches

BATCH_SIZE = 2


def images_forward(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return model(batch[0])


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> float:
    """Top-1 accuracy of ``model`` in evaluation mode over ``loader``."""
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += int((model(images).argmax(1) == labels).sum())
        total += labels.numel()
    return correct / total


def run_one(norm: str, momentum: float, seed: int, steps: int, recalibration_batches: int, data) -> dict:
    """Train one network at batch 2 and return its test accuracy with running and with recalibrated statistics."""
    from tasks.classification import CifarResNet

    torch.manual_seed(seed)
    model = CifarResNet(data.num_classes, functools.partial(dynnorm.create_norm, norm, momentum=momentum), depth=8,
                        width=16, in_channels=1)
    lr = 0.1 * BATCH_SIZE / 32
    optimizer = torch.optim.SGD(dynnorm.param_groups(model, 5e-4, 0.0), lr=lr, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    loader = torch.utils.data.DataLoader(data.train_set, batch_size=BATCH_SIZE, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    criterion = nn.CrossEntropyLoss()
    start = time.perf_counter()
    model.train()
    for _, (images, labels) in zip(range(steps), repeat_batches(loader)):
        loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    train_seconds = time.perf_counter() - start
    test_loader = torch.utils.data.DataLoader(data.test_set, batch_size=500)
    running = accuracy(model, test_loader)
    calibration = torch.utils.data.DataLoader(data.train_set, batch_size=BATCH_SIZE, shuffle=True, drop_last=True,
                                              generator=torch.Generator().manual_seed(10_000 + seed))
    start = time.perf_counter()
    used = dynnorm.recalibrate(model, calibration, recalibration_batches, forward=images_forward)
    recalibration_seconds = time.perf_counter() - start
    return {"norm": norm, "momentum": momentum, "seed": seed, "steps": steps, "recalibration_batches": used,
            "test_acc1_running": round(running, 4), "test_acc1_recalibrated": round(accuracy(model, test_loader), 4),
            "train_seconds": round(train_seconds, 1), "recalibration_seconds": round(recalibration_seconds, 2)}


def _mean_std(values: list[float]) -> str:
    text = f"{100 * statistics.fmean(values):.1f}"
    return text + (f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else "")


def markdown_table(runs: list[dict]) -> str:
    """Test top-1 (%) mean ± std over seeds per (norm, momentum, steps), and the mean gain of recalibration."""
    cells: dict[tuple[str, float, int], list[dict]] = {}
    for run in runs:
        cells.setdefault((run["norm"], run["momentum"], run["steps"]), []).append(run)
    lines = ["| norm | momentum | steps | seeds | running averages | recalibrated | gain (points) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for (norm, momentum, steps), members in cells.items():
        running = [r["test_acc1_running"] for r in members]
        recalibrated = [r["test_acc1_recalibrated"] for r in members]
        gain = statistics.fmean(b - a for a, b in zip(running, recalibrated))
        lines.append(f"| {norm} | {momentum:g} | {steps} | {len(members)} | {_mean_std(running)} | "
                     f"{_mean_std(recalibrated)} | {100 * gain:+.1f} |")
    return "\n".join(lines) + "\n"


def _registry_name(name: str) -> str:
    """A ``--norms`` value: a name the registry knows (an unknown one is refused with the closest names)."""
    try:
        dynnorm.get_norm_layer(name)
    except dynnorm.UnknownNormError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return name


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--norms", nargs="+", type=_registry_name, default=["BN", "SN"],
                        help="registry names (dynnorm.create_norm)")
    parser.add_argument("--momenta", nargs="+", type=float, default=[0.1, 0.003])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", nargs="+", type=int, default=[300, 2000])
    parser.add_argument("--recalibration-batches", type=int, default=200)
    parser.add_argument("--data-root", default=None, help="folder of the Fashion-MNIST files (default: search path)")
    parser.add_argument("--train-subset", type=int, default=None, help="training images used (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "recalibration")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tasks.classification.data import FashionMNISTDataModule

    data = FashionMNISTDataModule(root=args.data_root, train_subset=args.train_subset)
    data.setup("fit")
    runs = []
    for norm in args.norms:
        for momentum in args.momenta:
            for steps in args.steps:
                for seed in args.seeds:
                    run = run_one(norm, momentum, seed, steps, args.recalibration_batches, data)
                    runs.append(run)
                    print(f"{norm} momentum {momentum:g}, {steps} steps, seed {seed}: test acc "
                          f"{run['test_acc1_running']:.4f} (running) -> {run['test_acc1_recalibrated']:.4f} "
                          f"(recalibrated), {run['train_seconds']:.0f} s", flush=True)
    summary = {"command": command_line(__file__, sys.argv[1:] if argv is None else argv),
               "settings": {"steps": args.steps, "batch_size": BATCH_SIZE,
                            "recalibration_batches": args.recalibration_batches,
                            "network": "CifarResNet depth 8 width 16, 1 input channel", "data": "Fashion-MNIST",
                            "train_images": len(data.train_set), "test_images": len(data.test_set),
                            "threads": args.threads, "torch": torch.__version__},
               "runs": runs}
    write_atomically(args.out.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    write_atomically(args.out.with_suffix(".md"), markdown_table(runs))
    print(markdown_table(runs))
    return summary


if __name__ == "__main__":
    main()
