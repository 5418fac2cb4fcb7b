"""Fashion-MNIST scenes (tasks/fashion_scenes.py): generated from small IDX files written here (garment-like blobs)
and from the real files where they are installed; determinism and reuse, provenance (train scenes from the training
file only, validation scenes from the test file only), masks / boxes / semantic maps in agreement, COCO evaluation
of a perfect prediction, the mmdet and mmseg configs' datasets, and short training runs of the configs."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("lightning")  # the IDX reader and its search live in tasks.classification.data
mask_utils = pytest.importorskip("pycocotools.mask")

from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from tasks import fashion_scenes  # noqa: E402
from tasks.fashion_scenes import ScenesSpec, ensure_dataset, load_sources, scaled_garment  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SMALL = ScenesSpec(num_train=6, num_val=4, noise=0.0)


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8) as a gzipped IDX file: magic ``0x0000 08 <ndim>``, big-endian sizes, the bytes."""
    header = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def fake_garments(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 28x28 images, each a rectangle of random size and random bright texture on black, and labels."""
    images = np.zeros((count, 28, 28), np.uint8)
    for image in images:
        top, left = rng.integers(1, 8, size=2)
        bottom, right = rng.integers(20, 28, size=2)
        image[top:bottom, left:right] = rng.integers(60, 256, size=(bottom - top, right - left))
    return images, rng.permutation(np.arange(count) % 10)


@pytest.fixture(scope="module")
def source_root(tmp_path_factory) -> Path:
    """Fake Fashion-MNIST files: 40 training and 30 test images, all different."""
    folder = tmp_path_factory.mktemp("fashion-mnist")
    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("test", 30)):
        images, labels = fake_garments(count, rng)
        write_idx(folder / NAMES[split][0], images)
        write_idx(folder / NAMES[split][1], labels)
    return folder


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_the_same_spec_gives_the_same_files_which_are_then_reused(tmp_path, source_root, monkeypatch):
    spec = dataclasses.replace(SMALL, source_root=str(source_root), noise=8.0)
    first = digests(ensure_dataset(tmp_path / "a", spec))
    assert first == digests(ensure_dataset(tmp_path / "b", spec))
    assert len([name for name in first if name.startswith("images/")]) == 10
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == dataclasses.asdict(spec)

    def no_reading(source_root):
        raise AssertionError("the Fashion-MNIST files were read again")

    with monkeypatch.context() as patch:
        patch.setattr(fashion_scenes, "load_sources", no_reading)
        assert digests(ensure_dataset(tmp_path / "a", spec)) == first  # reused as it is

    fewer = digests(ensure_dataset(tmp_path / "a", dataclasses.replace(spec, num_train=3)))  # regenerated
    assert sorted(name for name in fewer if name.startswith("images/train/")) == [
        f"images/train/train_0000{i}.png" for i in range(3)]
    for name in fewer:  # every scene has its own generator: a smaller set is a prefix of the larger one
        if name.startswith(("images/", "semantic/")):
            assert fewer[name] == first[name], name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind

    other_seed = digests(ensure_dataset(tmp_path / "c", dataclasses.replace(spec, seed=1)))
    assert other_seed["images/val/val_00000.png"] != first["images/val/val_00000.png"]

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("not scenes")
    with pytest.raises(FileExistsError, match="holds files but no manifest.json of generated scenes"):
        ensure_dataset(tmp_path / "d", spec)
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["notes.txt"]


def garment_error(image: np.ndarray, mask: np.ndarray, source: dict, source_images: np.ndarray) -> int:
    """The largest difference, over the visible mask, between a scene without noise and the garment its annotation
    says it shows (that source image, scaled, flipped, dimmed and placed as recorded)."""
    garment = scaled_garment(source_images[source["index"]], source["size"], source["flip"]).astype(np.float32)
    expected = np.zeros(image.shape, np.float32)
    x, y, side = source["x"], source["y"], source["size"]
    expected[y:y + side, x:x + side] = np.rint(garment * np.float32(source["gain"]))
    return int(np.abs(image[mask].astype(np.int64) - expected[mask].astype(np.int64)).max())


def check_provenance(root: Path, spec: ScenesSpec, sources: dict) -> None:
    """Every garment of every scene is exactly its recorded source image of its own split, and not the image of
    the same index in the other split."""
    for split, source_split, other_split in (("train", "train", "test"), ("val", "test", "train")):
        coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
        images, labels = sources[source_split]
        assert len(coco.getImgIds()) == spec.split_sizes()[split] and coco.getAnnIds()
        for image_id in coco.getImgIds():
            record = coco.loadImgs(image_id)[0]
            assert record["source_split"] == source_split
            assert all(0 <= index < len(images) for index in record["background_sources"])
            pixels = read_png(root / "images" / split / record["file_name"])
            for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
                source, mask = annotation["source"], coco.annToMask(annotation).astype(bool)
                assert annotation["category_id"] == labels[source["index"]] + 1
                assert garment_error(pixels, mask, source, images) <= 1
                other = sources[other_split][0]
                if source["index"] < len(other):
                    assert garment_error(pixels, mask, source, other) > 1


def test_training_scenes_use_training_images_only_and_validation_scenes_test_images_only(tmp_path, source_root):
    spec = dataclasses.replace(SMALL, source_root=str(source_root))
    root = ensure_dataset(tmp_path / "scenes", spec)
    check_provenance(root, spec, load_sources(str(source_root)))


def test_masks_boxes_areas_and_semantic_maps_agree(tmp_path, source_root):
    spec = dataclasses.replace(SMALL, source_root=str(source_root), num_train=10, noise=8.0)
    root = ensure_dataset(tmp_path / "scenes", spec)
    for split in ("train", "val"):
        coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())][:2] == ["T-shirt/top", "Trouser"]
        for image_id in coco.getImgIds():
            record = coco.loadImgs(image_id)[0]
            semantic = read_png(root / "semantic" / split / record["file_name"])
            assert semantic.shape == read_png(root / "images" / split / record["file_name"]).shape == (160, 160)
            covered = np.zeros(semantic.shape, dtype=bool)
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            assert 1 <= len(annotations) <= spec.max_objects
            for annotation in annotations:
                mask = coco.annToMask(annotation).astype(bool)
                ys, xs = np.nonzero(mask)
                extent = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
                assert annotation["bbox"] == pytest.approx(extent)
                assert annotation["bbox"] == pytest.approx(mask_utils.toBbox(coco.annToRLE(annotation)).tolist())
                assert annotation["area"] == mask.sum() >= spec.min_area and annotation["iscrowd"] == 0
                assert not (covered & mask).any()  # visible parts never overlap
                covered |= mask
                assert (semantic[mask] == annotation["category_id"]).all()
            assert (semantic[~covered] == 0).all()


def test_a_perfect_prediction_scores_map_one_and_wrong_classes_score_zero(tmp_path, source_root):
    root = ensure_dataset(tmp_path / "scenes", dataclasses.replace(SMALL, source_root=str(source_root), num_val=8))
    ground_truth = COCO(str(root / "annotations" / "instances_val.json"))

    def evaluate(shift_class: int) -> dict[str, float]:
        results = {"bbox": [], "segm": []}
        for annotation in ground_truth.loadAnns(ground_truth.getAnnIds()):
            rle = mask_utils.encode(np.asfortranarray(ground_truth.annToMask(annotation)))
            rle["counts"] = rle["counts"].decode()
            prediction = {"image_id": annotation["image_id"], "score": 1.0,
                          "category_id": (annotation["category_id"] - 1 + shift_class) % 10 + 1}
            results["bbox"].append({**prediction, "bbox": annotation["bbox"]})
            results["segm"].append({**prediction, "segmentation": rle})
        scores = {}
        for kind in ("bbox", "segm"):
            evaluation = COCOeval(ground_truth, ground_truth.loadRes(results[kind]), kind)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            scores[kind] = evaluation.stats[0]
        return scores

    assert evaluate(shift_class=0) == {"bbox": 1.0, "segm": 1.0}
    assert evaluate(shift_class=1) == {"bbox": 0.0, "segm": 0.0}


def test_missing_fashion_mnist_is_a_clear_error_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as error:
        ensure_dataset(tmp_path / "scenes", dataclasses.replace(SMALL, source_root=str(empty)))
    message = str(error.value)
    assert f"Searched: {empty}; {empty / 'FashionMNIST' / 'raw'}." in message
    assert "apt-get install dataset-fashion-mnist" in message and "nothing is downloaded" in message
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]


@pytest.mark.parametrize(("options", "message"), [
    ({"max_scale": 6.0}, "canvas_size=160 cannot hold a garment scaled by max_scale=6.0 (168 pixels)"),
    ({"min_objects": 0}, "need 1 <= min_objects <= max_objects, got 0, 6"),
    ({"min_gain": 1.5}, "min_gain must be in (0, 1], got 1.5"),
    ({"threshold": 0}, "threshold must be in 1..255, got 0"),
    ({"background_min_gain": 0.9}, "need 0 <= background_min_gain <= background_max_gain, got 0.9, 0.6"),
])
def test_invalid_specs_name_the_bad_value(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ScenesSpec(**options)


def real_sources() -> dict:
    try:
        return load_sources()
    except FileNotFoundError as error:
        pytest.skip(f"Fashion-MNIST is not installed: {str(error)[:200]}")


def test_real_fashion_mnist_scenes_come_from_their_own_split(tmp_path):
    sources = real_sources()
    assert sources["train"][0].shape == (60_000, 28, 28) and sources["test"][0].shape == (10_000, 28, 28)
    spec = dataclasses.replace(SMALL, num_train=4, num_val=4)
    root = ensure_dataset(tmp_path / "scenes", spec)
    check_provenance(root, spec, sources)


def mm_config(path: Path, root: Path):
    """A dataset config of the repository with its data root replaced by ``root``."""
    from mmengine.config import Config

    cfg = Config.fromfile(ROOT / path)
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = str(root)
        loader.dataset.pipeline = cfg.test_pipeline
    return cfg


@pytest.mark.mm
def test_the_mmdet_and_mmseg_datasets_read_the_scenes(tmp_path, source_root):
    pytest.importorskip("mmdet")
    pytest.importorskip("mmseg")
    from mmdet.registry import DATASETS as DET_DATASETS
    from mmdet.utils import register_all_modules as register_mmdet
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS as SEG_DATASETS
    from mmseg.utils import register_all_modules as register_mmseg

    root = ensure_dataset(tmp_path / "scenes", dataclasses.replace(SMALL, source_root=str(source_root), noise=8.0))
    coco = COCO(str(root / "annotations" / "instances_val.json"))
    register_mmdet(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmdet"):  # the pipeline's transforms are mmdet's
        detection = DET_DATASETS.build(mm_config("configs/mmdet/_base_/fashion_scenes_instance.py", root)
                                       .val_dataloader.dataset)
    assert len(detection) == 4 and detection.metainfo["classes"][-1] == "Ankle boot"
    for index in range(len(detection)):
        sample = detection[index]["data_samples"]
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=sample.img_id))
        expected = np.stack([coco.annToMask(a) for a in annotations])
        assert np.array_equal(sample.gt_instances.masks.masks, expected)
        boxes = np.array([a["bbox"] for a in annotations]) @ np.array([[1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0],
                                                                       [0, 0, 0, 1]])
        assert np.array_equal(sample.gt_instances.bboxes.tensor.numpy(), boxes)  # x1 y1 x2 y2
        assert sample.gt_instances.labels.tolist() == [a["category_id"] - 1 for a in annotations]

    register_mmseg(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmseg"):
        segmentation = SEG_DATASETS.build(mm_config("configs/mmseg/_base_/fashion_scenes_semantic.py", root)
                                          .train_dataloader.dataset)
    assert len(segmentation) == 6 and len(segmentation.metainfo["classes"]) == 11
    sample = segmentation[0]["data_samples"]
    semantic = read_png(root / "semantic" / "train" / "train_00000.png")
    assert np.array_equal(sample.gt_sem_seg.data[0].numpy(), semantic) and semantic.max() > 0


@pytest.mark.mm
@pytest.mark.slow
@pytest.mark.parametrize(("config", "metrics"), [
    # score_thr=0: the barely trained detector's detections are all kept, so CocoMetric evaluates them (with none at
    # all it reports nothing)
    ("configs/mmdet/mask-rcnn_r18-w16_fpn_sn-all_1xb2-1.5k_fashion-scenes.py", ["model.test_cfg.rcnn.score_thr=0.0"]),
    ("configs/mmseg/deeplabv3_r18-w16-d8_sn_1xb2-4k_fashion-scenes.py", []),
], ids=["mask-rcnn", "deeplabv3"])
def test_the_configs_generate_their_scenes_train_and_evaluate(tmp_path, source_root, config, metrics):
    """``tools/train.py CONFIG`` for 20 iterations, the scenes generated under --data-root from the fake files
    (8 training, 4 validation scenes, through the config's ``fashion_scenes`` key), then validation."""
    pytest.importorskip("mmdet")
    pytest.importorskip("mmseg")
    from benchmarks.benchmark_detection import read_scalars

    work_dir, scenes, iterations = tmp_path / "work", tmp_path / "scenes", 20
    command = [sys.executable, "tools/train.py", config, "--work-dir", str(work_dir), "--data-root", str(scenes),
               "--cfg-options", f"fashion_scenes.source_root={source_root}", "fashion_scenes.num_train=8",
               "fashion_scenes.num_val=4", f"train_cfg.max_iters={iterations}", f"train_cfg.val_interval={iterations}",
               f"default_hooks.checkpoint.interval={iterations}", "default_hooks.logger.interval=5", *metrics]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (work_dir / f"iter_{iterations}.pth").is_file()
    manifest = json.loads((scenes / "manifest.json").read_text())
    assert (manifest["num_train"], manifest["source_root"]) == (8, str(source_root))

    scalars = read_scalars(work_dir)
    training = [record for record in scalars if "loss" in record]
    assert training[-1]["step"] == iterations and all(np.isfinite([record["loss"] for record in training]))
    validation = scalars[-1]
    if "mask-rcnn" in config:
        assert {"coco/bbox_mAP", "coco/segm_mAP"} <= set(validation)
        assert 0.0 <= validation["coco/segm_mAP"] <= 1.0
    else:
        assert 0.0 < validation["mIoU"] <= 100.0
