"""Segmentation: DeepLab v3+ structure, metrics against a hand-worked confusion matrix and torchmetrics, and
`res2net segment train|eval|predict` end to end on generated scenes."""

import json

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from res2net.cli import main
from res2net.errors import ConfigError
from res2net.tasks.segmentation import DeepLabV3Plus, SegmentationModelConfig, segmentation_report


def test_report_hand_worked():
    # rows = ground truth, columns = prediction; class 2 never occurs in either
    cm = torch.tensor([[5, 1, 0], [2, 2, 0], [0, 0, 0]])
    r = segmentation_report(cm, ["bg", "a", "b"])
    assert r["per_class_iou"] == {"bg": pytest.approx(5 / 8), "a": pytest.approx(2 / 5), "b": None}
    assert r["miou"] == pytest.approx((5 / 8 + 2 / 5) / 2)
    assert r["pixel_acc"] == pytest.approx(7 / 10)


def test_report_matches_torchmetrics():
    from torchmetrics.classification import MulticlassConfusionMatrix

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 20, 20), generator=g)
    target[:, :2] = 255
    pred = torch.where(torch.rand(3, 20, 20, generator=g) < 0.6, target.clamp(max=3),
                       torch.randint(0, 4, (3, 20, 20), generator=g))
    cm = MulticlassConfusionMatrix(4, ignore_index=255)(pred, target)
    r = segmentation_report(cm, list("abcd"))
    iou = MulticlassJaccardIndex(4, average=None, ignore_index=255)(pred, target)
    acc = MulticlassAccuracy(4, average="micro", ignore_index=255)(pred, target)
    assert [r["per_class_iou"][c] for c in "abcd"] == pytest.approx(iou.tolist())
    assert r["miou"] == pytest.approx(float(iou.mean()))
    assert r["pixel_acc"] == pytest.approx(float(acc))


def test_deeplab_structure():
    model = DeepLabV3Plus(SegmentationModelConfig(name="res2net50_26w_4s"), num_classes=5).eval()
    rates = [m[0].dilation[0] for m in model.aspp.convs[1:4]]
    assert rates == [6, 12, 18]
    assert model.project[0].out_channels == 48
    assert [f["reduction"] for f in model.backbone.feature_info] == [4, 16]  # stride-4 low level, OS 16
    x = torch.rand(1, 3, 64, 64)
    low, high = model.backbone(model.normalize(x))
    assert low.shape[-1] == 16 and high.shape[-1] == 4
    assert model(x).shape == (1, 5, 64, 64)
    assert model.decoder[0][0].out_channels == 256 and model.aspp.project[0].out_channels == 256
    lite = DeepLabV3Plus(SegmentationModelConfig(name="res2net26_lite", head_channels=96), num_classes=5)
    assert lite.decoder[0][0].in_channels == 96 + 48 and lite.aspp.project[0].out_channels == 96
    with pytest.raises(ConfigError, match="head_channels"):
        DeepLabV3Plus(SegmentationModelConfig(name="res2net26_lite", head_channels=0), num_classes=5)


@pytest.mark.slow
def test_segment_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["segment", "train", "--model", "resnet50", "--data", "synthetic", "--steps", "1", "--batch-size", "2",
            "--input-size", "64", "--quiet", "--out", str(out), "--set", "data.synthetic_train=4",
            "--set", "data.synthetic_val=2", "--frozen-stages", "1"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"miou", "pixel_acc", "per_class_iou"}
    assert list(metrics["per_class_iou"]) == ["background", "disc", "square", "triangle", "ring"]
    # resuming a finished run trains nothing and re-evaluates the final weights
    (out / "metrics.json").unlink()
    assert main(args + ["--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["miou"] == pytest.approx(metrics["miou"], abs=1e-4)
    assert main(["segment", "eval", "--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "ev")]) == 0
    trained = (out / "metrics.json").read_text()
    assert main(["segment", "eval", "--checkpoint", str(out / "last.pt"), "--random-weights"]) == 0
    assert (out / "metrics.json").read_text() == trained  # the untrained reference goes to its own folder
    fresh = json.loads((out / "random-weights" / "metrics.json").read_text())
    assert set(fresh) == set(metrics) and 0.0 <= fresh["miou"] <= 1.0
    assert main(["segment", "predict", "--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "pred"),
                 "--input", str(out / "data" / "voc" / "JPEGImages" / "val_00000.jpg")]) == 0
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.png")) == ["val_00000_mask.png", "val_00000_seg.png"]
    # the classification commands name the checkpoint's task instead of listing missing keys
    image = str(out / "data" / "voc" / "JPEGImages" / "val_00000.jpg")
    for command in (["predict", image, "--checkpoint", str(out / "last.pt")],
                    ["eval", "--checkpoint", str(out / "last.pt"), "--dataset", "fashion-mnist"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "is a segmentation checkpoint, not a classifier's: use `res2net segment predict/eval`" in err, err


def test_a_backbone_that_cannot_give_the_stride_is_named(tmp_path, capsys) -> None:
    """Issue 22 probe: a CIFAR-stem backbone got "output_stride must be one of (4,)", naming neither the model nor
    a value the user could pass."""
    assert main(["segment", "train", "--data", "synthetic", "--model", "res2net20_cifar", "--steps", "1",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "res2net20_cifar" in err and "output_stride 16" in err and len(err.strip().splitlines()) == 1
