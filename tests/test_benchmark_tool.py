"""benchmarks/benchmark.py runs end to end on a tiny shape and writes its JSON and Markdown."""
import json
import math

import torch

from benchmarks import benchmark


def test_benchmark_writes_every_layer_and_the_floor_in_eval_only(tmp_path, keep_threads):
    stem = tmp_path / "bench"
    benchmark.main([
        "--shapes", "2,32,16,16", "--small-shapes", "2,32,6,6", "--repeats", "2", "--small-repeats", "3",
        "--warmup", "1", "--default-malloc", "--out", str(stem),
    ])  # --default-malloc: leave the test process's allocator as it is
    records = json.loads(stem.with_suffix(".json").read_text())["records"]
    for shape in ([2, 32, 16, 16], [2, 32, 6, 6]):
        for mode in benchmark.MODES:
            timed = {r["layer"] for r in records if r["shape"] == shape and r["mode"] == mode and r["impl"] == "fast"}
            expected = set(benchmark.layer_factories())
            if mode != "eval fwd":
                expected.discard(benchmark.PER_SAMPLE_FLOOR)
            assert timed == expected, (shape, mode)
    assert all(r["median_ms"] > 0 and 0 < r["ratio_bn"] < math.inf for r in records)
    bn = [r for r in records if r["layer"] == "BN" and r["impl"] == "fast"]
    assert all(abs(r["ratio_bn"] - 1) < 1e-12 for r in bn)
    memory = {r["layer"]: r["saved_over_input"] for r in records if "saved_over_input" in r}
    assert memory["SN"] < 1.2 < memory["SN (published)"]
    small_train = [r for r in records if r["small_batch"] and r["mode"] == "train fwd+bwd"]
    assert small_train and all(r["aten_ops"] > 0 and r["dynnorm_ops"] >= 0 for r in small_train)
    assert not any("aten_ops" in r for r in records if not r["small_batch"] or r["mode"] != "train fwd+bwd")
    published = next(r for r in small_train if r["layer"] == "SN (published)")
    assert published["dynnorm_ops"] == 0 and published["aten_ops"] > 50  # dozens of PyTorch ops, none of ours
    text = stem.with_suffix(".md").read_text()
    assert "| per-sample floor | fast |" in text
    assert "### cpu float32, small batch 2×32×6×6" in text
    assert "| layer | implementation | 2×32×16×16 |" in text  # the small shape stays out of the large tables


def test_per_sample_floor_subtracts_each_planes_mean():
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64).float()
    expected = (x.double() - x.double().mean((2, 3), keepdim=True)).float()
    torch.testing.assert_close(benchmark.PerSampleFloor(8)(x), expected)
