"""Batch-size robustness: the same classifier with each normalizer, trained at several per-device batch sizes.

    python tools/batch_size_study.py [--norms BN GN SN EN DNB AssocNorm] [--batch-sizes 2 4 8 16 32]
                                     [--epochs 8] [--workers 2] [--out tools/results/batch_size_study]

The small-scale counterpart of the AssocNorm paper's Table 3 and the SN paper's batch-size figure: a
CIFAR-style ResNet (:class:`tasks.classification.CifarResNet`) learns the embedded synthetic shapes task with
each normalizer at each batch size, for the same number of epochs, with the learning rate scaled linearly
with the batch size (``base_lr * batch_size / base_batch_size``, cosine-annealed per step to 0). Every run
trains through Lightning with :class:`tasks.classification.ImageClassifier`; the reported figure is the
top-1 accuracy on the validation images after the last epoch (evaluation mode: running statistics for the
batch-statistics terms). GN and AssocNorm use 8 groups (the network's narrowest layers have 16 channels).

Writes ``<out>.json`` (settings, command, every run), ``<out>.md`` (accuracy table) and ``<out>.png`` (accuracy
against batch size). Runs go to ``--workers`` processes of ``--threads`` threads each, and each finished
run is kept in ``--cache`` so an interrupted study resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the repository-level `tasks` package
    sys.path.insert(0, str(ROOT))

#: ``norm`` settings of :class:`ImageClassifier` for the study's names.
NORMS = {
    "BN": "BN",
    "GN": {"class_path": "tasks.classification.GroupNorm2d", "init_args": {"num_groups": 8}},
    "SN": "SN",
    "SSN": "SSN",
    "EN": "EN",
    "DN": "DN",
    "DNB": "DNB",
    "DNC": "DNC",
    "AssocNorm": {"class_path": "dynnorm.AssociateNorm2d", "init_args": {"num_groups": 8}},
}
LABELS = {"DNB": "DN-B", "DNC": "DN-C"}


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on besides its normalizer and batch size."""

    epochs: int = 8
    base_lr: float = 0.1
    base_batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 5e-4
    depth: int = 8
    width: int = 16
    num_train: int = 1000
    num_val: int = 500
    image_size: int = 32
    seed: int = 0
    data_root: str = str(ROOT / "data" / "synthetic_shapes_study")


def run_one(norm: str, batch_size: int, settings: Settings, threads: int) -> dict:
    """Train one model and return its final validation accuracy, loss and wall time."""
    import functools

    import torch
    from lightning.pytorch import Trainer, seed_everything

    from tasks.classification import ImageClassifier, SyntheticShapesDataModule

    torch.set_num_threads(threads)
    seed_everything(settings.seed, verbose=False)
    data = SyntheticShapesDataModule(root=settings.data_root, num_train=settings.num_train, num_val=settings.num_val,
                                     image_size=settings.image_size, seed=settings.seed, batch_size=batch_size)
    steps = settings.epochs * (settings.num_train // batch_size)
    lr = settings.base_lr * batch_size / settings.base_batch_size
    model = ImageClassifier(
        norm=NORMS[norm], num_classes=data.num_classes,
        backbone_options={"depth": settings.depth, "width": settings.width},
        optimizer=functools.partial(torch.optim.SGD, lr=lr, momentum=settings.momentum, nesterov=True),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=steps),
        scheduler_interval="step", weight_decay=settings.weight_decay, norm_weight_decay=0.0,
    )
    callbacks = []
    if norm == "SSN":
        from dynnorm.integrations.lightning import SparsestMaxRadiusSchedule

        callbacks.append(SparsestMaxRadiusSchedule())
    # Validation once, after the last epoch.
    trainer = Trainer(max_epochs=settings.epochs, check_val_every_n_epoch=settings.epochs, num_sanity_val_steps=0,
                      accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    return {"norm": norm, "batch_size": batch_size, "lr": lr, "steps": trainer.global_step,
            "val_acc1": round(float(metrics["val_acc1"]), 4), "val_loss": round(float(metrics["val_loss"]), 4),
            "seconds": round(time.perf_counter() - start, 1), "threads": threads}


def _cache_path(cache: Path, norm: str, batch_size: int) -> Path:
    return cache / f"{norm}_bs{batch_size}.json"


def _cost(norm: str, batch_size: int) -> float:
    """Rough relative run time, to start the longest runs first."""
    return (1.0 if norm in ("BN", "GN") else 2.0) / batch_size ** 0.5


def run_study(norms: list[str], batch_sizes: list[int], settings: Settings, workers: int, threads: int,
              cache: Path) -> list[dict]:
    """All runs (cached ones are read back), in ``norms`` x ``batch_sizes`` order."""
    from tasks.synthetic_shapes import ShapesSpec, ensure_dataset

    ensure_dataset(settings.data_root, ShapesSpec(num_train=settings.num_train, num_val=settings.num_val,
                                                  image_size=settings.image_size, seed=settings.seed))
    cache.mkdir(parents=True, exist_ok=True)
    fingerprint = asdict(settings)
    results: dict[tuple[str, int], dict] = {}
    for norm in norms:
        for batch_size in batch_sizes:
            path = _cache_path(cache, norm, batch_size)
            if path.is_file():
                stored = json.loads(path.read_text())
                if stored.get("settings") == fingerprint:
                    results[norm, batch_size] = stored["result"]
    todo = sorted({(n, b) for n in norms for b in batch_sizes} - set(results), key=lambda k: -_cost(*k))

    def record(norm: str, batch_size: int, result: dict) -> None:
        results[norm, batch_size] = result
        path = _cache_path(cache, norm, batch_size)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"settings": fingerprint, "result": result}, indent=1))
        temporary.replace(path)
        print(f"{norm:>9} bs {batch_size:>2}: val acc {result['val_acc1']:.3f} ({result['seconds']:.0f} s)", flush=True)

    if workers <= 1:
        for norm, batch_size in todo:
            record(norm, batch_size, run_one(norm, batch_size, settings, threads))
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_one, norm, batch_size, settings, threads): (norm, batch_size)
                       for norm, batch_size in todo}
            for future in as_completed(futures):
                record(*futures[future], future.result())
    return [results[n, b] for n in norms for b in batch_sizes]


def majority_baseline(settings: Settings) -> float:
    """Accuracy of always predicting the most frequent validation class."""
    folder = Path(settings.data_root) / "classification" / "val"
    counts = [sum(1 for _ in d.iterdir()) for d in folder.iterdir() if d.is_dir()]
    return max(counts) / sum(counts)


def markdown_table(runs: list[dict], norms: list[str], batch_sizes: list[int]) -> str:
    accuracy = {(r["norm"], r["batch_size"]): r["val_acc1"] for r in runs}
    steps = {r["batch_size"]: r["steps"] for r in runs}
    lines = ["| normalizer | " + " | ".join(f"bs {b}" for b in batch_sizes) + " |",
             "|---|" + "---:|" * len(batch_sizes),
             "| *optimizer steps* | " + " | ".join(f"*{steps[b]}*" for b in batch_sizes) + " |"]
    for norm in norms:
        best = max(accuracy[norm, b] for b in batch_sizes)
        cells = [f"**{100 * accuracy[norm, b]:.1f}**" if accuracy[norm, b] == best else f"{100 * accuracy[norm, b]:.1f}"
                 for b in batch_sizes]
        lines.append(f"| {LABELS.get(norm, norm)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict], norms: list[str], batch_sizes: list[int], baseline: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracy = {(r["norm"], r["batch_size"]): r["val_acc1"] for r in runs}
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for norm in norms:
        axes.plot(batch_sizes, [100 * accuracy[norm, b] for b in batch_sizes], marker="o", label=LABELS.get(norm, norm))
    axes.axhline(100 * baseline, color="grey", linestyle="--", linewidth=1, label="majority class")
    axes.set_xscale("log", base=2)
    axes.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    axes.set_xlabel("batch size per device")
    axes.set_ylabel("validation top-1 accuracy (%)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=130)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--norms", nargs="+", default=["BN", "GN", "SN", "EN", "DNB", "AssocNorm"], choices=sorted(NORMS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[2, 4, 8, 16, 32])
    for field, value in asdict(defaults).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (processes; 1: in this process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--cache", default=str(ROOT / "work_dirs" / "batch_size_study"), help="finished runs")
    parser.add_argument("--out", default=str(ROOT / "tools" / "results" / "batch_size_study"), help="output path stem")
    args = parser.parse_args(argv)
    settings = Settings(**{field: getattr(args, field) for field in asdict(defaults)})
    if min(args.batch_sizes) < 2:
        parser.error("batch sizes must be at least 2 (batch statistics need two values per channel)")

    runs = run_study(args.norms, args.batch_sizes, settings, args.workers, args.threads, Path(args.cache))
    baseline = majority_baseline(settings)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])])
    title = (f"Synthetic shapes ({settings.num_train} train / {settings.num_val} val, {settings.image_size} px), "
             f"ResNet-{settings.depth} (width {settings.width}),\n{settings.epochs} epochs, "
             f"lr {settings.base_lr} x batch / {settings.base_batch_size}, SGD + cosine")
    table = markdown_table(runs, args.norms, args.batch_sizes)
    summary = {"command": command, "settings": asdict(settings) | {"data_root": os.path.relpath(settings.data_root, ROOT)},
               "majority_baseline": baseline, "workers": args.workers, "threads": args.threads,
               "run_seconds_total": round(sum(r["seconds"] for r in runs), 1), "runs": runs}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    out.with_suffix(".md").write_text(
        f"Validation top-1 accuracy (%) after {settings.epochs} epochs; majority class {100 * baseline:.1f}%, "
        f"chance 33.3%.\n{title.replace(chr(10), ' ')}.\n\n{table}\n\n`{command}` ({len(runs)} runs, "
        f"{summary['run_seconds_total'] / 60:.0f} min of run time in {args.workers} processes of {args.threads} thread(s))\n")
    plot(runs, args.norms, args.batch_sizes, baseline, title, out.with_suffix(".png"))
    print(table)
    print(f"wrote {out}.json, .md, .png")


if __name__ == "__main__":
    main()
