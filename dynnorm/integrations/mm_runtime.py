"""Config adjustments shared by ``tools/train.py`` and ``tools/test.py`` (mmengine ``Config`` objects)."""
from __future__ import annotations

from collections.abc import MutableMapping, MutableSequence

import torch
import torch.distributed as dist

_PATH_KEYS = ("data_root", "ann_file")


def replace_data_root(cfg, data_root: str) -> int:
    """Point every dataset and evaluator of ``cfg`` at ``data_root`` instead of the config's ``data_root``.

    mmengine evaluates ``data_root + 'annotations/...'`` when the config is read, so changing ``data_root``
    afterwards (``--cfg-options data_root=...``) reaches nothing. This rewrites, everywhere in the config,
    the ``data_root`` and ``ann_file`` values equal to or starting with the old root. Returns the number of
    values changed; raises ``KeyError`` if the config has no top-level ``data_root``.
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


def adapt_distributed_to_cpu(cfg) -> bool:
    """Make ``--launcher pytorch`` (torchrun) work without CUDA: gloo process group and DDP without ``device_ids``.

    mmengine's pytorch launcher calls ``torch.cuda.set_device`` and the mmdet/mmseg runtimes ask for NCCL, while
    mmengine passes ``device_ids=[LOCAL_RANK]`` to DDP, which CPU modules reject. So, on a machine without CUDA,
    this initializes the default process group with gloo from torchrun's environment (the Runner then skips its
    own initialization) and configures the DDP wrapper for CPU modules. Does nothing (returns False) with CUDA,
    with another launcher or when not distributed.
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
