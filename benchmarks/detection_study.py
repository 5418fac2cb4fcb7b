"""Detection and segmentation on real images at 2 images per batch, with seeds: Mask R-CNN and DeepLabV3 on the
Fashion-MNIST scenes, one run per normalizer and seed.

    python -m benchmarks.detection_study [--models mask-rcnn deeplabv3] [--det-norms BN GN SN EN [DNB AssocNorm]]
        [--seg-norms BN GN SN] [--seeds 0 1 2] [--det-iters 1500] [--seg-iters 4000] [--workers 2] [--threads 1]
        [--max-runs N] [--data-root data/fashion_scenes] [--work-dir work_dirs/detection_study]
        [--out benchmarks/results/detection_study]

The small-scale counterpart of the SN paper's COCO table ("2 images per GPU"), with real images and seeds. Every
run trains a config of ``configs/`` from scratch with ``tools/train.py`` in a process of its own, at 2 images per
batch, with the same schedule and data for every normalizer:

- ``mask-rcnn``: ``configs/mmdet/mask-rcnn_r18-w16_fpn_<norm>-all_1xb2-1.5k_fashion-scenes.py`` (ResNet-18 at width
  16, FPN, 4conv1fc box head and mask head, the normalizer in all of them), ``--det-iters`` iterations (warm-up,
  LR steps at 75% and 90%); COCO bbox and segm mAP on the 300 validation scenes;
- ``deeplabv3``: ``configs/mmseg/deeplabv3_r18-w16-d8_<norm>_1xb2-4k_fashion-scenes.py`` (dilated ResNet-18-V1c at
  width 16, ASPP head), ``--seg-iters`` iterations (poly decay); mIoU over background + 10 classes.

The scenes (:mod:`tasks.fashion_scenes`, default spec) are generated once, before any run starts, from the local
Fashion-MNIST files. The seed of a run (``randomness.seed``) sets the initialization and the order of the training
images; the scenes are the same for every run.

Sizing: the scenes' defaults and the iterations were chosen so that the study (12 Mask R-CNN and 9 DeepLabV3 runs)
takes about 2 hours on 2 CPU cores with ``--workers 2`` and the detectors stay well below saturation. Calibration runs,
each alone with one thread on a shared 2-core AMD EPYC machine, seed 0, validation on the 300 scenes:

| scenes | run (seed 0) | bbox / segm mAP | s/iter |
|---|---|---|---|
| 2-8 garments at 1-3x, 40 fragments at gain 0.3-0.8, min_visible 0.5 | Mask R-CNN SN | 0.228 / 0.237 | ~1.2 (busy) |
| same | Mask R-CNN BN | 0.234 / 0.244 | 0.51 |
| same | DeepLabV3 SN, 1000 / 4000 it | mIoU 9.9 / 25.5% | 0.097 |
| 2-6 garments at 1.5-3x, fragments at gain 0.2-0.6 | Mask R-CNN SN | 0.288 / 0.293 | 0.61 |
| the defaults (also 30 fragments, min_visible 0.6) | Mask R-CNN SN | 0.324 / 0.333 | 0.49 |
| the defaults | Mask R-CNN BN | 0.331 / 0.336 | 0.48 |
| the defaults | Mask R-CNN GN | 0.326 / 0.331 | 0.46 |
| the defaults | DeepLabV3 SN, 4000 it | mIoU 30.3% | 0.104 |

(Mask R-CNN runs: 1500 iterations.) Per run, then: Mask R-CNN 1500 x 0.49 s + about 40 s of start-up and evaluation
= 13 min, DeepLabV3 4000 x 0.104 s + 25 s = 7.5 min; 12 x 13 + 9 x 7.5 = 224 worker-minutes, 112 minutes on 2
workers that do not slow each other down (``--det-norms`` DNB and AssocNorm add 6 runs, about 40 minutes). Fewer
garments per scene, larger ones and a dimmer, sparser background raised the detectors' mAP from 0.23 to 0.33 at the
same budget; at 1000 iterations DeepLabV3 had barely started (mIoU 10%), and it is 5x cheaper per iteration, hence
its longer schedule. At seed 0, BN, GN and SN end within 0.007 bbox mAP of each other: whether any difference
exceeds the spread over seeds is what the study measures.

Per run, the JSON records the metrics, seconds per training iteration (mean of the logged 50-iteration windows
after the first; the runs of the ``--workers`` processes share the machine, so compare s/iter within a study, not
across machines), the peak resident set size of the training process and the wall time. Each run is added as it
finishes (written to a temporary file, then renamed over the JSON) and a rerun skips the runs already recorded, so
an interrupted study resumes where it stopped; a JSON of other settings (iterations, scenes) is an error: pick
another ``--out``. ``<out>.md`` tabulates mean ± std over the seeds and every seed's main metric, ``<out>.png``
plots them.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import dynnorm
from benchmarks.benchmark_detection import LOG_INTERVAL, run_train_tool
from benchmarks.benchmark_detection import schedule_options as detection_schedule
from benchmarks.results_io import REPO_ROOT, RESULTS_DIR, ResultStore, command_line, write_atomically
from tasks.fashion_scenes import ScenesSpec, ensure_dataset


@dataclass(frozen=True)
class Model:
    """A model of the study: its config (``{norm}``: the registry name in lower case), its metrics as mmengine logs
    them (the first is the main one, with the second for detection), and the normalizers it has configs for."""

    title: str
    config: str
    metrics: tuple[str, ...]
    main_metrics: tuple[str, ...]
    norms: tuple[str, ...]
    default_norms: tuple[str, ...]


MODELS = {
    "mask-rcnn": Model(
        "Mask R-CNN (ResNet-18 w16, FPN, norm everywhere)",
        "configs/mmdet/mask-rcnn_r18-w16_fpn_{norm}-all_1xb2-1.5k_fashion-scenes.py",
        ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/bbox_mAP_75", "coco/segm_mAP", "coco/segm_mAP_50",
         "coco/segm_mAP_75"),
        ("coco/bbox_mAP", "coco/segm_mAP"),
        ("BN", "GN", "SN", "EN", "DNB", "AssocNorm"), ("BN", "GN", "SN", "EN")),
    "deeplabv3": Model(
        "DeepLabV3 (ResNet-18-V1c w16, dilated)",
        "configs/mmseg/deeplabv3_r18-w16-d8_{norm}_1xb2-4k_fashion-scenes.py",
        ("mIoU", "mAcc", "aAcc"), ("mIoU",), ("BN", "GN", "SN"), ("BN", "GN", "SN")),
}
LABELS = {"coco/bbox_mAP": "bbox mAP", "coco/bbox_mAP_50": "bbox AP50", "coco/bbox_mAP_75": "bbox AP75",
          "coco/segm_mAP": "segm mAP", "coco/segm_mAP_50": "segm AP50", "coco/segm_mAP_75": "segm AP75",
          "mIoU": "mIoU (%)", "mAcc": "mAcc (%)", "aAcc": "aAcc (%)"}


def schedule_options(model: str, iters: int, seed: int) -> list[str]:
    """``--cfg-options`` of a run: detection as :func:`benchmarks.benchmark_detection.schedule_options` (warm-up,
    LR steps at 75% and 90%); segmentation: poly decay to the end, validation and a checkpoint at the end, the
    log interval, the seed."""
    if model == "mask-rcnn":
        return detection_schedule(iters, seed)
    log_interval = min(LOG_INTERVAL, iters)
    return [f"train_cfg.max_iters={iters}", f"train_cfg.val_interval={iters}",
            f"default_hooks.checkpoint.interval={iters}", f"default_hooks.logger.interval={log_interval}",
            f"log_processor.window_size={log_interval}", f"randomness.seed={seed}", f"param_scheduler.0.end={iters}"]


def run_one(model: str, norm: str, seed: int, iters: int, threads: int, work_root: Path,
            data_root: str | None) -> dict:
    """Train one config with tools/train.py in its own process; return the record of the run."""
    spec = MODELS[model]
    config = spec.config.format(norm=norm.lower())
    work_dir = work_root / model / f"{norm.lower()}_seed{seed}"
    if work_dir.exists():  # left by an interrupted study: start the run afresh
        shutil.rmtree(work_dir)
    started = time.perf_counter()
    scalars, cost = run_train_tool(config, work_dir, schedule_options(model, iters, seed), threads=threads,
                                   data_root=data_root, log_name="study.log")
    # CocoMetric reports nothing for a detector without a single detection (a barely trained one): None then.
    validation = next((s for s in reversed(scalars) if spec.metrics[0] in s), {})
    return {"model": model, "norm": norm, "seed": seed, "iters": iters, "config": config,
            **{metric: validation.get(metric) for metric in spec.metrics}, **cost,
            "seconds": round(time.perf_counter() - started, 1), "threads": threads}


def run_key(run: dict) -> tuple[str, str, int]:
    return run["model"], run["norm"], run["seed"]


def planned_runs(models: list[str], norms: dict[str, list[str]], seeds: list[int]) -> list[tuple[str, str, int]]:
    """The study's runs ``(model, norm, seed)``, the longest model first, then by seed, so that an interrupted
    study holds whole seeds."""
    return [(model, norm, seed) for model in models for seed in seeds for norm in norms[model]]


def run_study(todo: list[tuple[str, str, int]], settings: dict, args: argparse.Namespace, store: ResultStore) -> None:
    """Run ``todo`` in ``args.workers`` processes at a time and record each run as it finishes."""

    def start(key: tuple[str, str, int]) -> dict:
        model, norm, seed = key
        print(f"[study] start {model} {norm} seed {seed}", flush=True)
        return run_one(model, norm, seed, settings["iters"][model], args.threads, Path(args.work_dir),
                       args.data_root)

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(start, key) for key in todo]
        try:
            for future in as_completed(futures):
                run = future.result()
                store.add(run)
                main = MODELS[run["model"]].main_metrics[0]
                print(f"[study] done {run['model']} {run['norm']} seed {run['seed']}: {LABELS[main]} "
                      f"{_number(run[main], 3)}, {run['sec_per_iter']:.3f} s/iter, {run['peak_rss_mib']:.0f} MiB, "
                      f"{run['seconds']:.0f} s", flush=True)
        except BaseException:  # a failed run: start no other, let the running ones finish and be lost
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def aggregate(runs: list[dict]) -> dict[tuple[str, str], dict]:
    """Per ``(model, norm)``: the seeds, each metric's per-seed ``values`` (None where the run reported none),
    ``mean`` and ``std`` (sample standard deviation, 0 for one value) of the reported ones, ``n`` of them (mean
    and std None for none), mean s/iter and the largest peak RSS."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        groups.setdefault((run["model"], run["norm"]), []).append(run)
    table = {}
    for (model, norm), members in groups.items():
        cell = {"seeds": [r["seed"] for r in members],
                "sec_per_iter": statistics.fmean(r["sec_per_iter"] for r in members),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in members)}
        for metric in MODELS[model].metrics:
            values = [r[metric] for r in members]
            reported = [v for v in values if v is not None]
            cell[metric] = {"values": values, "n": len(reported),
                            "mean": statistics.fmean(reported) if reported else None,
                            "std": (statistics.stdev(reported) if len(reported) > 1 else 0.0) if reported else None}
        table[model, norm] = cell
    return table


def _ordered_norms(table: dict, model: str) -> list[str]:
    return [norm for norm in MODELS[model].norms if (model, norm) in table]


def markdown_table(table: dict, model: str) -> str:
    """Mean ± std over seeds of every metric (``n/a``: no run reported it; ``(n=k)``: k runs did), s/iter and
    peak RSS, then each seed's main metrics."""
    spec = MODELS[model]
    norms = _ordered_norms(table, model)
    digits = 3 if spec.metrics[0].startswith("coco/") else 1
    lines = ["| norm | seeds | " + " | ".join(LABELS[m] for m in spec.metrics) + " | s/iter | peak RSS (MiB) |",
             "|---|---:|" + "---:|" * (len(spec.metrics) + 2)]
    for norm in norms:
        cell = table[model, norm]
        values = [_mean_std(cell[m], digits, len(cell["seeds"])) for m in spec.metrics]
        lines.append(f"| {dynnorm.display_name(norm)} | {len(cell['seeds'])} | " + " | ".join(values)
                     + f" | {cell['sec_per_iter']:.3f} | {cell['peak_rss_mib']:.0f} |")
    seeds = sorted({seed for norm in norms for seed in table[model, norm]["seeds"]})
    for metric in spec.main_metrics:
        lines += ["", f"{LABELS[metric]} per seed:", "",
                  "| norm | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---:|" * len(seeds)]
        for norm in norms:
            by_seed = dict(zip(table[model, norm]["seeds"], table[model, norm][metric]["values"]))
            lines.append(f"| {dynnorm.display_name(norm)} | "
                         + " | ".join(_number(by_seed[s], digits) if s in by_seed else "-" for s in seeds) + " |")
    return "\n".join(lines)


def _mean_std(metric: dict, digits: int, runs: int) -> str:
    if metric["mean"] is None:
        return "n/a"
    text = f"{metric['mean']:.{digits}f} ± {metric['std']:.{digits}f}"
    return text + (f" (n={metric['n']})" if metric["n"] < runs else "")


def plot(table: dict, settings: dict, path: Path) -> None:
    """One panel per main metric: the mean over seeds ± std (square and error bar) and every seed (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(model, metric) for model in MODELS for metric in MODELS[model].main_metrics
              if _ordered_norms(table, model)]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for axis, (model, metric) in zip(axes[0], panels):
        norms = _ordered_norms(table, model)
        cells = [table[model, norm][metric] for norm in norms]
        positions = range(len(norms))
        nan = float("nan")  # nothing drawn where no run reported the metric
        axis.errorbar(positions, [nan if c["mean"] is None else c["mean"] for c in cells],
                      yerr=[nan if c["std"] is None else c["std"] for c in cells], fmt="s", capsize=4,
                      color="#08519c", label="mean ± std")
        for position, cell in zip(positions, cells):
            axis.plot([position + 0.15] * len(cell["values"]), [nan if v is None else v for v in cell["values"]], "o",
                      color="#6baed6", markersize=3, label="seeds" if position == 0 else None)
        axis.set_xticks(list(positions), [dynnorm.display_name(n) for n in norms], rotation=30 if len(norms) > 4 else 0)
        axis.set_xlim(-0.5, len(norms) - 0.5)
        axis.legend(fontsize=7)
        axis.set_ylabel(LABELS[metric])
        axis.set_title(f"{MODELS[model].title.split(' (')[0]}, {settings['iters'][model]} iterations", fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("Fashion-MNIST scenes, 2 images per batch, trained from scratch", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=130)
    plt.close(figure)


def environment(args: argparse.Namespace, argv: list[str]) -> dict:
    import mmdet
    import mmengine
    import mmseg
    import torch

    from benchmarks.benchmark import cpu_name

    return {"command": command_line(__file__, argv), "date": datetime.date.today().isoformat(),
            "device": f"CPU: {cpu_name()} ({os.cpu_count()} cores)", "workers": args.workers, "threads": args.threads,
            "python": platform.python_version(), "torch": torch.__version__, "mmengine": mmengine.__version__,
            "mmdet": mmdet.__version__, "mmseg": mmseg.__version__}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--det-norms", nargs="+", default=list(MODELS["mask-rcnn"].default_norms),
                        choices=MODELS["mask-rcnn"].norms, help="Mask R-CNN normalizers (registry names)")
    parser.add_argument("--seg-norms", nargs="+", default=list(MODELS["deeplabv3"].default_norms),
                        choices=MODELS["deeplabv3"].norms, help="DeepLabV3 normalizers (registry names)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--det-iters", type=int, default=1500, help="Mask R-CNN training iterations")
    parser.add_argument("--seg-iters", type=int, default=4000, help="DeepLabV3 training iterations")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--max-runs", type=int, default=None, help="run at most this many of the missing runs")
    parser.add_argument("--data-root", default=None,
                        help="folder of the scenes (default: the configs' data/fashion_scenes), generated if missing")
    parser.add_argument("--work-dir", default="work_dirs/detection_study", help="work dirs of the runs")
    parser.add_argument("--out", default=str(RESULTS_DIR / "detection_study"), help="output path without suffix")
    args = parser.parse_args(argv)
    if min(args.det_iters, args.seg_iters) < 5:
        parser.error(f"--det-iters and --seg-iters must be at least 5, got {args.det_iters}, {args.seg_iters}")
    if args.workers < 1 or args.threads < 1:
        parser.error(f"--workers and --threads must be positive, got {args.workers}, {args.threads}")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    scenes = ScenesSpec()
    settings = {"iters": {"mask-rcnn": args.det_iters, "deeplabv3": args.seg_iters}, "images_per_batch": 2,
                "scenes": asdict(scenes)}
    out = Path(args.out)
    store = ResultStore(out.with_suffix(".json"), settings, environment(args, argv), key=run_key)
    norms = {"mask-rcnn": args.det_norms, "deeplabv3": args.seg_norms}
    recorded = store.recorded()
    todo = [key for key in planned_runs(args.models, norms, args.seeds) if key not in recorded]
    if args.max_runs is not None:
        todo = todo[: args.max_runs]
    print(f"[study] {len(store.runs)} runs recorded in {store.path}, {len(todo)} to run", flush=True)
    if todo:  # generated once here, so that the parallel runs never race to write the scenes
        ensure_dataset(REPO_ROOT / (args.data_root or "data/fashion_scenes"), scenes)
        run_study(todo, settings, args, store)
    store.write()  # the latest command, even when nothing was left to run
    if not store.runs:
        return
    table = aggregate(store.runs)
    sections = []
    for model in MODELS:
        if _ordered_norms(table, model):
            sections.append(f"### {MODELS[model].title}, {settings['iters'][model]} iterations at 2 images per "
                            f"batch\n\n{markdown_table(table, model)}")
    env = store.header
    text = (f"Fashion-MNIST scenes ({scenes.num_train} training / {scenes.num_val} validation scenes of "
            f"{scenes.canvas_size}x{scenes.canvas_size} pixels, 10 classes), trained from scratch; mean ± std over "
            f"the seeds. {env['device']}, {env['workers']} processes of {env['threads']} thread(s); torch "
            f"{env['torch']}, mmdet {env['mmdet']}, mmseg {env['mmseg']}.\n\n" + "\n\n".join(sections)
            + ("\n\nn/a: no metric reported (a detector without a single detection, for which CocoMetric reports "
               "nothing)." if any(r[m] is None for r in store.runs for m in MODELS[r["model"]].metrics) else "")
            + f"\n\n`{env['command']}` ({len(store.runs)} runs, "
            f"{sum(r['seconds'] for r in store.runs) / 60:.0f} min of run time)\n")
    write_atomically(out.with_suffix(".md"), text)
    plot(table, settings, out.with_suffix(".png"))
    print(text)
    print(f"wrote {out}.json, .md, .png")


if __name__ == "__main__":
    main()
