"""Small-scale counterpart of the SN paper's COCO table: Mask R-CNN on the synthetic shapes dataset, BN vs GN vs SN.

    python -m benchmarks.benchmark_detection [--norms bn gn sn] [--iters 1000] [--seed 0] [--threads N]
        [--work-dir work_dirs/benchmark_detection] [--out benchmarks/results/detection_benchmark]

Trains ``configs/mmdet/mask-rcnn_r18-w16_fpn_<norm>-all_1xb2-1k_shapes.py`` for every norm, one after the other, with
the same schedule, seed and data (2 images per batch, norm layers in backbone, FPN and both heads, from scratch),
each in its own ``tools/train.py`` process, and writes ``<out>.json`` and ``<out>.md`` with COCO bbox/segm mAP of the
validation split, seconds per training iteration (mean over the logged windows after the first) and peak memory
(the process's peak resident set size; on CUDA also mmengine's peak allocated memory).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

import dynnorm
from benchmarks.results_io import REPO_ROOT, RESULTS_DIR, command_line, write_atomically

CONFIG = "configs/mmdet/mask-rcnn_r18-w16_fpn_{norm}-all_1xb2-1k_shapes.py"
LOG_INTERVAL = 50
METRICS = ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "segm_mAP", "segm_mAP_50", "segm_mAP_75")


def available_norms() -> list[str]:
    """The norms with a shapes config (``CONFIG``), by the name in its file name (``bn``, ``gn``, ``sn``, ...)."""
    prefix, suffix = CONFIG.split("{norm}")
    return sorted(path.name[len(Path(prefix).name):-len(suffix)] for path in REPO_ROOT.glob(prefix + "*" + suffix))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=["bn", "gn", "sn"], choices=available_norms())
    parser.add_argument("--iters", type=int, default=1000, help="training iterations (LR steps at 75%% and 90%%)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the training processes (default: inherited)")
    parser.add_argument("--work-dir", default="work_dirs/benchmark_detection")
    parser.add_argument("--out", default=str(RESULTS_DIR / "detection_benchmark"), help="output path without suffix")
    return parser.parse_args(argv)


def schedule_options(iters: int, seed: int) -> list[str]:
    """``--cfg-options`` giving every detection run the same schedule: warm-up over the first fifth (at most 200
    iterations), LR steps at 75% and 90%, validation and a checkpoint at the end, the log interval, the seed."""
    log_interval = min(LOG_INTERVAL, iters)
    return [f"train_cfg.max_iters={iters}", f"train_cfg.val_interval={iters}",
            f"param_scheduler.0.end={max(1, min(200, iters // 5))}",
            f"param_scheduler.1.milestones=[{int(iters * 0.75)},{int(iters * 0.9)}]", f"param_scheduler.1.end={iters}",
            f"default_hooks.checkpoint.interval={iters}", f"default_hooks.logger.interval={log_interval}",
            f"log_processor.window_size={log_interval}", f"randomness.seed={seed}"]


def run_train_tool(config: str, work_dir: Path, cfg_options: list[str], *, threads: int | None = None,
                   data_root: str | None = None, log_name: str = "train.log") -> tuple[list[dict], dict]:
    """Train ``config`` with tools/train.py in a process of its own (its output in ``work_dir/log_name``; an
    error naming that log when it fails).

    Returns:
        The run's logged scalars (:func:`read_scalars`) and its cost: ``sec_per_iter`` (mean of the logged
        windows after the first), ``peak_rss_mib`` of the training process and ``final_loss``.
    """
    command = [sys.executable, "tools/train.py", config, "--work-dir", str(work_dir),
               *(["--data-root", data_root] if data_root else []), "--cfg-options", *cfg_options]
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    work_dir.mkdir(parents=True, exist_ok=True)
    with (work_dir / log_name).open("w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed; see {work_dir / log_name}")
    scalars = read_scalars(work_dir)
    train_logs = [s for s in scalars if "loss" in s]
    times = [s["time"] for s in train_logs[1:]] or [s["time"] for s in train_logs]
    return scalars, {"sec_per_iter": round(statistics.fmean(times), 4),
                     "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
                     "final_loss": round(train_logs[-1]["loss"], 4)}


def train(norm: str, args: argparse.Namespace) -> dict:
    """Run tools/train.py for one norm; return its metrics, speed and memory."""
    started = datetime.datetime.now()
    scalars, cost = run_train_tool(CONFIG.format(norm=norm), Path(args.work_dir) / norm,
                                   schedule_options(args.iters, args.seed), threads=args.threads,
                                   log_name="benchmark.log")
    wall = (datetime.datetime.now() - started).total_seconds()
    validation = next(s for s in reversed(scalars) if "coco/bbox_mAP" in s)
    memory = [s["memory"] for s in scalars if "loss" in s and "memory" in s]
    return {
        "norm": dynnorm.display_name(norm), "config": CONFIG.format(norm=norm),
        **{metric: validation.get(f"coco/{metric}") for metric in METRICS},
        "sec_per_iter": cost["sec_per_iter"], "peak_rss_mib": cost["peak_rss_mib"],
        "peak_cuda_mib": max(memory) if memory else None,
        "final_loss": cost["final_loss"], "wall_seconds": round(wall, 1),
    }


def read_scalars(work_dir: Path) -> list[dict]:
    runs = sorted(p for p in work_dir.iterdir() if p.is_dir() and re.fullmatch(r"\d{8}_\d{6}", p.name))
    return [json.loads(line) for line in (runs[-1] / "vis_data" / "scalars.json").read_text().splitlines()]


def environment(args: argparse.Namespace) -> dict:
    import mmdet
    import mmengine
    import torch

    from benchmarks.benchmark import cpu_name

    return {
        "date": datetime.date.today().isoformat(), "python": platform.python_version(), "torch": torch.__version__,
        "mmengine": mmengine.__version__, "mmdet": mmdet.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU: {cpu_name()} ({os.cpu_count()} cores)",
        "threads": args.threads or os.environ.get("OMP_NUM_THREADS") or "default",
        "iters": args.iters, "images_per_batch": 2, "seed": args.seed,
        "command": command_line(__file__, sys.argv[1:]),
    }


def markdown(results: list[dict], env: dict) -> str:
    lines = [
        f"Mask R-CNN (ResNet-18 at width 16, FPN, 4conv1fc box head, mask head; norm layers everywhere), trained from "
        f"scratch for {env['iters']} iterations at {env['images_per_batch']} images per batch on the synthetic shapes "
        f"dataset (128x128), seed {env['seed']}; COCO mAP on its 100 validation images. {env['device']}, "
        f"threads: {env['threads']}; torch {env['torch']}, mmdet {env['mmdet']}.",
        "",
        "| norm | bbox mAP | bbox AP50 | bbox AP75 | segm mAP | segm AP50 | segm AP75 | s/iter | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['norm']} | {r['bbox_mAP']:.3f} | {r['bbox_mAP_50']:.3f} | {r['bbox_mAP_75']:.3f} | "
                     f"{r['segm_mAP']:.3f} | {r['segm_mAP_50']:.3f} | {r['segm_mAP_75']:.3f} | "
                     f"{r['sec_per_iter']:.3f} | {r['peak_rss_mib']:.0f} |")
    lines += ["", f"Command: `{env['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = []
    for norm in args.norms:
        print(f"[benchmark] training {dynnorm.display_name(norm)} ...", flush=True)
        results.append(train(norm, args))
        print(f"[benchmark] {json.dumps(results[-1])}", flush=True)
    env = environment(args)
    out = Path(args.out)
    write_atomically(out.with_suffix(".json"), json.dumps({"environment": env, "results": results}, indent=2) + "\n")
    write_atomically(out.with_suffix(".md"), markdown(results, env))
    print(markdown(results, env))


if __name__ == "__main__":
    main()
