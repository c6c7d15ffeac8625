"""Generated scenes are real data files: the dense readers read them back consistently; bad input is named or
counted, never silently wrong."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from res2net.data.dense import (CocoDetection, MaskFolder, VocDetection, saliency_pairs, segmentation_pairs)
from res2net.data.scenes import SCENE_CLASSES, generate_scenes
from res2net.errors import DataError


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_scenes(root, n_train=6, n_val=3, size=128, seed=1)
    return root


def coco_train(root: Path, **kw) -> CocoDetection:
    return CocoDetection(root / "coco" / "train", root / "coco" / "annotations" / "instances_train.json", **kw)


def test_all_layouts_written(scenes):
    assert (scenes / "coco" / "annotations" / "instances_val.json").is_file()
    assert len(list((scenes / "voc" / "JPEGImages").glob("*.jpg"))) == 9
    assert (scenes / "voc" / "classes.txt").read_text().split() == list(SCENE_CLASSES)
    assert len(list((scenes / "saliency" / "val" / "masks").glob("*.png"))) == 3
    with Image.open(scenes / "voc" / "SegmentationClass" / "train_00000.png") as im:
        assert im.mode == "P"


def test_readers_agree(scenes):
    coco = coco_train(scenes, with_masks=True)
    voc = VocDetection(scenes / "voc", "train", with_masks=True)
    sal = MaskFolder(saliency_pairs(scenes / "saliency", "train"))
    seg = MaskFolder(segmentation_pairs(scenes / "voc", "train"), num_classes=len(SCENE_CLASSES) + 1)
    assert len(coco) == len(voc) == len(sal) == len(seg) == 6
    assert coco.classes == voc.classes == SCENE_CLASSES
    for i in range(len(coco)):
        (img_c, t_c), (img_v, t_v) = coco[i], voc[i]
        assert img_c.shape == (3, 128, 128) and 0 <= img_c.min() and img_c.max() <= 1
        assert torch.equal(t_c["boxes"].as_subclass(torch.Tensor), t_v["boxes"].as_subclass(torch.Tensor))
        assert torch.equal(t_c["labels"], t_v["labels"])
        assert torch.equal(t_c["masks"].as_subclass(torch.Tensor), t_v["masks"].as_subclass(torch.Tensor))
        union = t_c["masks"].as_subclass(torch.Tensor).any(0)
        assert torch.equal(union.float(), sal[i][1])  # every object is salient
        cls = seg[i][1]
        known = cls != 255
        assert torch.equal((cls[known] > 0), union[known])
        # boxes are tight around the instance masks
        for box, m in zip(t_c["boxes"], t_c["masks"]):
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_object_sizes_span_coco_buckets(tmp_path):
    generate_scenes(tmp_path, n_train=40, n_val=1, size=128, seed=0, formats=["coco"])
    areas = [a["area"] for a in json.loads((tmp_path / "coco/annotations/instances_train.json").read_text())
             ["annotations"]]
    assert min(areas) < 32 ** 2 and any(32 ** 2 <= a < 96 ** 2 for a in areas) and max(areas) >= 96 ** 2


def test_generation_is_deterministic(tmp_path):
    a = generate_scenes(tmp_path / "a", 2, 1, size=64, seed=3, formats=["saliency"])["saliency"]
    b = generate_scenes(tmp_path / "b", 2, 1, size=64, seed=3, formats=["saliency"])["saliency"]
    for f in ("train/masks/train_00001.png", "val/images/val_00000.jpg"):
        assert (a / f).read_bytes() == (b / f).read_bytes()


def test_validation_scenes_do_not_depend_on_the_training_count(tmp_path):
    a = generate_scenes(tmp_path / "a", 2, 3, size=64, seed=3, formats=["saliency"])["saliency"]
    b = generate_scenes(tmp_path / "b", 5, 2, size=64, seed=3, formats=["saliency"])["saliency"]
    for f in ("val/images/val_00000.jpg", "val/images/val_00001.jpg", "train/images/train_00001.jpg"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f  # the same streams, a longer or shorter prefix
    assert (a / "train/images/train_00000.jpg").read_bytes() != (a / "val/images/val_00000.jpg").read_bytes()
    assert json.loads((tmp_path / "a" / "scenes.json").read_text())["generator"] == 2


def test_unknown_format_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown scene format"):
        generate_scenes(tmp_path, 1, 1, formats=["kitti"])


# ---- bad input -----------------------------------------------------------------------------------------------
def _edit_coco(scenes: Path, tmp_path: Path, edit) -> Path:
    root = tmp_path / "coco"
    shutil.copytree(scenes / "coco", root)
    ann = root / "annotations" / "instances_train.json"
    doc = json.loads(ann.read_text())
    edit(doc, root)
    ann.write_text(json.dumps(doc))
    return root


def test_coco_missing_image_named(scenes, tmp_path):
    root = _edit_coco(scenes, tmp_path, lambda d, r: (r / "train" / "train_00002.png").unlink())
    with pytest.raises(DataError, match="train_00002.png"):
        coco_train(tmp_path)


def test_coco_bad_category_named(scenes, tmp_path):
    def edit(doc, _):
        doc["annotations"][0]["category_id"] = 99
    _edit_coco(scenes, tmp_path, edit)
    with pytest.raises(DataError, match="instances_train.json.*category_id 99"):
        coco_train(tmp_path)


def test_coco_degenerate_and_empty_counted(scenes, tmp_path):
    def edit(doc, _):
        first = doc["annotations"][0]["image_id"]
        doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != first]  # image 1: no annotations
        doc["annotations"][0]["bbox"][2] = 0  # a zero-width box
    _edit_coco(scenes, tmp_path, edit)
    train = coco_train(tmp_path, train=True)
    assert train.skipped == {"images_without_annotations": 1, "degenerate_boxes": 1}
    assert len(train) == 5
    val = coco_train(tmp_path, train=False)  # evaluation keeps the empty image (its false positives count)
    assert len(val) == 6 and val.skipped["degenerate_boxes"] == 1


def test_coco_mask_size_mismatch_named(scenes, tmp_path):
    def edit(doc, _):
        doc["annotations"][0]["segmentation"]["size"] = [64, 64]
    _edit_coco(scenes, tmp_path, edit)
    ds = coco_train(tmp_path, with_masks=True)
    with pytest.raises(DataError, match="instances_train.json.*mask of annotation"):
        ds[0]


def test_voc_unknown_class_named(scenes, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(scenes / "voc", root)
    xml = root / "Annotations" / "train_00001.xml"
    text = xml.read_text()
    xml.write_text(text.replace(f"<name>{SCENE_CLASSES[0]}</name>", "<name>zebra</name>")
                   .replace(f"<name>{SCENE_CLASSES[1]}</name>", "<name>zebra</name>")
                   .replace(f"<name>{SCENE_CLASSES[2]}</name>", "<name>zebra</name>")
                   .replace(f"<name>{SCENE_CLASSES[3]}</name>", "<name>zebra</name>"))
    with pytest.raises(DataError, match="train_00001.xml.*zebra"):
        VocDetection(root, "train")


def test_segmentation_bad_masks_named(scenes, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(scenes / "voc", root)
    mask = root / "SegmentationClass" / "train_00000.png"
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(mask)  # wrong size
    arr = np.zeros((128, 128), np.uint8)
    arr[0, 0] = 9  # class id out of range
    Image.fromarray(arr).save(root / "SegmentationClass" / "train_00001.png")
    ds = MaskFolder(segmentation_pairs(root, "train"), num_classes=5)
    with pytest.raises(DataError, match="train_00000.png: mask is 60x50"):
        ds[0]
    with pytest.raises(DataError, match="train_00001.png: class ids \\[9\\]"):
        ds[1]
    (root / "SegmentationClass" / "train_00003.png").unlink()
    with pytest.raises(DataError, match="train_00003.png: mask of"):
        segmentation_pairs(root, "train")


def test_saliency_missing_mask_named(scenes, tmp_path):
    root = tmp_path / "sal"
    shutil.copytree(scenes / "saliency", root)
    (root / "val" / "masks" / "val_00001.png").unlink()
    with pytest.raises(DataError, match="val_00001.jpg: no mask"):
        saliency_pairs(root, "val")
    with pytest.raises(DataError, match="no image/mask folder pair"):
        saliency_pairs(tmp_path, "val")


def test_saliency_benchmark_layouts(scenes, tmp_path):
    root = tmp_path / "DUTS-TE"
    shutil.copytree(scenes / "saliency" / "val" / "images", root / "DUTS-TE-Image")
    shutil.copytree(scenes / "saliency" / "val" / "masks", root / "DUTS-TE-Mask")
    assert len(saliency_pairs(root)) == 3
