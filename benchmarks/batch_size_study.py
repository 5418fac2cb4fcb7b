"""Batch-size robustness: the same classifier with each normalizer, trained at several per-device batch sizes.

    python -m benchmarks.batch_size_study [--dataset shapes|fashion-mnist] [--norms BN GN SN EN DN DNB AssocNorm]
                                          [--batch-sizes 1 2 4 8 16 32] [--seeds 0 1 2] [--epochs N] [--num-train N]
                                          [--workers 2] [--max-runs N] [--rerun NORM ...]
                                          [--out benchmarks/results/batch_size_study_<dataset>]

The small-scale counterpart of the AssocNorm paper's Table 3 and the SN paper's batch-size figure: a
CIFAR-style ResNet (:class:`tasks.classification.CifarResNet`) learns a dataset with each normalizer at each
batch size and seed, for the same number of epochs, with the learning rate scaled linearly with the batch
size (``base_lr * batch_size / base_batch_size``, cosine-annealed per step to 0). Every run trains through
Lightning with :class:`tasks.classification.ImageClassifier` without validation, then is tested once
(evaluation mode: running statistics for the batch-statistics terms, so the test batch size, 500, does not
change the result). Every normalizer is built by its registry name (:func:`dynnorm.create_norm`); GN and
AssocNorm use 8 groups (the network's narrowest layers have 16 channels). With
batch size 1 in the study, every ``--batch1-norms`` normalizer (default: SN with ``using_bn=False``, the SN
paper's setting for one image per device, row ``SN (no BN)``; ``DN_IN``, DN started next to InstanceNorm, is
DN's counterpart, row ``DN (IN start)``) also runs at batch size 1, as a row of its own.
``--norms`` also takes SSN and DNC.

Datasets (``--dataset``):

- ``shapes`` (default): the embedded synthetic shapes, ``--num-train`` 1000 generated 32-px images, tested
  on ``--num-val`` 500 generated images; 8 epochs, batch sizes 2-32, one seed.
- ``fashion-mnist``: a class-balanced subset of ``--num-train`` of the 60,000 training images (the same
  subset for every run, drawn with ``--data-seed``; no augmentation), tested on the full 10,000 official
  test images; batch sizes 1-32, seeds 0, 1, 2. The files are found as by
  :class:`tasks.classification.data.FashionMNISTDataModule` (``--data-root`` to point elsewhere).

Sizing of the Fashion-MNIST defaults (before DN joined them), for about 90 minutes on 2 CPU cores with ``--workers 2`` (1 thread each).
Measured seconds per training step of ResNet-8 (width 16), the same for all six normalizers within the noise:
5.5-6.6 ms at batch 1, 7.2-9.6 ms at batch 2 and 35-41 ms at batch 32 on an otherwise quiet machine (9-22,
13-34 and 21-50 ms at batches 4, 8 and 16 with the machine busier), plus 5-7 s per run for the data, the
worker and the test on the 10,000 images. One training image-epoch summed over the six batch sizes
(``sum_b t(b) / b``) costs about 22 ms per normalizer (upper estimate), so the 111 runs (6 normalizers x 6
batch sizes x 3 seeds, and SN (no BN) at batch 1 x 3 seeds) cost 3 x (6 x 22 + 6) ms = 0.41 worker-seconds
per image-epoch, plus 111 x 7 s = 13 worker-minutes. 8,000 images (800 per class) x 2 epochs: 0.41 x 16,000 s
+ 13 min = 123 worker-minutes, 62 minutes of wall time on 2 workers (48 at the quiet machine's rates), which
leaves about 45% for a busier machine. Batch 1 then runs 16,000 optimizer steps, batch 32 runs 500.

Results: ``<out>.json`` holds the settings and every finished run (dataset, norm, batch size, seed, test
accuracy and loss, wall time, seconds per training step, and for AssocNorm and DN the layer diagnostics of
:mod:`dynnorm.diagnostics` measured after training: each AssocNorm layer's dead and saturated auto-encoder
units on the first 500 test images, each DN layer's batch gates and pooled channels); each run is added as
it finishes (written to a temporary file, then renamed over the JSON), and a rerun skips the runs already
recorded, so an interrupted study resumes where it stopped (a JSON of other settings is an error: pick
another ``--out``). ``--rerun NORM ...`` discards the recorded runs of those normalizers first, to measure a
changed layer again while keeping the other cells. ``<out>.md`` tabulates mean +- std over the seeds per cell
and the layer diagnostics per batch size; ``<out>.png`` plots the accuracies with error bars and
``<out>_diagnostics.png`` the diagnostics per layer.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import dynnorm
from benchmarks import results_io
from benchmarks.results_io import REPO_ROOT, RESULTS_DIR, command_line, write_atomically

#: Settings of the study that are not a registry name alone: study name -> (row label, ``norm`` setting of
#: :class:`ImageClassifier`).
VARIANTS: dict[str, tuple[str, dict]] = {"SN_noBN": ("SN (no BN)", {"type": "SN", "using_bn": False}),
                                         "DN_IN": ("DN (IN start)", {"type": "DN", "init": "in"})}
GROUPED = ("GN", "AssocNorm")  # 8 groups
#: The study's names in table order: every registry name of a layer family, each followed by its variants.
NORMS = [study_name for name in dynnorm.list_norms(sync=False, torch_layers=True)
         for study_name in (name, *(v for v, (_, setting) in VARIANTS.items() if setting["type"] == name))]
FASHION_MNIST_TEST_IMAGES = 10_000
DIAGNOSTIC_IMAGES = 500  # test images the layer diagnostics are measured on


def norm_setting(norm: str) -> str | dict:
    """The ``norm`` setting of :class:`ImageClassifier` for a name of the study."""
    if norm in VARIANTS:
        return VARIANTS[norm][1]
    return {"type": norm, "num_groups": 8} if norm in GROUPED else norm


def label(norm: str) -> str:
    """The row label of a name of the study (:func:`dynnorm.display_name` for registry names)."""
    return VARIANTS[norm][0] if norm in VARIANTS else dynnorm.display_name(norm)


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on besides its normalizer, batch size and seed."""

    dataset: str = "shapes"
    epochs: int = 8
    base_lr: float = 0.1
    base_batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 5e-4
    depth: int = 8
    width: int = 16
    num_train: int = 1000
    num_val: int = 500  # shapes: generated test images; fashion-mnist: the 10,000 official test images
    image_size: int = 32  # shapes only (Fashion-MNIST is 28 px)
    data_seed: int = 0
    data_root: str = "data/synthetic_shapes_study"  # relative to the repository root; "" = search path


@dataclass(frozen=True)
class Preset:
    """A dataset's default settings, batch sizes and seeds."""

    settings: Settings
    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...]


PRESETS = {
    "shapes": Preset(Settings(), (2, 4, 8, 16, 32), (0,)),
    "fashion-mnist": Preset(Settings(dataset="fashion-mnist", epochs=2, num_train=8000,
                                     num_val=FASHION_MNIST_TEST_IMAGES, image_size=28, data_root=""),
                            (1, 2, 4, 8, 16, 32), (0, 1, 2)),
}


def build_data(settings: Settings, batch_size: int):
    """The data module of a run and its image channels."""
    from tasks.classification import SyntheticShapesDataModule
    from tasks.classification.data import FashionMNISTDataModule

    if settings.dataset == "shapes":
        return SyntheticShapesDataModule(root=str(REPO_ROOT / settings.data_root), num_train=settings.num_train,
                                         num_val=settings.num_val, image_size=settings.image_size,
                                         seed=settings.data_seed, batch_size=batch_size), 3
    return FashionMNISTDataModule(root=str(REPO_ROOT / settings.data_root) if settings.data_root else None, val_size=0,
                                  train_subset=settings.num_train, seed=settings.data_seed, batch_size=batch_size), 1


def run_one(norm: str, batch_size: int, seed: int, settings: Settings, threads: int) -> dict:
    """Train one model, test it, and return the record of the run."""
    import functools

    import torch
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.callbacks import Timer
    from torch.utils.data import DataLoader

    from tasks.classification import ImageClassifier

    torch.set_num_threads(threads)
    seed_everything(seed, verbose=False)
    data, in_channels = build_data(settings, batch_size)
    steps = settings.epochs * (settings.num_train // batch_size)
    lr = settings.base_lr * batch_size / settings.base_batch_size
    model = ImageClassifier(
        norm=norm_setting(norm), num_classes=data.num_classes,
        backbone_options={"depth": settings.depth, "width": settings.width, "in_channels": in_channels},
        optimizer=functools.partial(torch.optim.SGD, lr=lr, momentum=settings.momentum, nesterov=True),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=steps),
        scheduler_interval="step", weight_decay=settings.weight_decay, norm_weight_decay=0.0,
    )
    timer = Timer()
    callbacks = [timer]
    if norm == "SSN":
        from dynnorm.integrations.lightning import SparsestMaxRadiusSchedule

        callbacks.append(SparsestMaxRadiusSchedule())
    trainer = Trainer(max_epochs=settings.epochs, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu",
                      devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(model, data)
    # Evaluation uses running statistics only, so a large test batch gives the same accuracy, faster.
    tested = trainer.test(model, dataloaders=DataLoader(data.test_set, batch_size=500), verbose=False)[0]
    record = {"dataset": settings.dataset, "norm": norm, "batch_size": batch_size, "seed": seed, "lr": lr,
              "steps": trainer.global_step, "test_acc1": round(tested["test_acc1"], 4),
              "test_loss": round(tested["test_loss"], 4), "seconds": round(time.perf_counter() - start, 1),
              "seconds_per_step": round(timer.time_elapsed("train") / max(trainer.global_step, 1), 5),
              "threads": threads}
    found = layer_diagnostics(model, data.test_set)
    return {**record, "diagnostics": found} if found else record


def layer_diagnostics(model, test_set) -> dict:
    """The trained model's AssocNorm saturation on the first ``DIAGNOSTIC_IMAGES`` test images and its DN gate
    mixture (:mod:`dynnorm.diagnostics`), per layer, rounded; empty when it has neither layer."""
    import torch

    from dynnorm import diagnostics

    images = torch.stack([test_set[i][0] for i in range(min(DIAGNOSTIC_IMAGES, len(test_set)))])
    found = {"assocnorm_saturation": diagnostics.associate_norm_saturation(model, images),
             "dn_mixture": diagnostics.dynamic_norm_mixture(model)}
    rounded = json.loads(json.dumps(found), parse_float=lambda text: round(float(text), 4))
    return {kind: layers for kind, layers in rounded.items() if layers}


def _cost(batch_size: int) -> float:
    """Relative run time, to start the longest runs first: steps (~ 1 / batch size) x time per step (~ 5 + batch
    size milliseconds, measured alike for every normalizer of the study)."""
    return (5 + batch_size) / batch_size


def cells(norms: list[str], batch_sizes: list[int], seeds: list[int],
          batch1_norms: list[str]) -> list[tuple[str, int, int]]:
    """The study's runs ``(norm, batch_size, seed)``: every norm at every batch size and seed, and the
    ``batch1_norms`` at batch size 1 when it is one of the ``batch_sizes``."""
    extra = [(norm, 1) for norm in batch1_norms if 1 in batch_sizes and norm not in norms]
    return [(norm, batch_size, seed) for norm, batch_size in [(n, b) for n in norms for b in batch_sizes] + extra
            for seed in seeds]


def run_key(run: dict) -> tuple[str, int, int]:
    return run["norm"], run["batch_size"], run["seed"]


class ResultStore(results_io.ResultStore):
    """The study's JSON (:class:`benchmarks.results_io.ResultStore`), runs identified by :func:`run_key`."""

    def __init__(self, path: Path, settings: Settings, header: dict) -> None:
        super().__init__(path, asdict(settings), header, key=run_key)

    def discard(self, norms: list[str]) -> None:
        """Forget the recorded runs of ``norms`` (rewritten when the next run is added)."""
        self.runs = [run for run in self.runs if run["norm"] not in norms]


def run_study(todo: list[tuple[str, int, int]], settings: Settings, workers: int, threads: int,
              store: ResultStore) -> None:
    """Run ``todo`` (longest first) and record each run in ``store`` as it finishes."""
    todo = sorted(todo, key=lambda key: -_cost(key[1]))

    def record(result: dict) -> None:
        store.add(result)
        print(f"{result['norm']:>9} bs {result['batch_size']:>2} seed {result['seed']}: test acc "
              f"{result['test_acc1']:.4f} ({result['seconds']:.0f} s, {1000 * result['seconds_per_step']:.1f} ms/step)",
              flush=True)

    if workers <= 1:
        for norm, batch_size, seed in todo:
            record(run_one(norm, batch_size, seed, settings, threads))
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, norm, batch_size, seed, settings, threads) for norm, batch_size, seed in todo]
        for future in as_completed(futures):
            record(future.result())


def aggregate(runs: list[dict]) -> dict[tuple[str, int], dict]:
    """Per ``(norm, batch_size)`` cell: ``n`` seeds, ``mean`` and ``std`` (sample, 0 for one seed) of the
    test accuracy in %, mean ``seconds_per_step`` and the ``steps`` of a run."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["norm"], run["batch_size"]), []).append(run)
    table = {}
    for key, members in groups.items():
        accuracies = [100 * r["test_acc1"] for r in members]
        table[key] = {"n": len(members), "mean": statistics.fmean(accuracies),
                      "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                      "seconds_per_step": statistics.fmean(r["seconds_per_step"] for r in members),
                      "steps": members[0]["steps"]}
    return table


def _ordered(table: dict[tuple[str, int], dict]) -> tuple[list[str], list[int]]:
    norms = [n for n in NORMS if any(key[0] == n for key in table)]
    return norms, sorted({key[1] for key in table})


def markdown_table(table: dict[tuple[str, int], dict]) -> str:
    """Test accuracy (%) mean +- std per cell (best mean of each row in bold; ``(n=k)`` marks a cell with
    fewer seeds than the others), then milliseconds per training step."""
    norms, batch_sizes = _ordered(table)
    header = ["| normalizer | " + " | ".join(f"bs {b}" for b in batch_sizes) + " |",
              "|---|" + "---:|" * len(batch_sizes)]
    steps = {b: cell["steps"] for (_, b), cell in table.items()}
    accuracy = [*header, "| *optimizer steps* | " + " | ".join(f"*{steps[b]}*" for b in batch_sizes) + " |"]
    timing = list(header)
    seeds = max(cell["n"] for cell in table.values())
    for norm in norms:
        row = {b: table[norm, b] for b in batch_sizes if (norm, b) in table}
        best = max(cell["mean"] for cell in row.values())
        cells_text = []
        for b in batch_sizes:
            if b not in row:
                cells_text.append("-")
                continue
            text = f"{row[b]['mean']:.1f}" + (f" ± {row[b]['std']:.1f}" if row[b]["n"] > 1 else "")
            text = f"**{text}**" if row[b]["mean"] == best and len(row) > 1 else text
            cells_text.append(text + (f" (n={row[b]['n']})" if row[b]["n"] < seeds else ""))
        accuracy.append(f"| {label(norm)} | " + " | ".join(cells_text) + " |")
        timing.append(f"| {label(norm)} | "
                      + " | ".join(f"{1000 * row[b]['seconds_per_step']:.1f}" if b in row else "-" for b in batch_sizes)
                      + " |")
    return "\n".join(accuracy) + "\n\nMilliseconds per training step (mean over seeds):\n\n" + "\n".join(timing)


def plot(table: dict[tuple[str, int], dict], baseline: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms, batch_sizes = _ordered(table)
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for norm in norms:
        present = [b for b in batch_sizes if (norm, b) in table]
        axes.errorbar(present, [table[norm, b]["mean"] for b in present], yerr=[table[norm, b]["std"] for b in present],
                      marker="o", capsize=3, label=label(norm))
    axes.axhline(100 * baseline, color="grey", linestyle="--", linewidth=1, label="majority class")
    axes.set_xscale("log", base=2)
    axes.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    axes.set_xlabel("batch size per device")
    axes.set_ylabel("test top-1 accuracy (%), mean ± std over seeds")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=130)
    plt.close(figure)


def _diagnostic_cells(runs: list[dict], kind: str) -> dict[tuple[str, int], list[dict[str, dict]]]:
    """``{(norm, batch_size): [each seed's per-layer diagnostics]}`` of the runs that recorded ``kind``, in
    table order."""
    cells: dict[tuple[str, int], list[dict[str, dict]]] = {}
    for run in runs:
        if kind in run.get("diagnostics", {}):
            cells.setdefault((run["norm"], run["batch_size"]), []).append(run["diagnostics"][kind])
    return dict(sorted(cells.items(), key=lambda item: (NORMS.index(item[0][0]), item[0][1])))


def _layers(seeds: list[dict[str, dict]]) -> list[dict]:
    return [layer for seed in seeds for layer in seed.values()]


def diagnostics_markdown(runs: list[dict]) -> str:
    """Tables of the recorded layer diagnostics per normalizer and batch size: AssocNorm's dead and saturated auto-encoder
    units (%, mean over seeds and layers) and DN's batch gates and pooled channels (mean, and the range over
    layers and seeds)."""
    parts = []
    saturation = _diagnostic_cells(runs, "assocnorm_saturation")
    if saturation:
        columns = [("saturated_scale", "sigmoid (scale) saturated"), ("saturated_shift", "tanh (shift) saturated"),
                   ("dead_scale_embedding", "ReLU dead, scale path"), ("dead_shift_embedding", "ReLU dead, shift path")]
        parts += [f"AssocNorm auto-encoder after training, on {DIAGNOSTIC_IMAGES} test images (% of the values; "
                  "mean over seeds and layers, max over them in brackets; saturated: more than 95% of the way to the "
                  "activation's bound):", "",
                  "| normalizer | batch size | " + " | ".join(text for _, text in columns) + " |",
                  "|---|---:|" + "---:|" * len(columns)]
        for (norm, b), seeds in saturation.items():
            values = [[100 * layer[key] for layer in _layers(seeds)] for key, _ in columns]
            parts.append(f"| {label(norm)} | {b} | "
                         + " | ".join(f"{statistics.fmean(v):.0f} [{max(v):.0f}]" for v in values) + " |")
    mixture = _diagnostic_cells(runs, "dn_mixture")
    if mixture:
        parts += ["" if parts else None, "DN gates after training (mean over seeds and layers, range over them in "
                  "brackets): the batch gate (1: BN's statistics) and the channels each statistic pools (1: IN/BN):",
                  "", "| normalizer | batch size | batch gate, mean | batch gate, variance | pooled channels, mean | "
                  "pooled channels, variance |", "|---|---:|---:|---:|---:|---:|"]
        for (norm, b), seeds in mixture.items():
            values = [[layer[kind][key] for layer in _layers(seeds)] for key in ("batch", "pooled_channels")
                      for kind in ("mean", "var")]
            parts.append(f"| {label(norm)} | {b} | "
                         + " | ".join(f"{statistics.fmean(v):.2f} [{min(v):.2f}-{max(v):.2f}]" for v in values) + " |")
    return "\n".join(part for part in parts if part is not None)


def plot_diagnostics(runs: list[dict], path: Path) -> bool:
    """Per layer, mean over seeds, one line per normalizer and batch size: AssocNorm's saturated tanh (shift) share and DN's
    batch gate (mean path; the variance path dashed). Returns whether there was anything to plot."""
    panels = [(kind, title) for kind, title in (
        ("assocnorm_saturation", "AssocNorm: tanh (shift) outputs saturated"),
        ("dn_mixture", "DN: batch gate (solid: mean, dashed: variance)")) if _diagnostic_cells(runs, kind)]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for axis, (kind, title) in zip(axes[0], panels):
        for (norm, b), seeds in _diagnostic_cells(runs, kind).items():
            names = list(seeds[0])
            colour = None
            series = [("saturated_shift", "-")] if kind == "assocnorm_saturation" else [("mean", "-"), ("var", "--")]
            for key, style in series:
                value = (lambda layer: 100 * layer[key]) if kind == "assocnorm_saturation" else (
                    lambda layer: layer[key]["batch"])
                line, = axis.plot(range(1, len(names) + 1), [statistics.fmean(value(s[n]) for s in seeds) for n in names],
                                  style, marker="o", markersize=3, color=colour,
                                  label=f"{label(norm)}, bs {b}" if style == "-" else None)
                colour = line.get_color()
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("normalization layer (model order)")
        axis.set_ylabel("% of the values" if kind == "assocnorm_saturation" else "gate")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return True


def majority_baseline(settings: Settings) -> float:
    """Accuracy of always predicting the most frequent test class."""
    data, _ = build_data(settings, batch_size=1)
    data.prepare_data()
    data.setup("test")
    counts = Counter(int(label) for _, label in data.test_set)
    return max(counts.values()) / sum(counts.values())


def _diagnostics_section(runs: list[dict], out: Path) -> str:
    text = diagnostics_markdown(runs)
    return f"\n{text}\n\n![layer diagnostics]({out.name}_diagnostics.png)\n" if text else ""


def _epochs(settings: Settings) -> str:
    return f"{settings.epochs} epoch" + ("" if settings.epochs == 1 else "s")


def describe(settings: Settings) -> str:
    if settings.dataset == "shapes":
        data = (f"Synthetic shapes ({settings.num_train} train / {settings.num_val} test, {settings.image_size} px)")
    else:
        data = f"Fashion-MNIST ({settings.num_train} of the 60,000 training images, the 10,000 test images)"
    return (f"{data}, ResNet-{settings.depth} (width {settings.width}),\n{_epochs(settings)}, "
            f"lr {settings.base_lr} x batch / {settings.base_batch_size}, SGD + cosine")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    dataset = argparse.ArgumentParser(add_help=False)
    dataset.add_argument("--dataset", choices=list(PRESETS), default="shapes")
    preset = PRESETS[dataset.parse_known_args(argv)[0].dataset]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[dataset],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--norms", nargs="+", default=["BN", "GN", "SN", "EN", "DN", "DNB", "AssocNorm"],
                        choices=NORMS)
    parser.add_argument("--batch1-norms", nargs="*", default=["SN_noBN"], choices=NORMS,
                        help="also run at batch size 1 only, as rows of their own (when 1 is a batch size)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=list(preset.batch_sizes))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(preset.seeds))
    for field, value in asdict(preset.settings).items():
        if field != "dataset":
            parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (processes; 1: in this process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--max-runs", type=int, default=None, help="run at most this many of the missing runs")
    parser.add_argument("--rerun", nargs="+", default=[], choices=NORMS,
                        help="discard the recorded runs of these norms first (after a change to the layer)")
    parser.add_argument("--out", default=None, help="output path stem. Default: benchmarks/results/batch_size_study "
                        "(shapes), benchmarks/results/batch_size_study_fashion_mnist (fashion-mnist)")
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1:
        parser.error(f"batch sizes must be positive, got {args.batch_sizes}")
    if args.dataset == "fashion-mnist":
        if (args.image_size, args.num_val) != (28, FASHION_MNIST_TEST_IMAGES):
            parser.error("--image-size and --num-val apply to the shapes dataset only")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = Settings(**{field: getattr(args, field) for field in asdict(Settings())})
    stem = "batch_size_study" + ("" if settings.dataset == "shapes" else "_" + settings.dataset.replace("-", "_"))
    out = Path(args.out or RESULTS_DIR / stem)
    command = command_line(__file__, argv if argv is not None else sys.argv[1:])
    baseline = majority_baseline(settings)  # also checks that the data is there before any run starts
    store = ResultStore(out.with_suffix(".json"), settings, {"command": command, "majority_baseline": baseline,
                                                             "workers": args.workers, "threads": args.threads})
    store.discard(args.rerun)
    recorded = store.recorded()
    todo = [key for key in cells(args.norms, args.batch_sizes, args.seeds, args.batch1_norms) if key not in recorded]
    if args.max_runs is not None:
        todo = todo[: args.max_runs]
    print(f"{len(store.runs)} runs recorded in {store.path}, {len(todo)} to run", flush=True)
    run_study(todo, settings, args.workers, args.threads, store)
    store.write()  # the latest command, even when nothing was left to run
    if not store.runs:
        return
    table = aggregate(store.runs)
    title = describe(settings)
    seeds = sorted({run["seed"] for run in store.runs})
    write_atomically(
        out.with_suffix(".md"),
        f"Test top-1 accuracy (%), mean ± std over seeds {seeds}, after {_epochs(settings)}; majority class "
        f"{100 * baseline:.1f}%.\n{title.replace(chr(10), ' ')}.\n\n{markdown_table(table)}\n\n`{command}` "
        f"({len(store.runs)} runs, {sum(r['seconds'] for r in store.runs) / 60:.0f} min of run time in "
        f"{args.workers} processes of {args.threads} thread(s))\n" + _diagnostics_section(store.runs, out))
    plot(table, baseline, title, out.with_suffix(".png"))
    plot_diagnostics(store.runs, out.parent / f"{out.name}_diagnostics.png")
    print(markdown_table(table))
    print(f"wrote {out}.json, .md, .png")


if __name__ == "__main__":
    main()
