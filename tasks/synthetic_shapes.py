"""The embedded default dataset: generated images of coloured shapes, in COCO, semantic and ImageFolder form.

Each image holds 1-3 shapes (circle, square, triangle) of random colour, size and position on a noisy
background. The same images serve every task:

- instance detection/segmentation: ``annotations/instances_{split}.json`` (COCO format, polygon masks,
  categories 1-3) over ``images/{split}/*.png``;
- semantic segmentation: ``semantic/{split}/*.png`` (0 = background, 1-3 = class);
- classification: ``classification/{split}/{class}/*.png`` (ImageFolder layout), labelled by the largest
  shape, which is at least twice the area of any other in the image.

Generation is deterministic in ``seed`` and written once per parameter set (a ``manifest.json`` records
them), so repeated runs reuse the files. Needs numpy and Pillow only.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "data" / "synthetic_shapes"


@dataclass(frozen=True)
class ShapesSpec:
    """Parameters of a generated dataset (all of them go into the manifest)."""

    num_train: int = 400
    num_val: int = 100
    image_size: int = 64
    max_objects: int = 3
    seed: int = 0

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "val": self.num_val}


def _polygon(category: int, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    sides = {0: 32, 1: 4, 2: 3}[category]
    offset = angle + (math.pi / 4 if category == 1 else 0.0)
    return [(cx + radius * math.cos(offset + 2 * math.pi * i / sides),
             cy + radius * math.sin(offset + 2 * math.pi * i / sides)) for i in range(sides)]


def _draw_image(rng: np.random.Generator, spec: ShapesSpec) -> tuple[Image.Image, list[dict], np.ndarray]:
    size = spec.image_size
    background = rng.integers(0, 80, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    canvas = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(canvas)
    semantic = np.zeros((size, size), dtype=np.uint8)
    num_objects = int(rng.integers(1, spec.max_objects + 1))
    # The first shape is the largest (the classification label); the others are at most ~0.7x its radius.
    main_radius = rng.uniform(0.22, 0.32) * size
    radii = [main_radius] + [rng.uniform(0.3, 0.7) * main_radius for _ in range(num_objects - 1)]
    objects = []
    for radius in sorted(radii):  # draw small shapes first so the main one is fully visible
        category = int(rng.integers(0, len(CLASSES)))
        cx, cy = rng.uniform(radius, size - radius, size=2)
        polygon = _polygon(category, cx, cy, radius, rng.uniform(0, 2 * math.pi))
        colour = tuple(int(c) for c in rng.integers(100, 256, size=3))
        ImageDraw.Draw(image).polygon(polygon, fill=colour)
        mask_image = Image.new("L", (size, size), 0)
        ImageDraw.Draw(mask_image).polygon(polygon, fill=1)
        mask = np.asarray(mask_image, dtype=bool)
        for other in objects:  # later shapes occlude earlier ones
            other["mask"] &= ~mask
        semantic[mask] = category + 1
        objects.append({"category": category, "polygon": polygon, "mask": mask, "radius": radius})
    return image, objects, semantic


def _coco_annotation(obj: dict, image_id: int, annotation_id: int) -> dict | None:
    ys, xs = np.nonzero(obj["mask"])
    if len(xs) == 0:
        return None
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return {
        "id": annotation_id, "image_id": image_id, "category_id": obj["category"] + 1,
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": float(obj["mask"].sum()),
        "iscrowd": 0, "segmentation": [[round(v, 2) for point in obj["polygon"] for v in point]],
    }


def _write_split(root: Path, split: str, count: int, spec: ShapesSpec, rng: np.random.Generator) -> None:
    for folder in (root / "images" / split, root / "semantic" / split,
                   *(root / "classification" / split / name for name in CLASSES)):
        folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        image, objects, semantic = _draw_image(rng, spec)
        file_name = f"{split}_{index:05d}.png"
        image.save(root / "images" / split / file_name)
        Image.fromarray(semantic).save(root / "semantic" / split / file_name)
        label = CLASSES[max(objects, key=lambda o: o["radius"])["category"]]
        image.save(root / "classification" / split / label / file_name)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": spec.image_size, "height": spec.image_size})
        for obj in objects:
            annotation = _coco_annotation(obj, image_id, len(annotations) + 1)
            if annotation is not None:
                annotations.append(annotation)
    coco = {
        "images": images, "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)],
    }
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def ensure_dataset(root: str | os.PathLike = DEFAULT_ROOT, spec: ShapesSpec = ShapesSpec()) -> Path:
    """Generate the dataset under ``root`` unless a dataset with the same ``spec`` is already there.

    Written to a temporary folder and moved into place, so an interrupted run never leaves a partial
    dataset behind. Returns ``root``.
    """
    root = Path(root)
    manifest = root / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()) == asdict(spec):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".shapes-", dir=root.parent))
    rng = np.random.default_rng(spec.seed)
    for split, count in spec.split_sizes().items():
        _write_split(staging, split, count, spec, rng)
    (staging / "manifest.json").write_text(json.dumps(asdict(spec)))
    if root.exists():
        shutil.rmtree(root)
    staging.rename(root)
    return root


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT))
    for field, default in asdict(ShapesSpec()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=default)
    args = vars(parser.parse_args())
    print(ensure_dataset(args.pop("root"), ShapesSpec(**args)))
