"""End-to-end runs of tools/train.py and tools/test.py on the synthetic shapes dataset (CPU, minutes)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmengine")
pytest.importorskip("mmcv.ops")
pytest.importorskip("mmdet")
pytest.importorskip("mmseg")
pytest.importorskip("pycocotools")
pytest.importorskip("matplotlib")

import dynnorm.integrations.mmengine  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from dynnorm.integrations.mm_checkpoint import load_weights_only  # noqa: E402
from dynnorm.integrations.mm_runtime import replace_data_root  # noqa: E402

pytestmark = [pytest.mark.mm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
DET_CONFIG = ROOT / "configs/mmdet/mask-rcnn_r18-w16_fpn_sn-all_1xb2-1k_shapes.py"
SEG_CONFIG = ROOT / "configs/mmseg/deeplabv3_r18-w16-d8_sn_1xb2-1k_shapes.py"
NO_VALIDATION = ["val_cfg=None", "val_dataloader=None", "val_evaluator=None"]


def run_tool(args: list[str], log: Path, launcher: list[str] | None = None, timeout: int = 900) -> str:
    """Run a tools/ script in a fresh interpreter (one thread: robust on a shared 2-core machine); return its output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = (launcher or [sys.executable]) + args
    with log.open("w") as out:
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    text = log.read_text()
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{text[-4000:]}"
    return text


def log_dir(work_dir: Path) -> Path:
    """The run folder mmengine creates in the work dir (one per run; the latest)."""
    return sorted(p for p in work_dir.iterdir() if p.is_dir() and re.fullmatch(r"\d{8}_\d{6}", p.name))[-1]


def untrained_metrics(config: Path, work_dir: Path, **overrides) -> dict:
    """The test metrics of the config's model with its initial (random) weights."""
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(overrides)
    replace_data_root(cfg, str(ROOT / cfg.data_root))  # the config's path is relative to the repository root
    cfg.work_dir = str(work_dir)
    cfg.launcher = "none"
    torch.manual_seed(0)
    return Runner.from_cfg(cfg).test()


def test_short_sn_mask_rcnn_training_beats_the_untrained_model_and_plots_the_ratios(tmp_path):
    work_dir = tmp_path / "train"
    iterations = 300
    run_tool(["tools/train.py", str(DET_CONFIG), "--work-dir", str(work_dir), "--cfg-options",
              f"train_cfg.max_iters={iterations}", f"train_cfg.val_interval={iterations}",
              "param_scheduler.0.end=100", "param_scheduler.1.milestones=[250,280]",
              f"param_scheduler.1.end={iterations}", f"default_hooks.checkpoint.interval={iterations}"],
             tmp_path / "train.log")
    checkpoint = work_dir / f"iter_{iterations}.pth"
    assert checkpoint.is_file()

    metrics_file = tmp_path / "metrics.json"
    output = run_tool(["tools/test.py", str(DET_CONFIG), str(checkpoint), "--work-dir", str(tmp_path / "test"),
                       "--metrics-json", str(metrics_file)], tmp_path / "test.log")
    assert "bbox_mAP_copypaste" in output and "segm_mAP_copypaste" in output  # CocoMetric's summary
    trained = json.loads(metrics_file.read_text())
    untrained = untrained_metrics(DET_CONFIG, tmp_path / "untrained")
    for metric in ("coco/bbox_mAP", "coco/segm_mAP", "coco/bbox_mAP_50"):
        # An untrained detector may produce no detection at all, for which CocoMetric reports nothing.
        assert trained[metric] > untrained.get(metric, 0.0) + 0.2, (metric, trained, untrained)

    run = log_dir(work_dir)
    png = run / "importance_ratios.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((run / "importance_ratios.json").read_text())["history"]
    assert [entry["iter"] for entry in history] == [0, 100, 200, 300]
    first, last = history[0]["ratios"], history[-1]["ratios"]
    assert len(last) == 36 and set(last["backbone.layer1.0.bn1"]) == {"mean", "var"}
    assert first["neck.fpn_convs.0.bn"]["mean"]["BN"] == pytest.approx(1 / 3)
    moved = [abs(ratio - 1 / 3) for kinds in last.values() for ratios in kinds.values() for ratio in ratios.values()]
    assert max(moved) > 0.003  # the mixtures are being learned (slowly, at the detector's learning rate)


def test_checkpoint_resume_continues_at_the_saved_iteration(tmp_path):
    work_dir = tmp_path / "work"
    command = ["tools/train.py", str(DET_CONFIG), "--work-dir", str(work_dir)]
    options = ["--cfg-options", "train_cfg.max_iters=4", "default_hooks.checkpoint.interval=2",
               "default_hooks.logger.interval=1", "custom_hooks.2.interval=1", *NO_VALIDATION]
    first = run_tool(command + options, tmp_path / "first.log")
    assert "Iter(train) [4/4]" in first
    saved = work_dir / "iter_2.pth"

    # torch >= 2.6 refuses a Runner checkpoint with its default weights_only=True; tools/train.py resumes from it
    # weights-only too, with the classes mmengine writes allowed, so without --trust-checkpoint.
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(saved)
    (work_dir / "iter_4.pth").unlink()

    resumed = run_tool(command + ["--resume", str(saved)] + options, tmp_path / "resumed.log")
    assert re.search(r"resumed epoch: \d+, iter: 2", resumed)
    logged = [int(i) for i in re.findall(r"Iter\(train\) \[(\d)/4\]", resumed)]
    assert logged == [3, 4]

    final = load_weights_only(work_dir / "iter_4.pth")
    assert final["meta"]["iter"] == 4
    history = json.loads((log_dir(work_dir) / "importance_ratios.json").read_text())["history"]
    assert [entry["iter"] for entry in history] == [0, 1, 2, 3, 4]  # carried through the checkpoint


def test_deeplabv3_sn_training_on_shapes_beats_the_untrained_model(tmp_path):
    work_dir = tmp_path / "work"
    run_tool(["tools/train.py", str(SEG_CONFIG), "--work-dir", str(work_dir), "--cfg-options",
              "train_cfg.max_iters=100", "train_cfg.val_interval=100", "param_scheduler.0.end=100"],
             tmp_path / "train.log")
    scalars = [json.loads(line) for line in (log_dir(work_dir) / "vis_data/scalars.json").read_text().splitlines()]
    trained = next(s for s in reversed(scalars) if "mIoU" in s)
    untrained = untrained_metrics(SEG_CONFIG, tmp_path / "untrained")
    assert trained["mIoU"] > untrained["mIoU"] + 5, (trained, untrained)
    assert (log_dir(work_dir) / "importance_ratios.png").is_file()


def test_torchrun_two_cpu_processes_synchronize_sn_statistics(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517"]
    output = run_tool(["tools/train.py", str(DET_CONFIG), "--launcher", "pytorch", "--work-dir", str(tmp_path / "work"),
                       "--cfg-options", "train_cfg.max_iters=3", "default_hooks.logger.interval=1", "sync_bn=torch",
                       *NO_VALIDATION], tmp_path / "torchrun.log", launcher=launcher)
    assert "DynNormSyncHook: 36 dynnorm layers synchronize their batch statistics across 2 processes" in output
    assert "Iter(train) [3/3]" in output
    assert (tmp_path / "work/iter_3.pth").is_file()
