"""Build of dynnorm's C++ operators (``dynnorm/csrc``); the package metadata is in setup.cfg.

The operators are compiled against the installed torch, so build without isolation:
``pip install --no-build-isolation -e .``. Without torch at build time (or with ``DYNNORM_BUILD_EXTENSION=0``)
the package installs without them and runs its reference PyTorch ops everywhere.
"""
import os
import sys

from setuptools import setup


def extension_options() -> dict:
    if os.environ.get("DYNNORM_BUILD_EXTENSION", "1") == "0":
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("dynnorm: torch is not importable at build time; installing without the C++ operators "
              "(use pip install --no-build-isolation)", file=sys.stderr)
        return {}
    headers = [os.path.join("dynnorm", "csrc", name) for name in ("layers.h", "passes.h", "small_math.h")]
    extension = CppExtension(
        "dynnorm._C",
        [os.path.join("dynnorm", "csrc", name) for name in ("ops.cpp", "autograd.cpp")],
        depends=headers,
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension}}


setup(**extension_options())
