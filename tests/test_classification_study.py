"""The batch-size study script: a miniature study trains, writes its JSON, table and plot, and resumes from its JSON."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("lightning")
pytest.importorskip("matplotlib")

from benchmarks import batch_size_study  # noqa: E402

pytestmark = [pytest.mark.lightning, pytest.mark.slow]


def test_miniature_study_writes_results_and_resumes(tmp_path):
    out = tmp_path / "out" / "study"
    args = ["--norms", "BN", "SN", "--batch-sizes", "1", "4", "--epochs", "1", "--num-train", "16", "--num-val", "8",
            "--image-size", "16", "--width", "8", "--workers", "1", "--data-root", str(tmp_path / "data"),
            "--out", str(out)]
    batch_size_study.main(args)
    summary = json.loads(out.with_suffix(".json").read_text())
    runs = sorted(summary["runs"], key=batch_size_study.run_key)
    assert [(r["norm"], r["batch_size"], r["seed"], r["lr"]) for r in runs] == [
        ("BN", 1, 0, 0.1 / 32), ("BN", 4, 0, 0.1 * 4 / 32), ("SN", 1, 0, 0.1 / 32), ("SN", 4, 0, 0.1 * 4 / 32),
        ("SN_noBN", 1, 0, 0.1 / 32)]  # SN without its BN term: batch size 1 only
    assert [r["steps"] for r in runs] == [16, 4, 16, 4, 16]  # same epochs: steps scale with 1 / batch size
    assert all(r["dataset"] == "shapes" and 0 <= r["test_acc1"] <= 1 and r["seconds_per_step"] > 0 for r in runs)
    assert summary["command"].startswith("python -m benchmarks.batch_size_study --norms BN SN")
    table = out.with_suffix(".md").read_text()
    assert "| normalizer | bs 1 | bs 4 |" in table and "| SN (no BN) |" in table
    assert out.with_suffix(".png").stat().st_size > 10_000

    # A second invocation reads the finished runs from the JSON instead of training again.
    edited = next(r for r in summary["runs"] if r["norm"] == "SN" and r["batch_size"] == 4)
    edited["test_acc1"] = 0.987
    out.with_suffix(".json").write_text(json.dumps(summary))
    batch_size_study.main(args)
    assert json.loads(out.with_suffix(".json").read_text())["runs"] == summary["runs"]
    sn_row = next(line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("| SN |"))
    assert sn_row.endswith("| **98.7** |")
