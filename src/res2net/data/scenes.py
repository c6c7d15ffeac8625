"""Generated multi-scale scenes, written as real data files so every dense task runs offline.

Each scene is a textured background with 1..``max_objects`` shapes (disc, square, triangle, ring) of random
colour and of sizes spread log-uniformly from COCO-small to COCO-large. Later shapes occlude earlier ones, so
instance masks are the *visible* pixels. One call writes the same scenes in three layouts, which the readers
of :mod:`res2net.data.dense` then read exactly as they read the real sets:

``coco/``      ``annotations/instances_{split}.json`` (boxes, compressed-RLE instance masks) + ``{split}/*.png``
``voc/``       ``JPEGImages/*.jpg``, ``Annotations/*.xml``, ``SegmentationClass/*.png`` (palette, 255 = ignore
               on a 1-pixel object border as in VOC), ``SegmentationObject/*.png``, ``ImageSets/{Main,
               Segmentation}/{split}.txt``, ``classes.txt`` (class names, since these are not VOC's 20)
``saliency/``  ``{split}/images/*.jpg`` + ``{split}/masks/*.png`` (0/255; every object is salient)
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..files import write_text

SCENE_CLASSES: Tuple[str, ...] = ("disc", "square", "triangle", "ring")
FORMATS: Tuple[str, ...] = ("coco", "voc", "saliency")
# written to scenes.json; 2: train and val scenes from independent random streams (1: val drawn after train)
GENERATOR_VERSION = 2
# COCO's small / medium / large object areas (pixels); a scene draws each object's bucket uniformly
AREA_BUCKETS = ((48.0, 1024.0), (1024.0, 9216.0), (9216.0, 20000.0))
SHAPE_AREA = {"disc": math.pi, "ring": 0.75 * math.pi, "square": 2.0, "triangle": 1.87}  # area / radius^2


@dataclass
class Scene:
    """One generated image with its instances (visible masks, boxes in xyxy pixels, 1-based class ids)."""

    image: np.ndarray  # H x W x 3 uint8
    masks: np.ndarray  # N x H x W bool
    labels: List[int]
    boxes: List[Tuple[int, int, int, int]]  # x0, y0, x1, y1 (x1/y1 exclusive)


def voc_palette() -> List[int]:
    """The PASCAL VOC colour map (768 values) used by its class/object PNGs."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour gradient + oriented stripes + pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    t = (xx * math.cos(rng.uniform(0, 6.3)) + yy * math.sin(rng.uniform(0, 6.3)) + 1.5) / 3.0
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    freq, angle = rng.uniform(4, 16), rng.uniform(0, math.pi)
    stripes = np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))
    img += rng.uniform(8, 25) * stripes[..., None]
    img += rng.normal(0, 8, img.shape)
    return img


def _shape_mask(kind: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind in ("disc", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if kind == "ring":
            draw.ellipse([cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r], fill=0)
    else:
        n = 4 if kind == "square" else 3
        rr = r * (1.2 if kind == "triangle" else 1.0)
        pts = [(cx + rr * math.cos(angle + 2 * math.pi * k / n), cy + rr * math.sin(angle + 2 * math.pi * k / n))
               for k in range(n)]
        draw.polygon(pts, fill=255)
    return np.asarray(canvas) > 127


def make_scene(rng: np.random.Generator, size: int = 128, max_objects: int = 4, min_area: int = 30) -> Scene:
    """One scene; each object's area is log-uniform within a COCO size bucket (small, medium, large) drawn
    uniformly (capped at 75% of the image); larger objects are drawn first."""
    img = _background(rng, size)
    masks: List[np.ndarray] = []
    labels: List[int] = []
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        kind_idx = int(rng.integers(len(SCENE_CLASSES)))
        lo, hi = AREA_BUCKETS[int(rng.integers(len(AREA_BUCKETS)))]
        hi = min(hi, 0.75 * size * size)
        objects.append((math.exp(rng.uniform(math.log(min(lo, hi / 2)), math.log(hi))), kind_idx))
    for area, kind_idx in sorted(objects, reverse=True):  # large ones at the back, less occluded
        r = math.sqrt(area / SHAPE_AREA[SCENE_CLASSES[kind_idx]])
        margin = min(r * 0.8, size / 2)
        cx, cy = rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)
        m = _shape_mask(SCENE_CLASSES[kind_idx], size, cx, cy, r, rng.uniform(0, 2 * math.pi))
        if m.sum() < min_area:
            continue
        colour = rng.uniform(0, 255, 3)
        shade = 1.0 + 0.15 * rng.normal(0, 1, (size, size, 1))
        img = np.where(m[..., None], colour[None, None] * shade, img)
        masks = [old & ~m for old in masks]  # occlusion: earlier objects keep their visible part
        masks.append(m)
        labels.append(kind_idx + 1)
    keep = [i for i, m in enumerate(masks) if m.sum() >= min_area]
    masks = [masks[i] for i in keep]
    labels = [labels[i] for i in keep]
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    stack = np.stack(masks) if masks else np.zeros((0, size, size), bool)
    return Scene(np.clip(img, 0, 255).astype(np.uint8), stack, labels, boxes)


def _class_mask(scene: Scene, border: bool) -> np.ndarray:
    """Class-index map (0 = background); ``border`` marks a 1-pixel ring around each object with 255."""
    cls = np.zeros(scene.image.shape[:2], np.uint8)
    for m, lab in zip(scene.masks, scene.labels):
        cls[m] = lab
    if border and len(scene.labels):
        edges = np.zeros_like(cls, dtype=bool)
        for m in scene.masks:
            im = Image.fromarray(m.astype(np.uint8) * 255)
            dil = np.asarray(im.filter(ImageFilter.MaxFilter(3))) > 0
            ero = np.asarray(im.filter(ImageFilter.MinFilter(3))) > 0
            edges |= dil & ~ero
        cls[edges] = 255
    return cls


def _write_coco(root: Path, split: str, scenes: Sequence[Tuple[str, Scene]]) -> None:
    from pycocotools import mask as mask_utils

    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for img_id, (stem, sc) in enumerate(scenes, start=1):
        Image.fromarray(sc.image).save(root / split / f"{stem}.png")
        h, w = sc.image.shape[:2]
        images.append({"id": img_id, "file_name": f"{stem}.png", "height": h, "width": w})
        for m, lab, (x0, y0, x1, y1) in zip(sc.masks, sc.labels, sc.boxes):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": lab, "iscrowd": 0,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(m.sum()), "segmentation": rle})
    cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SCENE_CLASSES)]
    doc = {"info": {"description": "res2net generated scenes"}, "images": images, "annotations": anns,
           "categories": cats}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))


def _write_voc(root: Path, split: str, scenes: Sequence[Tuple[str, Scene]]) -> None:
    dirs = {d: root / d for d in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject",
                                  "ImageSets/Main", "ImageSets/Segmentation")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(SCENE_CLASSES) + "\n")
    palette = voc_palette()
    for stem, sc in scenes:
        Image.fromarray(sc.image).save(dirs["JPEGImages"] / f"{stem}.jpg", quality=95)
        h, w = sc.image.shape[:2]
        ann = ET.Element("annotation")
        ET.SubElement(ann, "filename").text = f"{stem}.jpg"
        sz = ET.SubElement(ann, "size")
        for k, v in (("width", w), ("height", h), ("depth", 3)):
            ET.SubElement(sz, k).text = str(v)
        ET.SubElement(ann, "segmented").text = "1"
        for lab, (x0, y0, x1, y1) in zip(sc.labels, sc.boxes):
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = SCENE_CLASSES[lab - 1]
            ET.SubElement(obj, "difficult").text = "0"
            bb = ET.SubElement(obj, "bndbox")  # VOC boxes are 1-based and inclusive
            for k, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
                ET.SubElement(bb, k).text = str(v)
        ET.ElementTree(ann).write(dirs["Annotations"] / f"{stem}.xml")
        for name, arr in (("SegmentationClass", _class_mask(sc, border=True)),
                          ("SegmentationObject", _instance_ids(sc))):
            png = Image.fromarray(arr, mode="P")
            png.putpalette(palette)
            png.save(dirs[name] / f"{stem}.png")
    listing = "\n".join(stem for stem, _ in scenes) + "\n"
    (dirs["ImageSets/Main"] / f"{split}.txt").write_text(listing)
    (dirs["ImageSets/Segmentation"] / f"{split}.txt").write_text(listing)


def _instance_ids(sc: Scene) -> np.ndarray:
    ids = np.zeros(sc.image.shape[:2], np.uint8)
    for i, m in enumerate(sc.masks, start=1):
        ids[m] = i
    return ids


def _write_saliency(root: Path, split: str, scenes: Sequence[Tuple[str, Scene]]) -> None:
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    for stem, sc in scenes:
        Image.fromarray(sc.image).save(root / split / "images" / f"{stem}.jpg", quality=95)
        sal = (sc.masks.any(0) if len(sc.labels) else np.zeros(sc.image.shape[:2], bool)).astype(np.uint8) * 255
        Image.fromarray(sal).save(root / split / "masks" / f"{stem}.png")


def generate_scenes(out_dir: str | Path, n_train: int = 200, n_val: int = 50, size: int = 128, seed: int = 0,
                    max_objects: int = 4, formats: Sequence[str] = FORMATS) -> Dict[str, Path]:
    """Write ``n_train`` + ``n_val`` scenes of ``size`` px in each of ``formats``; returns each format's root.

    >>> import tempfile; roots = generate_scenes(tempfile.mkdtemp(), 2, 1, size=64)
    >>> sorted(roots)
    ['coco', 'saliency', 'voc']
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown scene format(s) {bad}; choose from {FORMATS}")
    if n_train < 1 or n_val < 1 or size < 32:
        raise ValueError(f"need n_train >= 1, n_val >= 1 and size >= 32, got {n_train}, {n_val}, {size}")
    # one independent random stream per split: the validation scenes do not depend on n_train (and the first
    # k scenes of a split are the same for any count >= k)
    train_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    out = Path(out_dir)
    splits = {"train": [(f"train_{i:05d}", make_scene(train_rng, size, max_objects)) for i in range(n_train)],
              "val": [(f"val_{i:05d}", make_scene(val_rng, size, max_objects)) for i in range(n_val)]}
    writers = {"coco": _write_coco, "voc": _write_voc, "saliency": _write_saliency}
    roots = {}
    for fmt in formats:
        roots[fmt] = out / fmt
        for split, scenes in splits.items():
            writers[fmt](roots[fmt], split, scenes)
    # written last and whole: it marks a finished set
    write_text(out / "scenes.json", json.dumps({"n_train": n_train, "n_val": n_val, "size": size, "seed": seed,
                                                "max_objects": max_objects, "classes": list(SCENE_CLASSES),
                                                "generator": GENERATOR_VERSION}))
    return roots
