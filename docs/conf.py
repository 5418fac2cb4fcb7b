"""Sphinx configuration of the dynnorm documentation.

Build (from the repository root, with the ``docs`` extra installed by ``tools/setup_env.sh``)::

    .venv/bin/python -m sphinx -W -b html docs docs/_build/html      # the site
    .venv/bin/python -m sphinx -W -b doctest docs docs/_build/doctest  # run the pages' examples
"""
from __future__ import annotations

import doctest

import dynnorm

project = "dynnorm"
author = "the dynnorm developers"
copyright = "the dynnorm developers, Apache-2.0"
release = version = dynnorm.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "benchmarks.sphinx_tables",  # tables read from benchmarks/results (importable through the editable install)
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# Markdown pages: $...$ and $$...$$ math, ::: fences for directives, anchors for the ## headings.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Google-style docstrings (Args:, Shape:, Returns:, Examples::), documented in the order of the source.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = ["Shape"]  # a titled section that keeps its bullet list
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autosummary_generate = False

# The examples of the pages run under `sphinx -b doctest` with these names imported.
doctest_global_setup = """
import torch
from torch import nn
import dynnorm
torch.manual_seed(0)
"""
doctest_default_flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

intersphinx_mapping = {}  # offline builds: no inventories are fetched
nitpicky = False

html_theme = "furo"
html_title = f"dynnorm {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {"source_repository": "", "navigation_with_keys": True}
pygments_style = "friendly"
