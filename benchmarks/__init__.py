"""Benchmarks and studies of the dynnorm layers (repository-level, not installed with the package).

Each module is a command-line tool that writes JSON and Markdown (and, for the studies, plots) into
``benchmarks/results/``. Run them from the repository root as modules or as scripts::

    .venv/bin/python -m benchmarks.benchmark --threads 1      # or: .venv/bin/python benchmarks/benchmark.py
    .venv/bin/python -m benchmarks.norm_cost

The repository root is importable through the editable install (``tools/setup_env.sh``), so ``benchmarks``
and ``tasks`` import from anywhere in the project's virtual environment.
"""
