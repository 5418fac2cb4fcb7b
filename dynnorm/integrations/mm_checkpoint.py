"""Loading mmengine checkpoints under torch >= 2.6.

torch 2.6 made ``torch.load(weights_only=True)`` the default, and mmengine 0.10.x calls ``torch.load`` without
the argument. A Runner checkpoint is a full pickle: next to the tensors it holds the ``message_hub`` (its
``HistoryBuffer`` objects pickle bound methods through ``getattr``), numpy scalars and arrays and the
schedulers' ``Counter``. The weights-only unpickler rejects them, so ``--resume`` and ``load_from`` fail with
``UnpicklingError: Weights only load failed``. Allow-listing ``getattr`` as a "safe global" would defeat the
point of weights-only loading, so the local-file loader is replaced instead by one that passes
``weights_only=False``: what mmengine 0.10 did under torch < 2.6, and what mmengine does again from 0.11 on.
Only load checkpoints you trust: a pickle can run code.
"""
from __future__ import annotations

import os

import torch
from mmengine.runner.checkpoint import CheckpointLoader


def load_from_local_trusted(filename: str, map_location=None) -> dict:
    """mmengine's local-file loader with ``weights_only=False`` (the name gives mmengine's log "local_trusted")."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    return torch.load(filename, map_location=map_location, weights_only=False)


def register_checkpoint_loader() -> None:
    """Make :func:`load_from_local_trusted` mmengine's loader for local paths (the ``''`` scheme). Idempotent."""
    if CheckpointLoader._get_checkpoint_loader("") is not load_from_local_trusted:
        CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_trusted, force=True)
