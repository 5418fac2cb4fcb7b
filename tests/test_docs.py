"""The documentation the package promises: every public class has an ``Examples::`` section whose examples
run (doctest), and every layer family says in a ``.. note::`` what is confirmed from its paper and what is
this implementation's choice."""
from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest
import torch
from torch import nn

import dynnorm

MODULES = [importlib.import_module(f"dynnorm.{m.name}") for m in pkgutil.iter_modules(dynnorm.__path__)
           if not m.name.startswith("_") and m.name not in ("integrations", "kernels")]
PUBLIC_CLASSES = sorted({obj for name in dynnorm.__all__ if inspect.isclass(obj := getattr(dynnorm, name))},
                        key=lambda cls: cls.__name__)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, extraglobs={"torch": torch, "nn": nn, "dynnorm": dynnorm}, optionflags=flags)
    assert result.failed == 0


@pytest.mark.parametrize("cls", PUBLIC_CLASSES, ids=lambda c: c.__name__)
def test_every_public_class_has_examples(cls):
    assert "Examples::" in (cls.__doc__ or ""), cls


@pytest.mark.parametrize("cls", [c for c in PUBLIC_CLASSES if issubclass(c, dynnorm._base.DynNormBase)],
                         ids=lambda c: c.__name__)
def test_every_layer_family_states_its_provenance(cls):
    family = next(c for c in cls.__mro__ if ".. note::" in (c.__dict__.get("__doc__") or ""))
    note = family.__doc__.split(".. note::", 1)[1]
    assert "Confirmed" in note and ("Choice" in note or "Interpretation" in note or "reconstruction" in note), family


@pytest.mark.parametrize("module_name", ["dynnorm.integrations.lightning", "dynnorm.integrations.mm_hooks",
                                         "dynnorm.integrations.mm_optim"])
def test_every_integration_class_has_examples(module_name):
    module = pytest.importorskip(module_name)
    classes = [obj for name, obj in vars(module).items()
               if inspect.isclass(obj) and obj.__module__ == module_name and not name.startswith("_")]
    assert classes and all("Examples::" in (cls.__doc__ or "") for cls in classes), classes
