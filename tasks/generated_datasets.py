"""The datasets this repository generates on first use, and the mmengine config keys that ask for them.

A config asks for one with ``<key> = dict(root=..., **spec fields)``: ``synthetic_shapes``
(:class:`tasks.synthetic_shapes.ShapesSpec`) or ``fashion_scenes`` (:class:`tasks.fashion_scenes.ScenesSpec`,
made from the local Fashion-MNIST files). ``tools/train.py`` and ``tools/test.py`` call
:func:`ensure_config_dataset` once the Runner is built.
"""
from __future__ import annotations

from importlib import import_module

#: config key -> (module with ``ensure_dataset(root, spec)``, its spec class)
GENERATED_DATASETS = {
    "synthetic_shapes": ("tasks.synthetic_shapes", "ShapesSpec"),
    "fashion_scenes": ("tasks.fashion_scenes", "ScenesSpec"),
}


def ensure_config_dataset(cfg, data_root: str | None = None) -> None:
    """Generate the datasets ``cfg`` asks for (keys of :data:`GENERATED_DATASETS`) unless they are there, under
    ``data_root`` if given (``--data-root`` of ``tools/train.py`` and ``tools/test.py``), else under the ``root``
    of the key; a config without such a key is left alone. The main process generates, the others wait."""
    keys = [key for key in GENERATED_DATASETS if key in cfg]
    if not keys:
        return
    from mmengine.dist import barrier, get_rank

    if get_rank() == 0:
        for key in keys:
            module_name, spec_name = GENERATED_DATASETS[key]
            module = import_module(module_name)
            options = dict(cfg[key])
            root = options.pop("root")
            module.ensure_dataset(data_root or root, getattr(module, spec_name)(**options))
    barrier()
