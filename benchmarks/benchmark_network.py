"""Speed of whole networks with each normalizer: a training step and an evaluation forward, against BatchNorm.

Networks, on 3x32x32 inputs with 10 classes, every normalization layer from one factory ``norm(num_channels)``:
torchvision's ResNet-18 (its ImageNet stem, so 32 px become 8 px before the first stage) and the CIFAR
ResNet-20 at width 16 (:class:`tasks.classification.backbones.CifarResNet`). Normalizers: ``nn.BatchNorm2d``,
GroupNorm and every dynnorm layer, all built by name with ``dynnorm.create_norm`` (GN: ``gcd(32, C)`` groups;
AssocNorm: the largest divisor of ``C`` up to 32; ResNet-20's 16-channel layers get 16 groups from both). Modes: "train step" (training mode;
``zero_grad(set_to_none=True)``, forward, cross-entropy, backward, SGD step with momentum) and "eval fwd"
(evaluation mode, forward under ``torch.no_grad()``).

For each network one model per normalizer is built from the same seed. For each batch size and mode every
model is warmed up, then timed once per round, the models in a fresh random order each round, so that load
from other jobs on a shared machine hits them alike. Reported per (network, batch size, mode, normalizer):
the median milliseconds per step and the ratio to BatchNorm, the median over rounds of the ratio within a
round (with its quartiles in the JSON).

    python -m benchmarks.benchmark_network        # both networks, batch 2, 8, 32, every normalizer (~15 min)
    python -m benchmarks.benchmark_network --networks resnet18 --batch-sizes 2 32 --norms BN SN EN --rounds 10

Writes ``benchmarks/results/benchmark_network.json`` and ``.md`` (``--out`` changes the stem).
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dynnorm
from benchmarks.benchmark import (
    keep_freed_memory_mapped,
    measurement_meta,
    per_round_ratios,
    quartiles,
    time_interleaved,
    write,
)
from benchmarks.results_io import RESULTS_DIR
from tasks.classification.backbones import CifarResNet, torchvision_resnet18

NormFactory = Callable[[int], nn.Module]

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
MOMENTUM = 0.9
MODES = ("train step", "eval fwd")
NETWORKS: dict[str, tuple[str, Callable[[NormFactory], nn.Module]]] = {
    "resnet18": ("ResNet-18 (torchvision)", lambda norm: torchvision_resnet18(NUM_CLASSES, norm)),
    "resnet20": ("CIFAR ResNet-20, width 16", lambda norm: CifarResNet(NUM_CLASSES, norm, depth=20, width=16)),
}


def norm_factories() -> dict[str, NormFactory]:
    """Label (:func:`dynnorm.display_name`) -> ``factory(num_channels)`` of every benchmarked normalizer, built
    by name through the registry; ``BN`` first (the ratios' base)."""
    return {dynnorm.display_name(name): functools.partial(dynnorm.create_norm, name)
            for name in dynnorm.list_norms(sync=False, torch_layers=True)}


def build(network: str, norm: NormFactory, device: torch.device, lr: float) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The network with every norm layer from ``norm`` (seed 0), and its SGD optimizer."""
    torch.manual_seed(0)
    model = NETWORKS[network][1](norm).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, target: Tensor) -> Callable[[], None]:
    """One SGD step on ``(x, target)``: clear the gradients, forward, cross-entropy, backward, update."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        optimizer.step()

    return step


def eval_forward(model: nn.Module, x: Tensor) -> Callable[[], None]:
    """One forward of ``x`` without autograd (the model is put in evaluation mode by the caller)."""

    def step() -> None:
        with torch.no_grad():
            model(x)

    return step


def loss_of(model: nn.Module, x: Tensor, target: Tensor) -> float:
    """Cross-entropy of ``model`` on ``(x, target)`` in evaluation mode: finite unless the timed steps diverged."""
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(x), target).item()


def benchmark_batch(
    network: str, models: dict[str, tuple[nn.Module, torch.optim.Optimizer]], batch_size: int,
    device: torch.device, args: argparse.Namespace,
) -> list[dict]:
    """Records of every normalizer and mode for one network at one batch size."""
    generator = torch.Generator().manual_seed(batch_size)
    x = torch.randn((batch_size, *IMAGE_SHAPE), generator=generator).to(device)
    target = torch.randint(NUM_CLASSES, (batch_size,), generator=generator).to(device)
    records = []
    for mode in args.modes:
        steps = {}
        for name, (model, optimizer) in models.items():
            model.train(mode == "train step")
            steps[name] = train_step(model, optimizer, x, target) if mode == "train step" else eval_forward(model, x)
        times = time_interleaved(steps, device, args.rounds, 1, args.warmup)
        for name, samples in times.items():
            q1, median, q3 = quartiles(samples)
            r1, ratio, r3 = quartiles(per_round_ratios(samples, times["BN"]))
            record = {
                "network": network, "batch_size": batch_size, "mode": mode, "norm": name,
                "median_ms": median * 1e3, "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3,
                "ratio_bn": ratio, "ratio_bn_q1": r1, "ratio_bn_q3": r3,
            }
            if mode == "train step":
                record["loss_after"] = loss_of(models[name][0], x, target)
            records.append(record)
        print(
            f"{network} batch {batch_size} {mode}: "
            + ", ".join(f"{r['norm']}={r['ratio_bn']:.2f}x" for r in records if r["mode"] == mode),
            flush=True,
        )
    return records


def run(args: argparse.Namespace, save: Callable[[dict], None] | None = None) -> dict:
    """Benchmark everything ``args`` asks for; ``save(result)`` is called after every batch size (partial results)."""
    device = torch.device(args.device)
    args.warm_memory = not args.default_malloc and keep_freed_memory_mapped()
    if args.threads:
        torch.set_num_threads(args.threads)
    factories = norm_factories()
    names = ["BN", *[n for n in args.norms if n != "BN"]]
    records: list[dict] = []
    started = time.time()
    for network in args.networks:
        models = {name: build(network, factories[name], device, args.lr) for name in names}
        for batch_size in args.batch_sizes:
            records += benchmark_batch(network, models, batch_size, device, args)
            if save is not None:
                save(result(args, device, records, started))
    return result(args, device, records, started)


def result(args: argparse.Namespace, device: torch.device, records: list[dict], started: float) -> dict:
    """The JSON document: how it was measured (command, versions, machine, load) and the records."""
    return {
        "meta": {
            **measurement_meta(__file__, args, device),
            "input": list(IMAGE_SHAPE), "classes": NUM_CLASSES, "lr": args.lr, "momentum": MOMENTUM,
            "rounds": args.rounds, "warmup": args.warmup, "warm_memory": args.warm_memory,
            "wall_s": round(time.time() - started, 1),
        },
        "records": records,
    }


def network_table(records: list[dict]) -> list[str]:
    """Normalizers x (mode, batch size) for one network: ratio to BatchNorm and milliseconds per step."""
    columns = sorted({(r["mode"], r["batch_size"]) for r in records}, key=lambda c: (MODES.index(c[0]), c[1]))
    lines = [
        "| norm | " + " | ".join(f"{mode}, batch {batch}" for mode, batch in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for norm in dict.fromkeys(r["norm"] for r in records):
        cells = []
        for column in columns:
            match = [r for r in records if r["norm"] == norm and (r["mode"], r["batch_size"]) == column]
            cells.append(f"{match[0]['ratio_bn']:.2f}× ({match[0]['median_ms']:.1f} ms)" if match else "")
        lines.append(f"| {norm} | " + " | ".join(cells) + " |")
    return lines


def markdown(result_: dict) -> str:
    """How it was measured, then one table per network."""
    meta, records = result_["meta"], result_["records"]
    load = ", ".join(f"{v:.1f}" for v in meta["load_average"] or [])
    memory = "; freed memory kept mapped (glibc thresholds at 1 GiB)" if meta["warm_memory"] else ""
    lines = [
        f"Command: `{meta['command']}`",
        "",
        f"torch {meta['torch']}, {meta['device_name'] or meta['machine']}, {meta['threads']} thread(s), "
        f"median of {meta['rounds']} interleaved rounds after {meta['warmup']} warm-up steps, load average at the "
        f"end {load}{memory}; {meta['wall_s']:.0f} s in all. Input {'×'.join(map(str, meta['input']))}, "
        f"{meta['classes']} classes. `train step`: `zero_grad(set_to_none=True)`, forward, cross-entropy, backward, "
        f"SGD step (lr {meta['lr']}, momentum {meta['momentum']}); `eval fwd`: evaluation mode, forward under "
        "`torch.no_grad()`. Cells: time / time of `nn.BatchNorm2d` in the same network, the median over rounds of "
        "the ratio within a round (lower is better), and the median milliseconds per step.",
        "",
    ]
    for network in dict.fromkeys(r["network"] for r in records):
        lines += [f"### {NETWORKS[network][0]}", ""]
        lines += network_table([r for r in records if r["network"] == network])
        lines.append("")
    diverged = [r for r in records if not math.isfinite(r.get("loss_after", 0.0))]
    if diverged:
        lines.append("Non-finite loss after the timed steps (their times may not be representative): " + ", ".join(
            f"{r['network']} batch {r['batch_size']} {r['norm']}" for r in diverged) + ".")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[2, 8, 32])
    parser.add_argument("--norms", nargs="+", default=list(norm_factories()), choices=list(norm_factories()),
                        help="BN is always included (the ratios' base)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--rounds", type=int, default=150, help="interleaved rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of every model before the rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate of the timed steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--default-malloc", action="store_true",
        help="leave glibc's allocation thresholds alone (default: keep freed memory mapped, as benchmarks.benchmark)",
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / "benchmark_network"), help="output path stem")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the command line in the results
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stem = Path(args.out)
    final = run(args, save=lambda partial: write(partial, stem, markdown))
    write(final, stem, markdown)
    print(markdown(final))


if __name__ == "__main__":
    main()
