"""tools/benchmark.py runs end to end on a tiny shape and writes its JSON and Markdown."""
import json

import torch

from tools import benchmark


def test_benchmark_writes_every_layer_and_the_floor_in_eval_only(tmp_path):
    stem = tmp_path / "bench"
    benchmark.main([
        "--shapes", "2,32,16,16", "--repeats", "2", "--warmup", "1", "--threads", "1", "--default-malloc", "--out", str(stem),
    ])  # --default-malloc: leave the test process's allocator as it is
    records = json.loads(stem.with_suffix(".json").read_text())["records"]
    for mode in benchmark.MODES:
        timed = {r["layer"] for r in records if r["mode"] == mode and r["impl"] == "fast"}
        expected = set(benchmark.layer_factories())
        if mode != "eval fwd":
            expected.discard(benchmark.PER_SAMPLE_FLOOR)
        assert timed == expected, mode
    assert all(r["median_ms"] > 0 for r in records)
    bn = [r for r in records if r["layer"] == "BN" and r["impl"] == "fast"]
    assert all(abs(r["ratio_bn"] - 1) < 1e-12 for r in bn)
    memory = {r["layer"]: r["saved_over_input"] for r in records if "saved_over_input" in r}
    assert memory["SN"] < 1.2 < memory["SN (published)"]
    assert "| per-sample floor | fast |" in stem.with_suffix(".md").read_text()


def test_per_sample_floor_subtracts_each_planes_mean():
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64).float()
    expected = (x.double() - x.double().mean((2, 3), keepdim=True)).float()
    torch.testing.assert_close(benchmark.PerSampleFloor(8)(x), expected)
