"""A checkpoint policy for mmengine runs: local checkpoints load weights-only, so no code from a checkpoint runs
unless it is declared trusted (what the repository's ``tools/train.py`` and ``tools/test.py`` use).

mmengine 0.10.7 loads local files with a bare ``torch.load``, which under torch >= 2.6 means
``weights_only=True`` and refuses the Runner's own checkpoints: next to tensors, ``Counter`` and ``OrderedDict``
(which torch allows) they hold the message hub's ``HistoryBuffer`` objects, whose pickles name their statistics
methods through ``getattr``, and numpy arrays and scalars. The loader of :func:`checkpoint_loader` stays
weights-only and allows exactly these (:data:`RUNNER_CHECKPOINT_GLOBALS`, with a ``getattr`` that answers only
``HistoryBuffer.min/max/current/mean``), so ``--resume`` and ``load_from`` work on mmengine checkpoints
without trusting them. A file that needs anything else is refused with :class:`UntrustedCheckpointError`, unless
it is one of the trusted paths: those load with ``weights_only=False``, which runs whatever their pickle says.

:func:`install_checkpoint_loader` makes the loader mmengine's, for local paths, in the calling process only;
importing ``dynnorm.integrations.mmengine`` (or this module) changes nothing about checkpoint loading. In a
training script of your own::

    from dynnorm.integrations.mm_checkpoint import install_checkpoint_loader, trusted_checkpoints

    cfg = Config.fromfile('my_config.py')      # or dynnorm.integrations.mm_runtime.load_config(...)
    install_checkpoint_loader(trusted_checkpoints(cfg))   # before the Runner loads anything
    Runner.from_cfg(cfg).train()

A checkpoint can also be read directly, with the same policy::

    checkpoint = load_weights_only('work_dirs/my_run/iter_1000.pth', map_location='cpu')
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader, find_latest_checkpoint

__all__ = ["RUNNER_CHECKPOINT_GLOBALS", "UntrustedCheckpointError", "checkpoint_loader", "install_checkpoint_loader",
           "load_weights_only", "trusted_checkpoints"]

TRUST_HINT = ("if you trust the file, pass --trust-checkpoint to tools/train.py or tools/test.py, or set "
              "trust_checkpoint = True in the config (in your own script: install_checkpoint_loader(trusted=[path]))")

# HistoryBuffer pickles its registry of statistics methods; these are the ones it registers itself.
_HISTORY_BUFFER_STATISTICS = ("min", "max", "current", "mean")


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint that would run code when loaded, and that nobody declared trusted."""


def _history_buffer_statistic(owner: Any, name: str) -> Callable:
    """Stands in for ``builtins.getattr`` while unpickling: resolves only ``HistoryBuffer.<statistics method>``.

    Pickle protocol 2 (``torch.save``'s) writes a nested name such as ``HistoryBuffer.mean`` as
    ``getattr(HistoryBuffer, 'mean')``. Allowing ``getattr`` itself would hand the pickle every attribute of
    every allowed object (a builtin function's ``__self__`` is the ``builtins`` module), so this function
    answers the four lookups a HistoryBuffer needs and refuses the rest.
    """
    if owner is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"getattr({owner!r}, {name!r}) is not an attribute lookup mmengine checkpoints make")


def _numpy_globals() -> list:
    """numpy's array and scalar reconstructors and dtype classes, under the module names numpy pickles them with.

    numpy 2 writes ``numpy._core.multiarray``, numpy 1 ``numpy.core.multiarray``; both name the same functions.
    """
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtype_classes = [cls for cls in vars(np.dtypes).values() if isinstance(cls, type) and issubclass(cls, np.dtype)]
    globals_ = [np.ndarray, np.dtype, *dtype_classes]
    for function in (multiarray._reconstruct, multiarray.scalar):
        globals_ += [(function, f"{module}.multiarray.{function.__name__}") for module in ("numpy.core", "numpy._core")]
    return globals_


RUNNER_CHECKPOINT_GLOBALS: list = [HistoryBuffer, (_history_buffer_statistic, "builtins.getattr"), *_numpy_globals()]
"""What mmengine's Runner writes into a checkpoint beyond what torch's weights-only unpickler allows already
(tensors, plain containers, ``OrderedDict``, ``Counter``), as ``torch.serialization.safe_globals`` takes it."""


def _resolve(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def _refusal(message: str) -> str:
    """What torch's weights-only unpickler refused, out of its error message (a page that also suggests fixes)."""
    _, _, detail = message.partition("WeightsUnpickler error:")
    return (detail or message).strip().splitlines()[0].split(" Please use ")[0]


def load_weights_only(filename: str | os.PathLike, map_location=None) -> Any:
    """``torch.load`` of a local file, weights-only, with mmengine's checkpoint classes allowed.

    Raises :class:`UntrustedCheckpointError`, naming the file, what was refused and how to trust it, when the
    file needs other globals.

    Examples::

        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), 'weights.pth')
        >>> torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'seed': np.int64(7)}}, path)
        >>> int(load_weights_only(path)['meta']['seed'])
        7
    """
    with torch.serialization.safe_globals(RUNNER_CHECKPOINT_GLOBALS):
        try:
            return torch.load(filename, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            raise UntrustedCheckpointError(
                f"refused to load {os.fspath(filename)!r}: its pickle holds more than tensors and the values "
                f"mmengine writes into checkpoints, so loading it could run code from the file "
                f"({_refusal(str(error))}); {TRUST_HINT}") from error


def checkpoint_loader(trusted: Iterable[str | os.PathLike] = ()) -> Callable:
    """A loader for mmengine's ``CheckpointLoader`` (local paths): weights-only, except for the ``trusted`` files.

    Each trusted path, compared after resolving ``~`` and links, loads with ``weights_only=False``.
    """
    trusted_paths = frozenset(_resolve(path) for path in trusted)

    def load_from_local(filename: str, map_location=None) -> Any:  # named as mmengine's: it logs "local backend"
        path = os.path.expanduser(filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{filename} can not be found.")
        if os.path.realpath(path) in trusted_paths:
            return torch.load(path, map_location=map_location, weights_only=False)
        return load_weights_only(path, map_location=map_location)

    return load_from_local


def trusted_checkpoints(cfg) -> list[str]:
    """The checkpoint a run loads, when its config says ``trust_checkpoint = True``; otherwise none.

    That is ``load_from`` (``--resume CKPT`` and tools/test.py's CHECKPOINT set it) or, for ``--resume`` alone,
    the latest checkpoint of the work dir. Raises ``TypeError`` if ``trust_checkpoint`` is not a bool.

    Examples::

        >>> from mmengine.config import Config
        >>> trusted_checkpoints(Config(dict(load_from='a.pth')))
        []
        >>> trusted_checkpoints(Config(dict(load_from='a.pth', trust_checkpoint=True)))
        ['a.pth']
    """
    trust = cfg.get("trust_checkpoint", False)
    if not isinstance(trust, bool):
        raise TypeError(f"trust_checkpoint must be True or False, got {trust!r}")
    if not trust:
        return []
    if cfg.get("load_from"):
        return [cfg.load_from]
    latest = find_latest_checkpoint(cfg.work_dir) if cfg.get("resume") else None
    return [latest] if latest else []


def install_checkpoint_loader(trusted: Iterable[str | os.PathLike] = ()) -> Callable:
    """Make :func:`checkpoint_loader` (``trusted``) mmengine's loader for local paths in this process; return it.

    Call it before the Runner loads a checkpoint (``load_from``, ``resume``); it replaces the loader mmengine
    registered for paths without a scheme (``CheckpointLoader.register_scheme(prefixes='', force=True)``), so
    ``http://`` and other schemes keep their loaders.
    """
    loader = checkpoint_loader(trusted)
    CheckpointLoader.register_scheme(prefixes="", loader=loader, force=True)
    return loader
