"""Where the benchmarks write their results, how they record the command that produced them, writing result
files so that an interrupted tool never leaves a half-written one behind, and the resumable record of a study."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Sequence
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


class ResultStore:
    """A study's JSON: its settings, a header (the latest command, ...) and every finished run, rewritten atomically
    each time a run is added, so that an interrupted study resumes from it.

    Reopening a JSON of other settings raises ``SystemExit`` naming the settings that differ. Runs are dicts with
    a ``seconds`` entry (their sum is recorded); ``key`` tells which runs are the same (:meth:`recorded`).
    """

    def __init__(self, path: Path, settings: dict, header: dict, key: Callable[[dict], Hashable]) -> None:
        self.path, self.settings, self.header, self.key = path, settings, header, key
        self.runs: list[dict] = []
        if path.is_file():
            stored = json.loads(path.read_text())
            stored_settings = stored.get("settings") or {}
            if stored_settings != self.settings:
                different = sorted(k for k in self.settings if stored_settings.get(k) != self.settings[k])
                raise SystemExit(f"{path} holds runs of other settings (differing: {', '.join(different)}); "
                                 "pass another --out, or delete the file to start over")
            self.runs = stored["runs"]

    def recorded(self) -> set:
        return {self.key(run) for run in self.runs}

    def add(self, run: dict) -> None:
        self.runs.append(run)
        self.write()

    def write(self) -> None:
        summary = {**self.header, "settings": self.settings,
                   "run_seconds_total": round(sum(r["seconds"] for r in self.runs), 1), "runs": self.runs}
        write_atomically(self.path, json.dumps(summary, indent=1) + "\n")
