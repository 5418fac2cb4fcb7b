"""The detection study's bookkeeping on fake runs (no training): which runs it plans, the schedule it passes,
resuming from its JSON, refusing a JSON of other settings, and the aggregated table and plot."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("mmdet")
pytest.importorskip("mmseg")

from benchmarks import detection_study  # noqa: E402


def fake_run(model, norm, seed, iters, threads, work_root, data_root) -> dict:
    """A record as :func:`detection_study.run_one` returns it: metric = 0.1 x (norm's position + 1) + 0.01 x seed."""
    spec = detection_study.MODELS[model]
    value = 0.1 * (spec.norms.index(norm) + 1) + 0.01 * seed
    return {"model": model, "norm": norm, "seed": seed, "iters": iters, "config": spec.config.format(norm=norm.lower()),
            **{metric: value * (100 if metric in ("mIoU", "mAcc", "aAcc") else 1) for metric in spec.metrics},
            "sec_per_iter": 0.5, "peak_rss_mib": 1000.0 + seed, "final_loss": 1.0, "seconds": 60.0,
            "threads": threads}


@pytest.fixture
def study(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(detection_study, "run_one", lambda *args: calls.append(args[:3]) or fake_run(*args))
    monkeypatch.setattr(detection_study, "ensure_dataset", lambda root, spec: calls.append(("generate",)))
    return calls, tmp_path / "study"


def test_study_records_each_run_resumes_and_aggregates(study):
    calls, out = study
    args = ["--det-norms", "BN", "SN", "--seg-norms", "GN", "--seeds", "0", "1", "2", "--det-iters", "20",
            "--seg-iters", "10", "--workers", "2", "--out", str(out)]
    detection_study.main([*args, "--max-runs", "4"])
    first = json.loads(out.with_suffix(".json").read_text())
    assert calls[0] == ("generate",) and len(first["runs"]) == 4  # the scenes come first, once
    assert sorted(calls[1:]) == [("mask-rcnn", "BN", 0), ("mask-rcnn", "BN", 1), ("mask-rcnn", "SN", 0),
                                 ("mask-rcnn", "SN", 1)]  # Mask R-CNN first, whole seeds first
    assert first["settings"]["iters"] == {"mask-rcnn": 20, "deeplabv3": 10}
    assert first["settings"]["scenes"]["canvas_size"] == 160 and not list(out.parent.glob("*.tmp"))

    detection_study.main(args)  # resumes: the 2 missing Mask R-CNN runs and the 3 DeepLabV3 runs
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert len(calls) == 1 + 4 + 1 + 5 and len({detection_study.run_key(r) for r in runs}) == 9
    detection_study.main(args)  # nothing left: no generation, no run
    assert len(calls) == 11

    table = detection_study.aggregate(runs)
    cell = table["mask-rcnn", "SN"]["coco/bbox_mAP"]
    assert cell["values"] == pytest.approx([0.3, 0.31, 0.32]) and cell["std"] == pytest.approx(0.01)
    assert table["mask-rcnn", "SN"]["peak_rss_mib"] == 1002.0
    text = out.with_suffix(".md").read_text()
    assert "| SN | 3 | 0.310 ± 0.010 | 0.310 ± 0.010 |" in text
    assert "| GN | 3 | 21.0 ± 1.0 |" in text and "| GN | 20.0 | 21.0 | 22.0 |" in text  # mIoU, then per seed
    assert "| BN | 0.100 | 0.110 | 0.120 |" in text
    assert out.with_suffix(".png").stat().st_size > 10_000

    with pytest.raises(SystemExit, match="other settings .differing: iters"):
        detection_study.main([*args[:-4], "--det-iters", "30", "--out", str(out)])


def test_schedules_follow_the_iterations():
    detection = detection_study.schedule_options("mask-rcnn", 1500, seed=2)
    assert {"train_cfg.max_iters=1500", "param_scheduler.0.end=200", "param_scheduler.1.milestones=[1125,1350]",
            "param_scheduler.1.end=1500", "randomness.seed=2", "default_hooks.logger.interval=50"} <= set(detection)
    tiny = detection_study.schedule_options("mask-rcnn", 8, seed=0)
    assert {"param_scheduler.0.end=1", "default_hooks.logger.interval=8", "train_cfg.val_interval=8"} <= set(tiny)
    segmentation = detection_study.schedule_options("deeplabv3", 1000, seed=1)
    assert {"train_cfg.max_iters=1000", "param_scheduler.0.end=1000", "randomness.seed=1"} <= set(segmentation)


def test_every_normalizer_of_the_study_has_its_config():
    for model in detection_study.MODELS.values():
        for norm in model.norms:
            assert (detection_study.REPO_ROOT / model.config.format(norm=norm.lower())).is_file(), norm


def test_runs_without_detections_are_shown_as_such():
    runs = [fake_run("mask-rcnn", "BN", seed, 10, 1, None, None) for seed in (0, 1, 2)]
    runs[1].update({metric: None for metric in detection_study.MODELS["mask-rcnn"].metrics})  # CocoMetric: nothing
    cell = detection_study.aggregate(runs)["mask-rcnn", "BN"]["coco/bbox_mAP"]
    assert cell["values"][1] is None and cell["values"][::2] == pytest.approx([0.1, 0.12])
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(0.11)
    text = detection_study.markdown_table(detection_study.aggregate(runs), "mask-rcnn")
    assert "| BN | 3 | 0.110 ± 0.014 (n=2) |" in text and "| BN | 0.100 | n/a | 0.120 |" in text
    nothing = detection_study.aggregate(runs[1:2])["mask-rcnn", "BN"]["coco/segm_mAP"]
    assert nothing["mean"] is None and "| BN | 1 | n/a |" in detection_study.markdown_table(
        detection_study.aggregate(runs[1:2]), "mask-rcnn")
