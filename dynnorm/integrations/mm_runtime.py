"""Running an mmengine config from your own script: the config adjustments of the repository's ``tools/train.py``
and ``tools/test.py``, as functions.

- :func:`load_config` reads a config and applies what a command line overrides (``--cfg-options``,
  ``--data-root``, ``--work-dir``, ``--launcher``, ``--trust-checkpoint``);
- :func:`replace_data_root` points every dataset and evaluator of a config at another dataset folder;
- :func:`adapt_distributed_to_cpu` makes ``--launcher pytorch`` (torchrun) work on machines without CUDA;
- :func:`build_runner` builds the config's Runner;
- :func:`add_config_arguments` and :func:`config_from_args`: the command line that ``tools/train.py`` and
  ``tools/test.py`` share, for an ``argparse`` script of your own.

A training script of your own, with the weights-only checkpoint policy of
:mod:`dynnorm.integrations.mm_checkpoint`::

    import dynnorm.integrations.mmengine  # registers the layers, hooks and optimizer constructor
    from dynnorm.integrations.mm_checkpoint import install_checkpoint_loader, trusted_checkpoints
    from dynnorm.integrations.mm_runtime import build_runner, load_config

    cfg = load_config('configs/mmdet/mask-rcnn_r50_fpn_sn-all_2x_coco.py', data_root='/datasets/coco',
                      cfg_options={'train_cfg.max_epochs': 12})
    install_checkpoint_loader(trusted_checkpoints(cfg))
    build_runner(cfg).train()

Needs mmengine; importing this module registers nothing and changes nothing.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, MutableMapping, MutableSequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

__all__ = ["add_config_arguments", "adapt_distributed_to_cpu", "build_runner", "config_from_args", "load_config",
           "replace_data_root"]

_PATH_KEYS = ("data_root", "ann_file")


def replace_data_root(cfg: Config, data_root: str) -> int:
    """Point every dataset and evaluator of ``cfg`` at ``data_root`` instead of the config's ``data_root``.

    mmengine evaluates ``data_root + 'annotations/...'`` when the config is read, so changing ``data_root``
    afterwards (``--cfg-options data_root=...``) reaches nothing. This rewrites, everywhere in the config,
    the ``data_root`` and ``ann_file`` values equal to or starting with the old root.

    Args:
        cfg: an mmengine ``Config`` with a top-level ``data_root``; changed in place.
        data_root: the new dataset folder (a trailing ``/`` is added where the old root had one).

    Returns:
        The number of values changed. Raises ``KeyError`` if the config has no top-level ``data_root``.

    Examples::

        >>> cfg = Config(dict(data_root='data/coco/', val_evaluator=dict(
        ...     ann_file='data/coco/annotations/instances_val2017.json')))
        >>> replace_data_root(cfg, '/datasets/coco')
        2
        >>> cfg.val_evaluator.ann_file
        '/datasets/coco/annotations/instances_val2017.json'
    """
    old = cfg.get("data_root")
    if not old:
        raise KeyError("the config has no top-level data_root to replace")
    new = data_root if data_root.endswith("/") or not old.endswith("/") else data_root + "/"
    changed = 0

    def visit(node) -> None:
        nonlocal changed
        if isinstance(node, MutableMapping):
            for key, value in node.items():
                if key in _PATH_KEYS and isinstance(value, str) and value.startswith(old):
                    node[key] = new + value[len(old):]
                    changed += 1
                else:
                    visit(value)
        elif isinstance(node, MutableSequence):
            for item in node:
                visit(item)

    visit(cfg._cfg_dict)
    return changed


def adapt_distributed_to_cpu(cfg: Config) -> bool:
    """Make ``--launcher pytorch`` (torchrun) work without CUDA: gloo process group and DDP without ``device_ids``.

    mmengine's pytorch launcher calls ``torch.cuda.set_device`` and the mmdet/mmseg runtimes ask for NCCL, while
    mmengine passes ``device_ids=[LOCAL_RANK]`` to DDP, which CPU modules reject. So, on a machine without CUDA,
    this initializes the default process group with gloo from torchrun's environment (the Runner then skips its
    own initialization) and configures the DDP wrapper for CPU modules.

    Args:
        cfg: the config, with ``launcher`` set; changed in place.

    Returns:
        Whether it changed anything: ``False`` with CUDA, with another launcher or when not distributed.

    Examples::

        >>> adapt_distributed_to_cpu(Config(dict(launcher='none')))
        False
    """
    if cfg.get("launcher", "none") != "pytorch" or torch.cuda.is_available():
        return False
    cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    wrapper = cfg.get("model_wrapper_cfg") or {"type": "MMDistributedDataParallel"}
    wrapper.setdefault("broadcast_buffers", False)
    wrapper.setdefault("find_unused_parameters", cfg.get("find_unused_parameters", False))
    wrapper["device_ids"] = None
    cfg.model_wrapper_cfg = wrapper
    return True


def load_config(filename: str | os.PathLike, *, cfg_options: Mapping[str, Any] | None = None,
                data_root: str | None = None, work_dir: str | os.PathLike | None = None, launcher: str = "none",
                trust_checkpoint: bool = False) -> Config:
    """Read a config and apply the overrides of a command line, in the order ``tools/train.py`` applies them.

    Args:
        filename: the config file.
        cfg_options: ``{'dotted.key': value}`` merged into the config (``--cfg-options``). Default: None
        data_root: dataset folder replacing the config's ``data_root`` everywhere (:func:`replace_data_root`).
            Default: None
        work_dir: folder for logs and checkpoints. Default: the config's ``work_dir``, else
            ``work_dirs/<config file name without suffix>``
        launcher: ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``; with ``'pytorch'`` and no CUDA the
            config is adapted to CPU processes (:func:`adapt_distributed_to_cpu`). Default: ``'none'``
        trust_checkpoint: set ``trust_checkpoint = True`` in the config, which
            :func:`~dynnorm.integrations.mm_checkpoint.trusted_checkpoints` reads. Default: False

    Returns:
        The config, ready for :func:`build_runner`.

    Examples::

        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / 'tiny.py').write_text("data_root = 'data/x/'\\ntrain_cfg = dict(max_iters=1000)\\n")
        >>> cfg = load_config(folder / 'tiny.py', cfg_options={'train_cfg.max_iters': 10}, data_root='/data/x')
        >>> cfg.train_cfg.max_iters, cfg.data_root, cfg.work_dir
        (10, '/data/x/', 'work_dirs/tiny')
    """
    cfg = Config.fromfile(os.fspath(filename))
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    if data_root:
        replace_data_root(cfg, data_root)
    if trust_checkpoint:
        cfg.trust_checkpoint = True
    if work_dir is not None:
        cfg.work_dir = os.fspath(work_dir)
    elif cfg.get("work_dir") is None:
        cfg.work_dir = os.path.join("work_dirs", Path(filename).stem)
    adapt_distributed_to_cpu(cfg)
    return cfg


def build_runner(cfg: Config) -> Runner:
    """The config's Runner: its ``runner_type`` from the ``RUNNERS`` registry if it names one, else mmengine's
    :class:`~mmengine.runner.Runner`."""
    return RUNNERS.build(cfg) if "runner_type" in cfg else Runner.from_cfg(cfg)


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options that :func:`config_from_args` reads: ``config`` (positional), ``--work-dir``,
    ``--trust-checkpoint``, ``--data-root``, ``--cfg-options``, ``--launcher`` and the ``--local-rank`` that
    ``torch.distributed.launch`` passes (hidden; ``LOCAL_RANK`` is what mmengine's launchers read).

    Returns:
        ``parser``, for chaining.

    Examples::

        >>> parser = add_config_arguments(argparse.ArgumentParser())
        >>> args = parser.parse_args(['my_config.py', '--cfg-options', 'train_cfg.max_iters=10'])
        >>> args.config, args.cfg_options, args.launcher
        ('my_config.py', {'train_cfg.max_iters': 10}, 'none')
    """
    parser.add_argument("config", help="config file (mmdet or mmseg)")
    parser.add_argument("--work-dir", help="folder for logs and checkpoints (default: work_dirs/<config name>)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load the checkpoint (resumed, load_from or tested) with weights_only=False, which "
                             "runs code from its pickle: only for files you trust (config key: "
                             "trust_checkpoint = True)")
    parser.add_argument("--data-root", help="dataset folder replacing the config's data_root everywhere")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                        help="override config entries, e.g. train_cfg.max_iters=100 "
                             "(lists as key=\"[a,b]\", no white space)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher (pytorch: torchrun)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """:func:`load_config` with the options of :func:`add_config_arguments`."""
    return load_config(args.config, cfg_options=args.cfg_options, data_root=args.data_root, work_dir=args.work_dir,
                       launcher=args.launcher, trust_checkpoint=args.trust_checkpoint)
