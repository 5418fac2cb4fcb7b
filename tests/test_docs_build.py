"""The documentation site builds without a warning (``sphinx -W``), its examples run (the doctest builder), and
its API reference has an entry for every public name of the package and the integrations."""
from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("furo")
pytest.importorskip("myst_parser")

import dynnorm  # noqa: E402

pytestmark = pytest.mark.slow  # two builds: about a minute on 2 cores

ROOT = Path(__file__).resolve().parent.parent
INTEGRATIONS = ["mm_checkpoint", "mm_errors", "mm_hooks", "mm_optim", "mm_runtime", "mmengine", "lightning"]


def public_names(module) -> list[str]:
    """``module.__all__``, or the classes and functions it defines under public names."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [name for name, obj in vars(module).items() if not name.startswith("_")
            and (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == module.__name__]


def sphinx(builder: str, out: Path, doctrees: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder, "-d", str(doctrees),
               "docs", str(out / builder)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    html = sphinx("html", out, out / "doctrees")
    assert html.returncode == 0, html.stdout[-4000:] + html.stderr[-4000:]
    return out


def test_the_site_builds_without_warnings_and_its_examples_run(built):
    doctest = sphinx("doctest", built, built / "doctrees")
    assert doctest.returncode == 0, doctest.stdout[-4000:] + doctest.stderr[-4000:]
    summary = (built / "doctest" / "output.txt").read_text()
    assert " 0 failures in tests" in summary and " 0 tests" not in summary


def test_every_public_name_has_an_api_entry(built):
    api = (built / "html" / "api" / "dynnorm.html").read_text()
    missing = [name for name in dynnorm.__all__ if f'id="dynnorm.{name}"' not in api]
    assert not missing, f"no API entry for {missing} (a public name without a docstring?)"
    integrations = (built / "html" / "api" / "integrations.html").read_text()
    for module in INTEGRATIONS:
        try:
            names = public_names(importlib.import_module(f"dynnorm.integrations.{module}"))
        except ImportError:  # an optional integration that is not installed
            continue
        if module == "mmengine":  # the plugin re-exports the hooks and the constructor documented with their modules
            names = ["registered_names", "register_all_modules"]
        missing = [name for name in names if f'id="dynnorm.integrations.{module}.{name}"' not in integrations]
        assert not missing, f"no API entry for {module}.{missing}"
