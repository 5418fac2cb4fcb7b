"""Train an mmdet or mmseg model from a config, with mmengine's Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--trust-checkpoint] [--data-root DIR] [--amp]
                                 [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

    torchrun --nproc_per_node=8 tools/train.py CONFIG --launcher pytorch     # multi-GPU (or multi-process CPU)

Configs load dynnorm through ``custom_imports``; this script imports it as well, so plain mmdet/mmseg configs
with ``norm_cfg=dict(type='SN')`` work too. It also:

- generates the dataset the config asks for first, when it is missing (``synthetic_shapes = dict(root=...)``,
  ``fashion_scenes = dict(root=...)``: :mod:`tasks.generated_datasets`);
- loads checkpoints weights-only, mmengine's own checkpoint classes allowed, so ``--resume``/``load_from`` work
  under torch >= 2.6 without running code from the file; ``--trust-checkpoint`` (or ``trust_checkpoint = True``
  in the config) loads the resumed/``load_from`` checkpoint as a full pickle
  (:mod:`dynnorm.integrations.mm_checkpoint`);
- with ``--launcher pytorch`` and no CUDA, uses the gloo backend and CPU DDP
  (:mod:`dynnorm.integrations.mm_runtime`, whose functions a script of your own can call as well).

Offline, configs whose backbone starts from ``torchvision://``/``open-mmlab://`` weights need either the file in
torch's hub cache (``$TORCH_HOME/hub/checkpoints``), a local path
(``--cfg-options model.backbone.init_cfg.checkpoint=/path/resnet50.pth``), or training from scratch
(``--cfg-options model.backbone.init_cfg=None``; mmseg: ``model.pretrained=None``).
"""
from __future__ import annotations

import argparse
import os

from mmengine.config import Config

import dynnorm.integrations.mmengine  # noqa: F401  (registers layers, hooks, optimizer constructor)
from dynnorm.integrations.mm_checkpoint import install_checkpoint_loader, trusted_checkpoints
from dynnorm.integrations.mm_runtime import add_config_arguments, build_runner, config_from_args
from tasks.generated_datasets import ensure_config_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a detector or segmentor with mmengine's Runner")
    add_config_arguments(parser)
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                        help="resume from CKPT, or from the latest checkpoint of the work dir when CKPT is omitted")
    parser.add_argument("--amp", action="store_true", help="automatic mixed precision (AmpOptimWrapper)")
    parser.add_argument("--auto-scale-lr", action="store_true",
                        help="scale the learning rate by (total batch size / auto_scale_lr.base_batch_size)")
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> Config:
    """The config with the command line applied."""
    cfg = config_from_args(args)
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    if args.auto_scale_lr:
        if "base_batch_size" not in cfg.get("auto_scale_lr", {}):
            raise RuntimeError(f"--auto-scale-lr needs auto_scale_lr.base_batch_size in {args.config}")
        cfg.auto_scale_lr.enable = True
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))  # what mmengine's launchers read
    cfg = configure(args)
    install_checkpoint_loader(trusted_checkpoints(cfg))
    runner = build_runner(cfg)
    ensure_config_dataset(cfg, args.data_root)
    runner.train()


if __name__ == "__main__":
    main()
