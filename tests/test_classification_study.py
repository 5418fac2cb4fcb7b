"""The batch-size study script: a miniature study writes its table, JSON and plot, and resumes from its cache."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("lightning")
pytest.importorskip("matplotlib")

from tools import batch_size_study  # noqa: E402

pytestmark = [pytest.mark.lightning, pytest.mark.slow]


def test_miniature_study_writes_results_and_resumes(tmp_path):
    args = ["--norms", "BN", "SN", "--batch-sizes", "2", "4", "--epochs", "1", "--num-train", "16", "--num-val", "8",
            "--image-size", "16", "--width", "8", "--workers", "1", "--data-root", str(tmp_path / "data"),
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out" / "study")]
    batch_size_study.main(args)
    summary = json.loads((tmp_path / "out" / "study.json").read_text())
    assert [(r["norm"], r["batch_size"], r["lr"]) for r in summary["runs"]] == [
        ("BN", 2, 0.1 * 2 / 32), ("BN", 4, 0.1 * 4 / 32), ("SN", 2, 0.1 * 2 / 32), ("SN", 4, 0.1 * 4 / 32)]
    assert [r["steps"] for r in summary["runs"]] == [8, 4, 8, 4]  # same epochs: steps scale with 1 / batch size
    assert summary["command"].startswith("python tools/batch_size_study.py --norms BN SN")
    table = (tmp_path / "out" / "study.md").read_text()
    assert "| normalizer | bs 2 | bs 4 |" in table and "| SN |" in table
    assert (tmp_path / "out" / "study.png").stat().st_size > 10_000

    # A second invocation reads finished runs from the cache instead of training again.
    cached = tmp_path / "cache" / "SN_bs4.json"
    entry = json.loads(cached.read_text())
    entry["result"]["val_acc1"] = 0.987
    cached.write_text(json.dumps(entry))
    batch_size_study.main(args)
    rerun = json.loads((tmp_path / "out" / "study.json").read_text())["runs"]
    assert rerun[3]["val_acc1"] == 0.987 and rerun[:3] == summary["runs"][:3]
