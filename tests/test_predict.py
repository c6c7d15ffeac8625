"""Prediction (``res2net predict``, :class:`res2net.Predictor`): folders with bad files, the tensor convention,
a file walk that never hangs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

import res2net
from res2net.cli import main
from res2net.weights import save_pretrained
from test_weights import MODEL, randomize_norms


def test_predict_folder_with_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = randomize_norms(res2net.create_model(MODEL, num_classes=3))
    folder = save_pretrained(model, tmp_path / "m", MODEL, classes=["a", "b", "c"])
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(images / "red.png")
    Image.new("L", (20, 20), 90).save(images / "sub" / "grey.jpg")
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "p.json"
    assert main(["predict", str(images), "--pretrained", str(folder), "--topk", "2", "--json", str(out),
                 "--csv", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 skipped" in err
    records = json.loads(out.read_text())
    assert sorted(Path(r["file"]).name for r in records) == ["grey.jpg", "red.png"]
    for r in records:
        assert [t["class"] for t in r["topk"]] and {t["class"] for t in r["topk"]} <= {"a", "b", "c"}
        assert 0 <= r["topk"][1]["prob"] <= r["topk"][0]["prob"] <= 1
    # the same through the Python API, on a tensor
    p = res2net.Predictor(str(folder), topk=3)
    probs = [t["prob"] for t in p.predict([torch.rand(3, 32, 32)])[0]["topk"]]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--pretrained", str(folder)]) == 2
    assert "no images" in capsys.readouterr().err


def test_predictor_tensor_convention_and_a_walk_that_never_hangs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors: float in [0, 1] or uint8, (C, H, W) with C = 1 or 3; a NaN, out-of-range, wrong-channel, empty or
    integer tensor is skipped, named by its position and warned about (was: "prob nan"; then skipped without a
    word, and the records after it numbered wrongly). The walk skips a looping link, an unreadable folder and an
    oversized file, names each, and classifies the rest."""
    from res2net import predict as predict_module

    model = randomize_norms(res2net.create_model(MODEL, num_classes=3))
    folder = save_pretrained(model, tmp_path / "m", MODEL, classes=["a", "b", "c"])
    p = res2net.Predictor(str(folder), topk=2)
    good = torch.rand(3, 32, 32)
    bad = {"nan": torch.full((3, 8, 8), float("nan")), "range": good * 255, "channels": torch.rand(4, 8, 8),
           "empty": torch.rand(3, 0, 8), "int": torch.ones(3, 8, 8, dtype=torch.int64)}
    with pytest.warns(UserWarning) as caught:
        records = p.predict([good, *bad.values(), (good * 255).round().to(torch.uint8)])
    assert len(records) == 2 and all(math.isfinite(t["prob"]) for r in records for t in r["topk"])
    assert [r["file"] for r in records] == ["<tensor 0>", "<tensor 6>"]
    assert sorted(str(w.message).split(":")[0] for w in caught) == [f"skipped <tensor {i}>" for i in range(1, 6)]
    assert records[0]["topk"][0]["prob"] == pytest.approx(records[1]["topk"][0]["prob"], abs=1e-2)
    reasons = [reason for _, reason in p.skipped]
    for needle in ("NaN", "float images are in [0, 1]", "C = 1 or 3", "empty image", "dtype torch.int64"):
        assert any(needle in r for r in reasons), (needle, reasons)

    images = tmp_path / "images"
    (images / "locked").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(images / "red.png")
    Image.fromarray(torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8).numpy()).save(images / "big.png")
    (images / "loop").symlink_to(images, target_is_directory=True)  # a folder link back up: never followed
    (images / "self.png").symlink_to(images / "self.png")  # a link to itself
    Image.new("RGB", (8, 8)).save(images / "locked" / "hidden.png")
    monkeypatch.setattr(predict_module, "MAX_IMAGE_BYTES", (images / "big.png").stat().st_size - 1)
    os.chmod(images / "locked", 0)
    try:
        locked = not os.access(images / "locked", os.R_OK)  # root reads a 0000 folder
        skipped: list = []
        found = predict_module.find_images([images], skipped)
    finally:
        os.chmod(images / "locked", 0o755)
    assert found == sorted([images / "red.png"] + ([] if locked else [images / "locked" / "hidden.png"]))
    named = " ".join(f"{a} {b}" for a, b in skipped)
    assert "self.png" in named and "big.png" in named and "too large" in named
    assert ("locked" in named) == locked


def test_topk_beyond_the_classes_warns_and_one_unreadable_file_is_one_line(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """Issue 22 probe: ``--topk 50`` on a 3-class model showed 3 without a word; a single file that is no image
    printed a warning naming it and then an error that did not."""
    model = randomize_norms(res2net.create_model(MODEL, num_classes=3))
    folder = save_pretrained(model, tmp_path / "m", MODEL, classes=["a", "b", "c"])
    with pytest.warns(UserWarning, match="topk=50 but res2net17_slim has 3 classes"):
        p = res2net.Predictor(str(folder), topk=50)
    assert p.topk == 3 and res2net.Predictor(str(folder)).topk == 3  # the default asks for no more than there is
    (tmp_path / "x.jpg").write_text("nope")
    assert main(["predict", str(tmp_path / "x.jpg"), "--pretrained", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.jpg" in err[0] and "cannot" in err[0]
