"""The batch-size study records each run's AssocNorm and DN layer diagnostics, tabulates and plots them, and reruns
the cells of a changed layer on request (``--rerun``)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("lightning")
pytest.importorskip("matplotlib")

from benchmarks import batch_size_study  # noqa: E402

pytestmark = [pytest.mark.lightning, pytest.mark.slow]


def test_study_records_layer_diagnostics_and_reruns_a_changed_layer(tmp_path):
    out = tmp_path / "out" / "study"
    args = ["--norms", "BN", "DN", "AssocNorm", "--batch1-norms", "--batch-sizes", "4", "--epochs", "1",
            "--num-train", "16", "--num-val", "8", "--image-size", "16", "--workers", "1",
            "--data-root", str(tmp_path / "data"), "--out", str(out)]
    batch_size_study.main(args)
    runs = {run["norm"]: run for run in json.loads(out.with_suffix(".json").read_text())["runs"]}
    assert "diagnostics" not in runs["BN"]
    assert list(runs["DN"]["diagnostics"]) == ["dn_mixture"]
    assert list(runs["AssocNorm"]["diagnostics"]) == ["assocnorm_saturation"]
    layers = runs["AssocNorm"]["diagnostics"]["assocnorm_saturation"]
    assert len(layers) == 9  # ResNet-8: the stem, two per residual block, two projection shortcuts
    assert all(set(shares) == {"dead_scale_embedding", "dead_shift_embedding", "saturated_scale", "saturated_shift"}
               and all(0 <= v <= 1 for v in shares.values()) for shares in layers.values())
    gates = runs["DN"]["diagnostics"]["dn_mixture"]
    assert len(gates) == 9 and all(0.9 < layer["mean"]["batch"] < 1 for layer in gates.values())  # near the BN start
    table = out.with_suffix(".md").read_text()
    assert "| normalizer | batch size | sigmoid (scale) saturated |" in table and "| AssocNorm | 4 | " in table
    assert "| normalizer | batch size | batch gate, mean |" in table and "| DN | 4 | 0.9" in table
    assert (out.parent / "study_diagnostics.png").stat().st_size > 10_000

    # --rerun: the recorded runs of a changed layer are trained again, the others kept.
    stored = json.loads(out.with_suffix(".json").read_text())
    for run in stored["runs"]:
        run["test_acc1"] = 0.5
    out.with_suffix(".json").write_text(json.dumps(stored))
    batch_size_study.main([*args, "--rerun", "AssocNorm"])
    accuracies = {run["norm"]: run["test_acc1"] for run in json.loads(out.with_suffix(".json").read_text())["runs"]}
    assert accuracies["BN"] == accuracies["DN"] == 0.5 and accuracies["AssocNorm"] != 0.5
