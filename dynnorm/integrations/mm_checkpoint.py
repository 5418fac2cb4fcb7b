"""Loading mmengine checkpoints under torch >= 2.6.

torch 2.6 made ``torch.load(weights_only=True)`` the default, and mmengine 0.10.x calls ``torch.load`` without
the argument. A Runner checkpoint is a full pickle: next to the tensors it holds the ``message_hub`` (its
``HistoryBuffer`` objects pickle bound methods through ``getattr``), numpy scalars and arrays and the
schedulers' ``Counter``. The weights-only unpickler rejects them, so ``--resume`` and ``load_from`` fail with
``UnpicklingError: Weights only load failed``. Allow-listing ``getattr`` as a "safe global" would defeat the
point of weights-only loading, so the local-file loader is replaced instead by one that passes
``weights_only=False``, which is what mmengine itself does from 0.11 on. Only load checkpoints you trust:
a pickle can run code (the same holds for every checkpoint loaded by mmengine >= 0.11).
"""
from __future__ import annotations

import inspect
import os

import torch
from mmengine.runner.checkpoint import CheckpointLoader


def load_trusted_local_checkpoint(filename: str, map_location=None) -> dict:
    """mmengine's local-file loader, with ``weights_only=False`` (the file is a full pickle)."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    return torch.load(filename, map_location=map_location, weights_only=False)


def _torch_defaults_to_weights_only() -> bool:
    parameter = inspect.signature(torch.load).parameters.get("weights_only")
    if parameter is None:
        return False
    if parameter.default is None:  # torch >= 2.6 resolves None to True unless the environment says otherwise
        return os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0") in ("0", "")
    return bool(parameter.default)


def _mmengine_loader_passes_weights_only() -> bool:
    from mmengine.runner.checkpoint import load_from_local

    return "weights_only" in inspect.getsource(load_from_local)


def register_checkpoint_loader() -> bool:
    """Register :func:`load_trusted_local_checkpoint` for local paths (the ``''`` scheme) when needed.

    Needed when torch loads weights-only by default and mmengine's own local loader does not say otherwise.
    Idempotent. Returns whether the dynnorm loader is the local loader afterwards.
    """
    current = CheckpointLoader._get_checkpoint_loader("")
    if current is load_trusted_local_checkpoint:
        return True
    if not _torch_defaults_to_weights_only() or _mmengine_loader_passes_weights_only():
        return False
    CheckpointLoader.register_scheme(prefixes="", loader=load_trusted_local_checkpoint, force=True)
    return True
