"""Data readers: Fashion-MNIST verification, image folders with bad files, CIFAR-100 pickles, augmentation."""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from res2net.data import (TensorImageDataset, classification_transforms, image_folder_split, load_cifar100,
                          load_fashion_mnist, open_image, progressive_size, random_crop_flip, resize_batch,
                          skip_collate)
from res2net.data import fashion_mnist as fm
from res2net.errors import DataError

HAVE_FMNIST = all((fm.DEFAULT_DIR / n).is_file() for n in fm.GZ_MD5)


@pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_counts_and_checksums() -> None:
    sets = load_fashion_mnist(download=False)
    assert len(sets["train"]) == 60000 and len(sets["test"]) == 10000
    assert sets["train"].images.shape[1:] == (1, 28, 28) and sets["train"].images.dtype == torch.uint8
    assert torch.equal(sets["test"].labels.bincount(), torch.full((10,), 1000))
    assert sets["train"].classes[9] == "Ankle boot"


def _fake_fmnist(folder: Path) -> None:
    """Four well-formed but wrong (tiny) IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in fm.GZ_MD5:
        header = b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (2, 28, 28)) if "images" in name \
            else b"\x00\x00\x08\x01" + (2).to_bytes(4, "big")
        body = bytes(2 * 28 * 28) if "images" in name else bytes(2)
        (folder / name).write_bytes(gzip.compress(header + body))


def test_fashion_mnist_missing_file_is_named(tmp_path: Path) -> None:
    _fake_fmnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is missing.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path), download=False)


def test_fashion_mnist_bad_checksum_and_counts(tmp_path: Path) -> None:
    _fake_fmnist(tmp_path)
    with pytest.raises(DataError, match="md5"):
        load_fashion_mnist(str(tmp_path), download=False)
    with pytest.raises(DataError, match="expected 60000"):
        load_fashion_mnist(str(tmp_path), download=False, verify=False)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not a valid .gz"):
        load_fashion_mnist(str(tmp_path), download=False)


@pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_truncated_copy(tmp_path: Path) -> None:
    for name in fm.GZ_MD5:
        shutil.copy(fm.DEFAULT_DIR / name, tmp_path / name)
    raw = gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz fails its md5"):
        load_fashion_mnist(str(tmp_path), download=False)


def test_random_crop_flip() -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.uint8).view(2, 3, 5, 5)
    assert torch.equal(random_crop_flip(x, 0, flip=False), x)
    torch.manual_seed(0)
    out = random_crop_flip(x, 2, flip=True)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # each output is one window of its own padded image, maybe mirrored
        windows = [padded[i, :, a:a + 5, b:b + 5] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


def test_progressive_resizing_schedule_and_resize() -> None:
    fmnist = [0.5714, 0.7143, 0.8571, 1.0]  # the default recipe's scales of 28 px
    assert [progressive_size(28, fmnist, e, 4) for e in range(4)] == [16, 20, 24, 28]
    assert [progressive_size(28, fmnist, e, 8) for e in range(8)] == [16, 16, 20, 20, 24, 24, 28, 28]
    assert [progressive_size(28, fmnist, e, 2) for e in range(2)] == [16, 28]  # the last epoch: native
    assert progressive_size(28, fmnist, 0, 1) == 28
    assert [progressive_size(224, [0.5, 0.75, 1.0], e, 5) for e in range(5)] == [112, 168, 168, 224, 224]
    with pytest.raises(ValueError):
        progressive_size(28, [], 0, 4)
    x = torch.rand(3, 2, 28, 28)
    assert resize_batch(x, 28) is x
    from torchvision.transforms.v2 import functional as TF
    for size in (20, 36):  # shrinking antialiased, enlarging plain bilinear: torchvision's resize on tensors
        ref = TF.resize(x, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        torch.testing.assert_close(resize_batch(x, size), ref, atol=1e-5, rtol=0)


def test_tensor_dataset_batches() -> None:
    ds = TensorImageDataset(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10), ["a"] * 10)
    x, y = ds.__getitems__([3, 1])
    assert x.shape == (2, 1, 4, 4) and y.tolist() == [3, 1]
    assert len(ds.subset(4, seed=1)) == 4


def _write_images(root: Path) -> None:
    """Class folders with every colour mode plus three bad files."""
    for cls in ("cat", "dog"):
        (root / "train" / cls).mkdir(parents=True)
        (root / "val" / cls).mkdir(parents=True)
    Image.new("L", (20, 16), 128).save(root / "train" / "cat" / "grey.png")
    Image.new("CMYK", (20, 16), (0, 128, 0, 0)).save(root / "train" / "cat" / "cmyk.jpg")
    Image.new("RGBA", (20, 16), (255, 0, 0, 100)).save(root / "train" / "dog" / "rgba.png")
    pal = Image.new("P", (20, 16), 3)
    pal.info["transparency"] = 3
    pal.save(root / "train" / "dog" / "palette.png")
    Image.new("RGB", (20, 16), (0, 0, 255)).save(root / "val" / "dog" / "rgb.jpg")
    Image.new("RGB", (20, 16), (0, 255, 0)).save(root / "val" / "cat" / "rgb.png")
    (root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    (root / "train" / "dog" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")


def test_open_image_converts_modes(tmp_path: Path) -> None:
    _write_images(tmp_path)
    for name in ("cat/grey.png", "cat/cmyk.jpg", "dog/rgba.png", "dog/palette.png"):
        img = open_image(str(tmp_path / "train" / name))
        assert img.mode == "RGB" and img.size == (20, 16)
    assert open_image(str(tmp_path / "train" / "cat" / "cmyk.jpg"), channels=1).mode == "L"


def test_image_folder_skips_bad_files(tmp_path: Path) -> None:
    _write_images(tmp_path)
    tf = classification_transforms(True, 8, 1.0, (0.5,) * 3, (0.25,) * 3)
    ds = image_folder_split(tmp_path, "train", tf)
    assert ds.classes == ["cat", "dog"]
    assert sorted(Path(p).name for p, _ in ds.bad_files) == ["empty.jpg", "notes.txt"]
    images, labels, bad = skip_collate([ds[i] for i in range(len(ds))])
    assert images.shape == (4, 3, 8, 8) and len(labels) == 4
    assert [Path(p).name for p, _ in bad] == ["corrupt.jpg"]


def test_flat_val_folder_with_label_file(tmp_path: Path) -> None:
    _write_images(tmp_path)
    flat = tmp_path / "flatval"
    flat.mkdir()
    Image.new("RGB", (20, 16)).save(flat / "a.jpg")
    Image.new("RGB", (20, 16)).save(flat / "b.jpg")
    (tmp_path / "flatval_labels.txt").write_text("a.jpg dog\nb.jpg 0\nmissing.jpg cat\n")
    tf = classification_transforms(False, 8, 0.875, (0.5,) * 3, (0.25,) * 3)
    ds = image_folder_split(tmp_path, "flatval", tf, classes=["cat", "dog"])
    assert [label for _, label in ds.samples] == [1, 0] and ds[0][0].shape == (3, 8, 8)
    assert [Path(p).name for p, _ in ds.bad_files] == ["missing.jpg"]


def test_cifar100_pickles(tmp_path: Path) -> None:
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for split, n in (("train", 6), ("test", 4)):
        with open(root / split, "wb") as f:
            pickle.dump({"data": torch.randint(0, 255, (n, 3072), dtype=torch.uint8).numpy(),
                         "fine_labels": list(range(n)), "coarse_labels": [0] * n}, f)
    with open(root / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    sets = load_cifar100(str(tmp_path))
    assert sets["train"].images.shape == (6, 3, 32, 32) and sets["test"].labels.tolist() == [0, 1, 2, 3]
    assert sets["train"].classes[5] == "c5"
    with pytest.raises(DataError, match="cifar-100-python"):
        load_cifar100(str(tmp_path / "nowhere"))


# ---- decoding: every mode, 16 bits, any decoder rejection -----------------------------------------------------
def test_every_mode_converts_and_16_bit_is_scaled(tmp_path: Path) -> None:
    import numpy as np

    from res2net.data.images import to_8bit

    grey16 = tmp_path / "grey16.png"
    Image.fromarray(np.array([[0, 257 * 128, 65535, 4096]], dtype=np.uint16)).save(grey16)
    assert Image.open(grey16).mode == "I;16"
    assert np.asarray(open_image(str(grey16), channels=1)).ravel().tolist() == [0, 128, 255, 16]  # scaled, not clipped at 255
    assert open_image(str(grey16)).getpixel((3, 0)) == (16, 16, 16)
    cases = {("I", 257 * 200): (200,) * 3, ("F", 0.5): (128,) * 3, ("F", 300.0): (255,) * 3,
             ("LA", (90, 10)): (90,) * 3, ("La", (90, 255)): (90,) * 3, ("PA", (0, 255)): None,
             ("RGBa", (100, 50, 20, 255)): (100, 50, 20), ("1", 1): (255,) * 3, ("CMYK", (0, 0, 0, 0)): (255,) * 3,
             ("YCbCr", (255, 128, 128)): (255,) * 3, ("HSV", (0, 255, 255)): (255, 0, 0),
             ("LAB", (255, 128, 128)): (255,) * 3, ("I;16B", 65535): (255,) * 3, ("RGBX", (1, 2, 3, 0)): (1, 2, 3)}
    for (mode, value), expected in cases.items():
        img = to_8bit(Image.new(mode, (2, 2), value), "RGB")
        assert img.mode == "RGB" and img.size == (2, 2), mode
        if expected is not None:
            assert all(abs(a - b) <= 2 for a, b in zip(img.getpixel((0, 0)), expected)), (mode, img.getpixel((0, 0)))
        assert to_8bit(Image.new(mode, (2, 2), value), "L").mode == "L"


def test_any_decoder_rejection_is_skipped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import PIL.Image

    _write_images(tmp_path)
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "train" / "dog" / "bomb.png")
    (tmp_path / "train" / "cat" / "text.png").write_text("not a png at all")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 500)  # 40x40 > 2x500 pixels: DecompressionBombError
    tf = classification_transforms(False, 8, 1.0, (0.5,) * 3, (0.25,) * 3)
    ds = image_folder_split(tmp_path, "train", tf)
    images, labels, bad = skip_collate([ds[i] for i in range(len(ds))])
    reasons = {Path(p).name: r for p, r in bad}
    assert set(reasons) == {"corrupt.jpg", "bomb.png", "text.png"} and len(labels) == images.shape[0] == 4
    assert reasons["bomb.png"].startswith("DecompressionBombError") and "\n" not in reasons["bomb.png"]
    with pytest.raises(DataError, match="cannot decode image .*bomb.png: DecompressionBombError"):
        open_image(str(tmp_path / "train" / "dog" / "bomb.png"))


def test_one_class_folder_fails_before_training(tmp_path: Path) -> None:
    _write_images(tmp_path)
    shutil.rmtree(tmp_path / "train" / "dog")
    tf = classification_transforms(True, 8, 1.0, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(DataError, match=r"holds 1 class folder\(s\) \(cat\); a classifier needs at least 2"):
        image_folder_split(tmp_path, "train", tf)


def test_a_given_data_dir_is_the_only_place_looked_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # even with a cached copy, a wrong --data-dir fails
    with pytest.raises(DataError, match=f"--data-dir {tmp_path / 'missing'} does not exist"):
        fm.find_dir(str(tmp_path / "missing"), download=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"file {tmp_path / 'empty'}/train-images-idx3-ubyte.gz is missing"):
        fm.find_dir(str(tmp_path / "empty"), download=False)


# ---- dense data -----------------------------------------------------------------------------------------
def _coco(tmp_path: Path, images: list, annotations: list) -> Path:
    import json

    (tmp_path / "img").mkdir(exist_ok=True)
    for im in images:
        Image.new("RGB", (im["width"], im["height"])).save(tmp_path / "img" / im["file_name"])
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path


def test_coco_duplicate_ids_and_bad_boxes_are_refused(tmp_path: Path) -> None:
    from res2net.data.dense import CocoDetection

    img = {"id": 1, "file_name": "a.png", "width": 16, "height": 16}
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
    path = _coco(tmp_path, [img, {**img, "file_name": "b.png"}], [ann])
    with pytest.raises(DataError, match=r"duplicate image ids \[1\]"):
        CocoDetection(tmp_path / "img", path)
    path = _coco(tmp_path, [img], [{**ann, "bbox": ["1", "1", "5", "5"]}])
    with pytest.raises(DataError, match=r"annotation 1 of a.png has bbox \['1', '1', '5', '5'\]; expected"):
        CocoDetection(tmp_path / "img", path)
    path = _coco(tmp_path, [img], [{**ann, "bbox": [20, 20, 5, 5]}])  # outside the image: nothing usable
    with pytest.raises(DataError, match="no image with a usable annotation for training .*1 degenerate boxes"):
        CocoDetection(tmp_path / "img", path, train=True)
    assert len(CocoDetection(tmp_path / "img", path, train=False)) == 1  # evaluation keeps the image


def test_16_bit_masks_are_not_wrapped(tmp_path: Path) -> None:
    import numpy as np

    from res2net.data.dense import MaskFolder

    Image.new("RGB", (4, 2)).save(tmp_path / "x.png")
    Image.fromarray(np.array([[0, 1, 256, 1], [0, 0, 1, 1]], dtype=np.uint16)).save(tmp_path / "m16.png")
    with pytest.raises(DataError, match=r"class ids \[256\] outside 0..2"):  # 256 would have wrapped to 0
        MaskFolder([(tmp_path / "x.png", tmp_path / "m16.png")], num_classes=3).read(0)
    Image.fromarray(np.array([[0, 65535, 30000, 40000]] * 2, dtype=np.uint16)).save(tmp_path / "s16.png")
    _, mask = MaskFolder([(tmp_path / "x.png", tmp_path / "s16.png")]).read(0)  # saliency: binarised mid-range
    assert mask[0].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_scaled_set_is_deterministic_scaled_within_range_and_made_from_its_own_split() -> None:
    """fashion-mnist-scaled: the same seed gives the same set, another seed another; every factor
    lies in the range and each item's side is round(28 x factor); at scale 1 each canvas holds its source image
    (item i from source image i of the same split) exactly, and nothing else."""
    from res2net.data.scaled import scale_onto_canvas

    if HAVE_FMNIST:
        sets = load_fashion_mnist(download=False)
        train, test = sets["train"].images[:300], sets["test"].images[:300]
    else:
        g = torch.Generator().manual_seed(0)
        train, test = (torch.randint(0, 256, (300, 1, 28, 28), generator=g, dtype=torch.uint8) for _ in range(2))
    a = scale_onto_canvas(train, 64, (0.35, 2.0), clutter=2, seed=3)
    b = scale_onto_canvas(train, 64, (0.35, 2.0), clutter=2, seed=3)
    assert torch.equal(a.images, b.images) and a.images.shape == (300, 1, 64, 64)
    assert not torch.equal(a.images, scale_onto_canvas(train, 64, (0.35, 2.0), clutter=2, seed=4).images)
    assert 0.35 <= a.factors.min() and a.factors.max() <= 2.0 and a.factors.max() / a.factors.min() > 3
    assert torch.equal(a.sides, (28 * a.factors.double()).round().long())
    assert bool(((a.corners >= 0) & (a.corners + a.sides[:, None] <= 64)).all())
    for split in (train, test):
        one = scale_onto_canvas(split, 56, (1.0, 1.0), seed=1)
        for i in range(0, 300, 37):
            r, c = one.corners[i].tolist()
            assert torch.equal(one.images[i, :, r:r + 28, c:c + 28], split[i])
            outside = one.images[i].clone()
            outside[:, r:r + 28, c:c + 28] = 0
            assert int(outside.sum()) == 0
    with pytest.raises(ValueError, match="cannot hold an item scaled by 2.0"):
        scale_onto_canvas(train, 48, (0.5, 2.0))


def test_scaled_set_keys_apply_to_the_scaled_set_only() -> None:
    from res2net.errors import ConfigError
    from res2net.tasks.classification.config import DataSection
    from res2net.tasks.classification.data import load_data

    with pytest.raises(ConfigError, match="data.scale_range, data.clutter apply to data.dataset=fashion-mnist-scaled"):
        load_data(DataSection(dataset="fashion-mnist", scale_range=[0.5, 1.0], clutter=1), "res2net17_slim")


@pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed")
def test_scaled_sets_are_made_from_their_own_splits_and_remade_by_split_seed() -> None:
    """load_fashion_mnist_scaled: the train set is made from the training split and the test set from the test
    split (item i from source image i, with its label), each with its own draw (split_seed), which
    scale_onto_canvas remakes exactly."""
    from res2net.data.scaled import load_fashion_mnist_scaled, scale_onto_canvas, split_seed

    source = load_fashion_mnist(download=False)
    sets = load_fashion_mnist_scaled(download=False, canvas=32, scale_range=(1.0, 1.0), seed=5)
    corners = {}
    for split in ("train", "test"):
        made = scale_onto_canvas(source[split].images, 32, (1.0, 1.0), seed=split_seed(5, split))
        assert torch.equal(made.images, sets[split].images)
        assert torch.equal(sets[split].labels, source[split].labels)
        for i in range(0, len(made.images), 997):
            r, c = made.corners[i].tolist()
            assert torch.equal(sets[split].images[i, :, r:r + 28, c:c + 28], source[split].images[i])
        corners[split] = made.corners[:1000]
    assert not torch.equal(corners["train"], corners["test"])  # the splits' draws are not paired
