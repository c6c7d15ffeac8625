"""Readers for the dense tasks: COCO json and PASCAL VOC xml (detection / instance masks), VOC segmentation
PNGs and plain image/mask folders (semantic segmentation), paired image/mask folders (saliency).

Images come out as float tensors in [0, 1] (C, H, W); normalisation belongs to the model. Bad input policy:

* a missing image or mask file, a mask whose size differs from its image, a class id or name outside the
  class list: :class:`~res2net.errors.DataError` naming the file;
* an annotation whose box is empty or degenerate (width or height <= 0 after clipping to the image) is
  dropped, and an image left without annotations is dropped from a *training* set (kept for evaluation,
  where its false positives count); both are counted in ``dataset.skipped`` (written to
  ``data_report.json`` by the commands), never dropped silently.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from ..errors import DataError
from .images import decode_failure, open_image, to_8bit

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
IGNORE_INDEX = 255
# (image folder, mask folder) names of the common saliency benchmarks, tried in order under --data-dir[/split]
SALIENCY_LAYOUTS: Tuple[Tuple[str, str], ...] = (
    ("images", "masks"), ("DUTS-TR-Image", "DUTS-TR-Mask"), ("DUTS-TE-Image", "DUTS-TE-Mask"),
    ("images", "ground_truth_mask"), ("imgs", "gt"), ("Imgs", "GT"), ("image", "mask"), ("Image", "Mask"),
    ("DUT-OMRON-image", "pixelwiseGT-new-PNG"), ("images", "gts"),
)


def load_rgb(path: Path) -> Tensor:
    """An image file as a float (3, H, W) tensor in [0, 1] (any mode, 16-bit scaled: :func:`to_8bit`);
    DataError naming the file for anything the decoder rejects."""
    arr = np.asarray(open_image(path, channels=3), dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)


def load_mask(path: Path) -> np.ndarray:
    """A single-channel mask as an integer array, values as stored: palette PNGs give their indices, 8-bit
    masks uint8, 16-bit masks int64 (never wrapped into 0..255: a value 256 stays 256, so that a class-id check
    sees it). Colour masks are converted to grey."""
    if not path.is_file():
        raise DataError(f"{path}: mask file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                return np.asarray(im).astype(np.int64)
            if im.mode not in ("P", "L", "1"):
                im = to_8bit(im, "L")
            return np.asarray(im).astype(np.uint8)
    except Exception as exc:  # any decoder rejection
        raise DataError(f"{path}: cannot read mask ({decode_failure(exc)})") from None


def saliency_target(mask: np.ndarray) -> np.ndarray:
    """A saliency mask binarised at the middle of its range (8-bit: > 128, as the SOD toolkits do; 16-bit:
    > 32896, the same level)."""
    return mask > (128 if mask.dtype == np.uint8 else 128 * 257)


def _check_size(mask: np.ndarray, image: Tensor, path: Path) -> None:
    if tuple(mask.shape[:2]) != tuple(image.shape[-2:]):
        raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                        f"{image.shape[-1]}x{image.shape[-2]}")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    return path


def _find_image(folder: Path, stem: str) -> Optional[Path]:
    for ext in IMAGE_EXTS:
        if (folder / (stem + ext)).is_file():
            return folder / (stem + ext)
    return None


class DetectionDataset(Dataset):
    """Common part of the COCO and VOC readers: records of (image path, annotations), skip counts, and the
    conversion to torchvision tv_tensors so that ``transforms.v2`` moves boxes and masks with the image.

    Each item is ``(image, target)`` with ``target = {"boxes" (N, 4) xyxy, "labels" (N,) in 1..K,
    "masks" (N, H, W) uint8 (if ``with_masks``), "image_id", "iscrowd", "difficult"}``."""

    classes: Tuple[str, ...]
    with_masks: bool

    def __init__(self, train: bool, transforms: Optional[Callable] = None) -> None:
        self.train = train
        self.transforms = transforms
        self.skipped: Counter = Counter()
        self.records: List[Dict[str, Any]] = []

    @property
    def num_classes(self) -> int:
        """Object classes plus background (index 0)."""
        return len(self.classes) + 1

    def add_record(self, image: Path, objects: List[Dict[str, Any]], width: int, height: int,
                   source: str, extra: Optional[Dict[str, Any]] = None) -> None:
        """Keep the valid objects of one image (clipped boxes); count what is dropped."""
        kept = []
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            x0, x1 = max(0.0, min(x0, width)), max(0.0, min(x1, width))
            y0, y1 = max(0.0, min(y0, height)), max(0.0, min(y1, height))
            if x1 - x0 <= 0 or y1 - y0 <= 0:
                self.skipped["degenerate_boxes"] += 1
                continue
            kept.append({**obj, "box": (x0, y0, x1, y1)})
        if not kept and self.train:
            self.skipped["images_without_annotations"] += 1
            return
        self.records.append({"image": image, "objects": kept, "width": width, "height": height,
                             "source": source, "image_id": len(self.records) + 1, **(extra or {})})

    def finish(self, source: str) -> None:
        """Called when every record is read: a training set left with no usable annotation is an error
        (naming the file and what was skipped), not an empty set that fails later."""
        if self.train and not self.records:
            skipped = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in self.skipped.items()) or "no images"
            raise DataError(f"{source}: no image with a usable annotation for training (skipped: {skipped})")

    def __len__(self) -> int:
        return len(self.records)

    def object_masks(self, rec: Dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, idx: int) -> Tuple[Tensor, Dict[str, Any]]:
        rec = self.records[idx]
        image = load_rgb(rec["image"])
        h, w = image.shape[-2:]
        if (w, h) != (rec["width"], rec["height"]):
            raise DataError(f"{rec['image']}: image is {w}x{h} but {rec['source']} says "
                            f"{rec['width']}x{rec['height']}")
        objs = rec["objects"]
        boxes = torch.tensor([o["box"] for o in objs], dtype=torch.float32).reshape(-1, 4)
        target: Dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([o["label"] for o in objs], dtype=torch.int64),
            "iscrowd": torch.tensor([o.get("iscrowd", 0) for o in objs], dtype=torch.int64),
            "difficult": torch.tensor([o.get("difficult", 0) for o in objs], dtype=torch.bool),
            # COCO's annotation area (mask area; decides small/medium/large), or the box area (VOC)
            "area": torch.tensor([o["ann"]["area"] if "ann" in o and "area" in o["ann"] else
                                  (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]) for o in objs],
                                 dtype=torch.float32),
            "image_id": rec["image_id"],
        }
        if self.with_masks:
            masks = self.object_masks(rec)
            if masks.shape[1:] != (h, w):
                raise DataError(f"{rec['source']}: instance masks of {rec['image']} are "
                                f"{masks.shape[2]}x{masks.shape[1]}, the image is {w}x{h}")
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        img = tv_tensors.Image(image)
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        return img.as_subclass(Tensor), target


class CocoDetection(DetectionDataset):
    """A COCO instances json (``pycocotools``) and its image folder. Category ids are mapped to 1..K in id
    order; ``classes`` holds their names. ``iscrowd`` objects are kept as crowd regions (ignored by the
    COCO metric, dropped from training targets by the task)."""

    def __init__(self, image_dir: str | Path, ann_file: str | Path, with_masks: bool = False, train: bool = False,
                 transforms: Optional[Callable] = None) -> None:
        from pycocotools.coco import COCO

        super().__init__(train, transforms)
        self.image_dir = _require(Path(image_dir), "COCO image folder")
        self.ann_file = _require(Path(ann_file), "COCO annotation file")
        self.with_masks = with_masks
        try:
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(self.ann_file))
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as exc:
            raise DataError(f"{self.ann_file}: not a valid COCO instances file ({exc!r})") from exc
        self._check_coco_json(self.coco.dataset)
        cat_ids = sorted(self.coco.getCatIds())
        if not cat_ids:
            raise DataError(f"{self.ann_file}: no categories")
        self.cat_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        self.classes = tuple(self.coco.cats[c]["name"] for c in cat_ids)
        for img_id in sorted(self.coco.getImgIds()):
            info = self.coco.imgs[img_id]
            path = self.image_dir / info["file_name"]
            if not path.is_file():
                raise DataError(f"{path}: image listed in {self.ann_file} is missing")
            objects = []
            for ann in self.coco.imgToAnns.get(img_id, []):
                if ann["category_id"] not in self.cat_to_label:
                    raise DataError(f"{self.ann_file}: annotation {ann.get('id')} of {info['file_name']} has "
                                    f"category_id {ann['category_id']}, not one of the categories {cat_ids}")
                x, y, bw, bh = self._bbox(ann, info)
                objects.append({"box": (x, y, x + bw, y + bh), "label": self.cat_to_label[ann["category_id"]],
                                "iscrowd": int(ann.get("iscrowd", 0)), "ann": ann})
            self.add_record(path, objects, info["width"], info["height"], str(self.ann_file),
                            {"coco_id": img_id})
        self.finish(str(self.ann_file))

    def _check_coco_json(self, data: Any) -> None:
        """Duplicate image or annotation ids would merge two images' annotations (pycocotools indexes by id)."""
        for section in ("images", "annotations"):
            items = data.get(section, []) if isinstance(data, dict) else []
            ids = Counter(item.get("id") for item in items if isinstance(item, dict))
            dups = sorted((i for i, n in ids.items() if n > 1), key=str)
            if dups:
                raise DataError(f"{self.ann_file}: duplicate {section[:-1]} ids {dups[:5]} in '{section}' "
                                "(each id must be unique)")
        for item in data.get("images", []) if isinstance(data, dict) else []:
            for key in ("width", "height"):
                value = item.get(key) if isinstance(item, dict) else None
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise DataError(f"{self.ann_file}: image {item.get('id') if isinstance(item, dict) else item!r}"
                                    f" has {key} {value!r}; expected a positive integer")

    def _bbox(self, ann: Dict[str, Any], info: Dict[str, Any]) -> Tuple[float, float, float, float]:
        """The ``[x, y, w, h]`` of an annotation as four finite numbers (strings, nulls, NaN refused)."""
        box = ann.get("bbox")
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in box):
            raise DataError(f"{self.ann_file}: annotation {ann.get('id')} of {info.get('file_name')} has bbox "
                            f"{box!r}; expected [x, y, width, height] as numbers")
        return tuple(float(v) for v in box)  # type: ignore[return-value]

    def object_masks(self, rec: Dict[str, Any]) -> np.ndarray:
        masks = []
        for o in rec["objects"]:
            seg = o["ann"].get("segmentation")
            if not seg:
                raise DataError(f"{self.ann_file}: annotation {o['ann'].get('id')} of {rec['image'].name} has no "
                                "segmentation (needed for instance masks)")
            if isinstance(seg, dict) and list(seg.get("size", [])) != [rec["height"], rec["width"]]:
                raise DataError(f"{self.ann_file}: mask of annotation {o['ann'].get('id')} is {seg.get('size')} "
                                f"(h, w) but image {rec['image'].name} is {[rec['height'], rec['width']]}")
            masks.append(self.coco.annToMask(o["ann"]))
        return np.stack(masks).astype(np.uint8) if masks else np.zeros((0, rec["height"], rec["width"]), np.uint8)


def read_class_list(root: Path, default: Sequence[str]) -> Tuple[str, ...]:
    """``root/classes.txt`` (one name a line) if present, else ``default``."""
    f = root / "classes.txt"
    if f.is_file():
        names = tuple(line.strip() for line in f.read_text().splitlines() if line.strip())
        if not names:
            raise DataError(f"{f}: empty class list")
        return names
    return tuple(default)


class VocDetection(DetectionDataset):
    """PASCAL VOC ``Annotations/*.xml`` + ``JPEGImages`` listed by ``ImageSets/Main/{split}.txt``. Classes:
    ``classes.txt`` in the root if present, else VOC's 20. VOC boxes are 1-based inclusive: converted to
    0-based xyxy with exclusive ends. With ``with_masks``, instances come from ``SegmentationObject`` PNGs
    (index i = i-th object, 255 = border)."""

    def __init__(self, root: str | Path, split: str = "train", classes: Optional[Sequence[str]] = None,
                 with_masks: bool = False, train: bool = False, transforms: Optional[Callable] = None) -> None:
        super().__init__(train, transforms)
        self.root = _require(Path(root), "VOC root")
        self.with_masks = with_masks
        self.classes = tuple(classes) if classes else read_class_list(self.root, VOC_CLASSES)
        index = {n: i + 1 for i, n in enumerate(self.classes)}
        listing = _require(self.root / "ImageSets" / "Main" / f"{split}.txt", "VOC image set")
        for stem in [s.split()[0] for s in listing.read_text().splitlines() if s.strip()]:
            xml_path = _require(self.root / "Annotations" / f"{stem}.xml", "VOC annotation")
            try:
                tree = ET.parse(xml_path).getroot()
                size = tree.find("size")
                width, height = int(size.findtext("width")), int(size.findtext("height"))  # type: ignore
                objects = []
                for k, obj in enumerate(tree.iter("object")):
                    name = (obj.findtext("name") or "").strip()
                    if name not in index:
                        raise DataError(f"{xml_path}: object class {name!r} is not one of {self.classes}")
                    bb = obj.find("bndbox")
                    x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore
                    objects.append({"box": (x0 - 1, y0 - 1, x1, y1), "label": index[name],
                                    "difficult": int(obj.findtext("difficult") or 0), "index": k + 1})
            except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
                raise DataError(f"{xml_path}: malformed VOC annotation ({exc})") from exc
            image = self.root / "JPEGImages" / f"{stem}.jpg"
            if not image.is_file():
                image = _find_image(self.root / "JPEGImages", stem) or image
            if not image.is_file():
                raise DataError(f"{image}: image of {xml_path.name} is missing")
            self.add_record(image, objects, width, height, str(xml_path), {"stem": stem})
        self.finish(str(listing))

    def object_masks(self, rec: Dict[str, Any]) -> np.ndarray:
        path = self.root / "SegmentationObject" / f"{rec['stem']}.png"
        ids = load_mask(path)
        if ids.shape != (rec["height"], rec["width"]):
            raise DataError(f"{path}: mask is {ids.shape[1]}x{ids.shape[0]}, image is {rec['width']}x{rec['height']}")
        # value k in the PNG is the k-th object of the xml (VOC convention)
        n = int(ids[ids != IGNORE_INDEX].max(initial=0))
        if rec["objects"] and n < max(o["index"] for o in rec["objects"]):
            raise DataError(f"{path}: {n} instances but {rec['source']} has more objects")
        return np.stack([ids == o["index"] for o in rec["objects"]]).astype(np.uint8) \
            if rec["objects"] else np.zeros((0,) + ids.shape, np.uint8)


class MaskFolder(Dataset):
    """Images paired with one mask each, matched by file stem.

    ``num_classes`` set: a semantic-segmentation mask of class indices (255 = ignore; any other value
    >= num_classes is an error naming the file). ``num_classes`` None: a saliency mask, binarised as value > 128 (as the SOD toolkits do)
    and returned as float {0, 1}. Items are ``(image (3, H, W), mask (H, W))`` after ``transforms``."""

    def __init__(self, pairs: Sequence[Tuple[Path, Path]], num_classes: Optional[int] = None,
                 transforms: Optional[Callable] = None, source: str = "") -> None:
        if not pairs:
            raise DataError(f"{source}: no image/mask pairs found")
        self.pairs = list(pairs)
        self.num_classes = num_classes
        self.transforms = transforms
        self.skipped: Counter = Counter()
        self.source = source

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, idx: int) -> Tuple[Tensor, Tensor]:
        """Image and mask at their file resolution, checked."""
        img_path, mask_path = self.pairs[idx]
        image = load_rgb(img_path)
        mask = load_mask(mask_path)
        _check_size(mask, image, mask_path)
        if self.num_classes is None:
            return image, torch.from_numpy(saliency_target(mask)).float()
        bad = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            raise DataError(f"{mask_path}: class ids {sorted(set(mask[bad].tolist()))[:5]} outside "
                            f"0..{self.num_classes - 1} (255 = ignore)")
        return image, torch.from_numpy(mask.astype(np.int64))

    def __getitem__(self, idx: int) -> Tuple[Tensor, Tensor]:
        image, mask = self.read(idx)
        img, m = tv_tensors.Image(image), tv_tensors.Mask(mask)
        if self.transforms is not None:
            img, m = self.transforms(img, m)
        return img.as_subclass(Tensor), m.as_subclass(Tensor)


def pair_by_stem(image_dir: Path, mask_dir: Path) -> List[Tuple[Path, Path]]:
    """(image, mask) pairs matched by stem; an image without a mask is a DataError naming it."""
    _require(image_dir, "image folder")
    _require(mask_dir, "mask folder")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    pairs = []
    for img in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        if img.stem not in masks:
            raise DataError(f"{img}: no mask with stem {img.stem!r} in {mask_dir}")
        pairs.append((img, masks[img.stem]))
    return pairs


def segmentation_pairs(root: str | Path, split: str) -> List[Tuple[Path, Path]]:
    """VOC layout (``ImageSets/Segmentation/{split}.txt``, ``JPEGImages``, ``SegmentationClass``) or plain
    folders ``root/{split}/{images,masks}``."""
    root = _require(Path(root), "segmentation data folder")
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if listing.is_file():
        pairs = []
        for stem in [s.split()[0] for s in listing.read_text().splitlines() if s.strip()]:
            img = _find_image(root / "JPEGImages", stem)
            if img is None:
                raise DataError(f"{root / 'JPEGImages' / stem}.jpg: image listed in {listing} is missing")
            mask = root / "SegmentationClass" / f"{stem}.png"
            if not mask.is_file():
                raise DataError(f"{mask}: mask of {img.name} listed in {listing} is missing")
            pairs.append((img, mask))
        return pairs
    base = root / split if (root / split).is_dir() else root
    return pair_by_stem(base / "images", base / "masks")


def saliency_pairs(root: str | Path, split: Optional[str] = None) -> List[Tuple[Path, Path]]:
    """Pairs of a saliency benchmark folder: ``root[/split]`` holding one of :data:`SALIENCY_LAYOUTS`
    (DUTS-TR/TE, ECSSD, HKU-IS, PASCAL-S, DUT-OMRON, plain ``images``/``masks``)."""
    root = _require(Path(root), "saliency data folder")
    bases = ([root / split] if split and (root / split).is_dir() else []) + [root]
    for base in bases:
        for img_dir, mask_dir in SALIENCY_LAYOUTS:
            if (base / img_dir).is_dir() and (base / mask_dir).is_dir():
                return pair_by_stem(base / img_dir, base / mask_dir)
    known = ", ".join(f"{a}/+{b}/" for a, b in SALIENCY_LAYOUTS)
    raise DataError(f"{root}: no image/mask folder pair found (looked for {known})")


def dense_transforms(size: int, train: bool) -> T.Compose:
    """Resize to ``size`` x ``size`` (masks: nearest) and, in training, flip horizontally."""
    ops: List[Any] = [T.Resize((size, size), antialias=True)]
    if train:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops)


def detection_transforms(train: bool) -> Optional[T.Compose]:
    """Training: horizontal flip of image, boxes and masks together. The detector resizes by itself."""
    return T.Compose([T.RandomHorizontalFlip()]) if train else None


def collate_detection(batch: Sequence[Tuple[Tensor, Dict[str, Any]]]) -> Tuple[List[Tensor], List[Dict[str, Any]]]:
    """Lists of images and targets (sizes may differ)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
