"""Evaluate a checkpoint of an mmdet or mmseg model on the config's test set, with mmengine's Runner.

    python tools/test.py CONFIG CHECKPOINT [--trust-checkpoint] [--work-dir DIR] [--data-root DIR]
                                           [--metrics-json FILE] [--cfg-options KEY=VALUE ...]
                                           [--launcher {none,pytorch,slurm,mpi}]

Prints the test metrics (COCO bbox/segm mAP for detection, mIoU for segmentation) through mmengine's logger and,
with ``--metrics-json``, writes them as JSON. CHECKPOINT loads weights-only, mmengine's own checkpoint classes
allowed (:mod:`dynnorm.integrations.mm_checkpoint`): checkpoints of tools/train.py load under torch >= 2.6
without running code from the file. A checkpoint that needs more is refused unless ``--trust-checkpoint`` (or
``trust_checkpoint = True`` in the config) declares it trusted.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mmengine.config import Config
from mmengine.dist import get_rank

import dynnorm.integrations.mmengine  # noqa: F401  (registers layers, hooks, optimizer constructor)
from dynnorm.integrations.mm_checkpoint import install_checkpoint_loader, trusted_checkpoints
from dynnorm.integrations.mm_runtime import add_config_arguments, build_runner, config_from_args
from tasks.generated_datasets import ensure_config_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Test a detector or segmentor checkpoint with mmengine's Runner")
    add_config_arguments(parser)
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--metrics-json", help="also write the metrics to this JSON file")
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> Config:
    """The config with the command line applied: the checkpoint to test, and nothing to resume."""
    cfg = config_from_args(args)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    return cfg


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))  # what mmengine's launchers read
    cfg = configure(args)
    install_checkpoint_loader(trusted_checkpoints(cfg))
    runner = build_runner(cfg)
    ensure_config_dataset(cfg, args.data_root)
    metrics = runner.test()
    if args.metrics_json and get_rank() == 0:
        out = Path(args.metrics_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    return metrics


if __name__ == "__main__":
    main()
