"""Where the benchmarks write their results, how they record the command that produced them, and writing result
files so that an interrupted tool never leaves a half-written one behind."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def command_line(tool_file: str | os.PathLike, argv: Sequence[str]) -> str:
    """How to rerun a benchmark from the repository root: ``python -m benchmarks.<module> <argv>``."""
    return " ".join(["python -m", f"{__package__}.{Path(tool_file).stem}", *argv])


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it, renamed over ``path`` (atomic on POSIX);
    creates the parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
