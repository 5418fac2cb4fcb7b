"""Fashion-MNIST scenes: real garments composed into detection and segmentation images (COCO and semantic form).

Each scene is a ``canvas_size``-pixel square grayscale image holding ``min_objects``-``max_objects`` real
Fashion-MNIST garments, each scaled by a random factor in ``[min_scale, max_scale]`` (bilinear), flipped
left-right at random, dimmed by a random gain in ``[min_gain, 1]`` and placed at a random position wholly
inside the canvas. Garments are painted one after the other, so later ones occlude earlier ones. The 10
Fashion-MNIST classes are the categories (COCO ids 1-10 = labels 0-9).

**Masks.** A garment covers the pixels where its scaled image is at least ``threshold`` (of 255); only
those are painted (so the image shows exactly what the masks say), and its instance mask is the part of
them that no later garment covers. A garment left with less than ``min_visible`` of its own pixels or less
than ``min_area`` pixels visible is removed from the scene altogether (the most occluded one first, then
the others are measured again), so every painted garment is annotated and none is a sliver that even a
person could not classify; a scene therefore ends up with 1 to ``max_objects`` garments. Boxes are the
extents of the masks.

**Background.** Not a flat or noisy field, which a network separates from the garments by intensity alone:
a random grey level covered with ``background_fragments`` fragments cut from other garments of the same
split (a random 6-14 pixel square of a random image, scaled like the garments, its pixels above
``threshold`` pasted with a gain in ``[background_min_gain, background_max_gain]``), then Gaussian noise of
standard deviation ``noise`` over the whole image. The fragments have the garments' own texture and edges,
and their pixel values overlap the garments' (a bright fragment is brighter than a dark garment), so a
pixel's value does not say whether it is garment or background: a model must see a garment's whole outline,
as in real scenes where the background is made of the same kind of stuff as the objects.

**Splits.** Training scenes are made only of the official 60,000 training images (garments and background
fragments alike) and validation scenes only of the official 10,000 test images, so no image appears in
both. Each annotation records its garment's ``source`` (index in the official file and placement) and
each image its ``source_split`` and ``background_sources``. Every scene is drawn from its own random
generator (``seed``, split, index), so a split does not change when another split's size does, and a
smaller set is a prefix of a larger one.

Files under ``root`` (the same scenes for every task):

- ``images/{split}/{split}_{index:05d}.png``: 8-bit grayscale;
- ``annotations/instances_{split}.json``: COCO instances, masks as uncompressed RLE (pycocotools, mmdet's
  ``CocoDataset``);
- ``semantic/{split}/*.png``: 0 = background, 1-10 = the class of the garment visible at the pixel (the union
  of the instance masks; mmseg with ``reduce_zero_label=False``, 11 classes);
- ``manifest.json``: the :class:`ScenesSpec` the files were made with.

Generation is deterministic in the spec (and the files' contents), written once to a temporary folder and
moved into place, and reused while the manifest matches. The Fashion-MNIST IDX files are found and checked
as by :class:`tasks.classification.data.FashionMNISTDataModule` (``source_root``, or its search path when
empty; importing that module needs the Lightning extra); nothing is downloaded.

    python -m tasks.fashion_scenes [--root data/fashion_scenes] [--num-train 2000] [--source-root DIR] ...
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "data" / "fashion_scenes"
#: scene split -> the official Fashion-MNIST split its garments and background come from
SOURCE_SPLITS = {"train": "train", "val": "test"}
SOURCE_SIZE = 28
FRAGMENT_SIDES = (6, 14)  # side of a background fragment's cut, in source pixels (inclusive)


@dataclass(frozen=True)
class ScenesSpec:
    """Parameters of a generated set of scenes (all of them go into the manifest); see the module docstring.

    ``source_root`` is the folder of the Fashion-MNIST files (``""``: the data module's search path). The defaults
    are sized for ``benchmarks/detection_study.py`` (its docstring gives the calibration runs): about 3 garments a
    scene, and a small Mask R-CNN trained for 1500 iterations at 2 images per batch reaches about 0.33 bbox mAP.
    """

    num_train: int = 2000
    num_val: int = 300
    canvas_size: int = 160
    min_objects: int = 2
    max_objects: int = 6
    min_scale: float = 1.5
    max_scale: float = 3.0
    min_gain: float = 0.6
    threshold: int = 32
    min_visible: float = 0.6
    min_area: int = 48
    background_fragments: int = 30
    background_min_gain: float = 0.2
    background_max_gain: float = 0.6
    noise: float = 8.0
    seed: int = 0
    source_root: str = ""

    def __post_init__(self) -> None:
        problems = []
        if self.num_train < 0 or self.num_val < 0:
            problems.append(f"num_train={self.num_train!r} and num_val={self.num_val!r} must be 0 or more")
        if not 1 <= self.min_objects <= self.max_objects:
            problems.append(f"need 1 <= min_objects <= max_objects, got {self.min_objects!r}, {self.max_objects!r}")
        if not 0 < self.min_scale <= self.max_scale:
            problems.append(f"need 0 < min_scale <= max_scale, got {self.min_scale!r}, {self.max_scale!r}")
        elif round(SOURCE_SIZE * self.max_scale) > self.canvas_size:
            problems.append(f"canvas_size={self.canvas_size!r} cannot hold a garment scaled by "
                            f"max_scale={self.max_scale!r} ({round(SOURCE_SIZE * self.max_scale)} pixels)")
        if not 0 < self.min_gain <= 1:
            problems.append(f"min_gain must be in (0, 1], got {self.min_gain!r}")
        if not 0 <= self.background_min_gain <= self.background_max_gain:
            problems.append(f"need 0 <= background_min_gain <= background_max_gain, got "
                            f"{self.background_min_gain!r}, {self.background_max_gain!r}")
        if not 1 <= self.threshold <= 255:
            problems.append(f"threshold must be in 1..255, got {self.threshold!r}")
        if not 0 <= self.min_visible <= 1:
            problems.append(f"min_visible must be in [0, 1], got {self.min_visible!r}")
        if self.min_area < 1 or self.background_fragments < 0 or self.noise < 0:
            problems.append(f"min_area={self.min_area!r} must be positive, background_fragments="
                            f"{self.background_fragments!r} and noise={self.noise!r} 0 or more")
        if problems:
            raise ValueError("invalid ScenesSpec: " + "; ".join(problems))

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "val": self.num_val}


def load_sources(source_root: str = "") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The official splits as ``{"train" | "test": (images (N, 28, 28) uint8, labels (N,) int64)}``.

    The files are searched for and validated by the Fashion-MNIST data module's functions: a missing file
    raises ``FileNotFoundError`` naming the folders searched, a corrupt one ``ValueError`` naming the file.
    """
    from tasks.classification.data import (
        FASHION_MNIST_FILES, fashion_mnist_search_path, find_fashion_mnist, load_fashion_mnist,
    )

    files = find_fashion_mnist(fashion_mnist_search_path(source_root or None))
    sources = {}
    for split, names in FASHION_MNIST_FILES.items():
        images, labels = load_fashion_mnist(*(files[name] for name in names))
        sources[split] = images[:, 0].numpy(), labels.numpy()
    return sources


def scaled_garment(image: np.ndarray, side: int, flip: bool) -> np.ndarray:
    """A ``(h, w)`` uint8 image resized to ``(side, side)`` pixels (bilinear), mirrored left-right if ``flip``."""
    scaled = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
    return scaled[:, ::-1] if flip else scaled


def visible_masks(covers: list[np.ndarray]) -> list[np.ndarray]:
    """The part of each ``(H, W)`` boolean cover, in painting order, that no later cover hides."""
    hidden = np.zeros_like(covers[0]) if covers else None
    visible = [None] * len(covers)
    for index in reversed(range(len(covers))):
        visible[index] = covers[index] & ~hidden
        hidden = hidden | covers[index]
    return visible


def rle_encode(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of an ``(H, W)`` boolean mask: run lengths in column-major order, zeros first."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat.size and flat[0] else []) + counts}


def _paint(canvas: np.ndarray, piece: np.ndarray, x: int, y: int, gain: float, threshold: int) -> None:
    """Paint the pixels of ``piece`` at or above ``threshold``, times ``gain``, with its corner at ``(x, y)``."""
    region = canvas[y:y + piece.shape[0], x:x + piece.shape[1]]
    opaque = piece >= threshold
    region[opaque] = piece[opaque] * np.float32(gain)


def _background(rng: np.random.Generator, spec: ScenesSpec, images: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """A ``(size, size)`` float32 background of garment fragments, and the indices of the images cut from."""
    size = spec.canvas_size
    canvas = np.full((size, size), rng.uniform(0, 64), dtype=np.float32)
    sources = [int(i) for i in rng.integers(len(images), size=spec.background_fragments)]
    for index in sources:
        side = int(rng.integers(FRAGMENT_SIDES[0], FRAGMENT_SIDES[1] + 1))
        top, left = (int(v) for v in rng.integers(0, SOURCE_SIZE - side + 1, size=2))
        scaled_side = max(1, round(side * rng.uniform(spec.min_scale, spec.max_scale)))
        piece = scaled_garment(images[index, top:top + side, left:left + side], scaled_side, bool(rng.integers(2)))
        x, y = (int(v) for v in rng.integers(0, size - scaled_side + 1, size=2))
        _paint(canvas, piece, x, y, rng.uniform(spec.background_min_gain, spec.background_max_gain), spec.threshold)
    return canvas, sources


def _place_garments(rng: np.random.Generator, spec: ScenesSpec, images: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Draw the scene's garments (painting order), then remove the too-occluded ones; each with its cover."""
    size = spec.canvas_size
    garments = []
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        index = int(rng.integers(len(images)))
        side = round(SOURCE_SIZE * rng.uniform(spec.min_scale, spec.max_scale))
        flip = bool(rng.integers(2))
        gain = float(rng.uniform(spec.min_gain, 1.0))
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        pixels = scaled_garment(images[index], side, flip)
        cover = np.zeros((size, size), dtype=bool)
        cover[y:y + side, x:x + side] = pixels >= spec.threshold
        garments.append({"index": index, "label": int(labels[index]), "x": x, "y": y, "size": side, "flip": flip,
                         "gain": gain, "pixels": pixels, "cover": cover})
    while garments:
        visible = visible_masks([g["cover"] for g in garments])
        shares = [v.sum() / max(int(g["cover"].sum()), 1) for v, g in zip(visible, garments)]
        failing = [i for i, (v, share) in enumerate(zip(visible, shares))
                   if share < spec.min_visible or v.sum() < spec.min_area]
        if not failing:
            for garment, mask in zip(garments, visible):
                garment["mask"] = mask
            break
        del garments[min(failing, key=lambda i: shares[i])]
    return garments


def draw_scene(rng: np.random.Generator, spec: ScenesSpec, images: np.ndarray,
               labels: np.ndarray) -> tuple[np.ndarray, list[dict], list[int], np.ndarray]:
    """One scene from the source ``images`` (N, 28, 28) and ``labels`` (N,).

    Returns the ``(size, size)`` uint8 image, the garments in painting order (source ``index``, ``label``,
    placement ``x``, ``y``, ``size``, ``flip``, ``gain``, and the visible ``mask``), the background's source
    indices, and the ``(size, size)`` uint8 semantic map (0 = background, label + 1 where a garment shows).
    """
    canvas, background_sources = _background(rng, spec, images)
    garments = _place_garments(rng, spec, images, labels)
    semantic = np.zeros(canvas.shape, dtype=np.uint8)
    for garment in garments:
        _paint(canvas, garment["pixels"], garment["x"], garment["y"], garment["gain"], spec.threshold)
        semantic[garment["mask"]] = garment["label"] + 1
    if spec.noise:
        canvas += rng.normal(0, spec.noise, size=canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, garments, background_sources, semantic


def coco_annotation(garment: dict, image_id: int, annotation_id: int) -> dict:
    """The COCO record of a placed garment: box = extent of its visible mask (``[x, y, w, h]``), area = its pixels."""
    ys, xs = np.nonzero(garment["mask"])
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return {
        "id": annotation_id, "image_id": image_id, "category_id": garment["label"] + 1,
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": float(garment["mask"].sum()),
        "iscrowd": 0, "segmentation": rle_encode(garment["mask"]),
        "source": {key: garment[key] for key in ("index", "x", "y", "size", "flip", "gain")},
    }


def _write_split(root: Path, split: str, spec: ScenesSpec, images: np.ndarray, labels: np.ndarray,
                 categories: list[dict]) -> None:
    for folder in (root / "images" / split, root / "semantic" / split, root / "annotations"):
        folder.mkdir(parents=True, exist_ok=True)
    split_id = list(SOURCE_SPLITS).index(split)
    records, annotations = [], []
    for index in range(spec.split_sizes()[split]):
        rng = np.random.default_rng([spec.seed, split_id, index])
        image, garments, background_sources, semantic = draw_scene(rng, spec, images, labels)
        file_name = f"{split}_{index:05d}.png"
        Image.fromarray(image).save(root / "images" / split / file_name)
        Image.fromarray(semantic).save(root / "semantic" / split / file_name)
        image_id = index + 1
        records.append({"id": image_id, "file_name": file_name, "width": spec.canvas_size,
                        "height": spec.canvas_size, "source_split": SOURCE_SPLITS[split],
                        "background_sources": background_sources})
        annotations += [coco_annotation(g, image_id, len(annotations) + 1 + i) for i, g in enumerate(garments)]
    coco = {"images": records, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def ensure_dataset(root: str | os.PathLike = DEFAULT_ROOT, spec: ScenesSpec = ScenesSpec()) -> Path:
    """Generate the scenes under ``root`` unless scenes of the same ``spec`` are already there; return ``root``.

    Written to a temporary folder beside ``root`` and moved into place, so an interrupted run never leaves
    a partial dataset behind. Scenes of another spec in ``root`` are replaced; a non-empty ``root`` without a
    manifest is never touched (``FileExistsError``). Needs the Fashion-MNIST files only when it generates.
    """
    root = Path(root)
    manifest = root / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == asdict(spec):
        return root
    if root.is_dir() and not manifest.is_file() and any(root.iterdir()):
        raise FileExistsError(f"{root} holds files but no manifest.json of generated scenes: not replacing it; "
                              "give an empty or new folder")
    from tasks.classification.data import FASHION_MNIST_CLASSES

    sources = load_sources(spec.source_root)
    categories = [{"id": label + 1, "name": name, "supercategory": "garment"}
                  for label, name in enumerate(FASHION_MNIST_CLASSES)]
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fashion-scenes-", dir=root.parent))
    try:
        for split, source_split in SOURCE_SPLITS.items():
            _write_split(staging, split, spec, *sources[source_split], categories)
        (staging / "manifest.json").write_text(json.dumps(asdict(spec)))
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return root


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT))
    for field in fields(ScenesSpec):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    arguments = vars(parser.parse_args())
    print(ensure_dataset(arguments.pop("root"), ScenesSpec(**arguments)))
