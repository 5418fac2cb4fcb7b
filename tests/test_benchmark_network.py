"""benchmarks/benchmark_network.py runs end to end on a tiny configuration and writes its JSON and Markdown."""
import json
import math

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("lightning")  # tasks.classification, where the networks are defined, imports it

from benchmarks import benchmark_network  # noqa: E402

pytestmark = pytest.mark.lightning


def test_benchmark_network_times_both_modes_against_bn(tmp_path, keep_threads):
    stem = tmp_path / "network"
    benchmark_network.main([
        "--networks", "resnet20", "--batch-sizes", "2", "--norms", "BN", "SN", "--rounds", "1", "--warmup", "1",
        "--default-malloc", "--out", str(stem),
    ])  # --default-malloc: leave the test process's allocator as it is
    result = json.loads(stem.with_suffix(".json").read_text())
    meta, records = result["meta"], result["records"]
    assert meta["threads"] == 1 and meta["rounds"] == 1 and meta["torch"] == torch.__version__
    assert meta["command"].startswith("python -m benchmarks.benchmark_network --networks resnet20")
    assert {(r["network"], r["batch_size"], r["mode"], r["norm"]) for r in records} == {
        ("resnet20", 2, mode, norm) for mode in benchmark_network.MODES for norm in ("BN", "SN")
    }
    for r in records:
        assert r["median_ms"] > 0
        assert 0 < r["ratio_bn_q1"] <= r["ratio_bn"] <= r["ratio_bn_q3"] < math.inf
    assert all(r["ratio_bn"] == 1 for r in records if r["norm"] == "BN")
    assert all(math.isfinite(r["loss_after"]) for r in records if r["mode"] == "train step")
    text = stem.with_suffix(".md").read_text()
    assert meta["command"] in text and meta["device_name"] in text
    assert "| norm | train step, batch 2 | eval fwd, batch 2 |" in text
    assert "| SN | " in text


def test_every_normalizer_builds_at_every_width_of_the_cifar_resnet():
    """ResNet-20's 16-channel stage is the width that 32 groups do not divide (ResNet-18's are multiples of 32)."""
    for name, factory in benchmark_network.norm_factories().items():
        model, _ = benchmark_network.build("resnet20", factory, torch.device("cpu"), lr=0.01)
        assert model(torch.randn(2, *benchmark_network.IMAGE_SHAPE)).shape == (2, benchmark_network.NUM_CLASSES), name
