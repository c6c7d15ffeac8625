"""Detection: VOC07 mAP on a hand-worked case, COCO metrics against pycocotools, frozen backbone layers,
and `res2net detect train|eval|predict` end to end on generated scenes."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from res2net.cli import main
from res2net.data.dense import CocoDetection
from res2net.data.scenes import generate_scenes
from res2net.tasks.detection import (COCO_KEYS, DetectionModelConfig, build_detector, detection_report, voc07_map)


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def test_voc07_hand_worked():
    targets = [
        {"boxes": t([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 60, 60]]), "labels": t([1, 1, 2], torch.int64),
         "difficult": t([0, 0, 0], torch.bool)},
        {"boxes": t([[0, 0, 10, 10], [50, 50, 60, 60]]), "labels": t([1, 1], torch.int64),
         "difficult": t([0, 1], torch.bool)},
    ]
    preds = [
        {"boxes": t([[0, 0, 10, 10], [0, 0, 10, 10], [40, 40, 60, 60], [0, 0, 5, 5]]),
         "scores": t([0.9, 0.8, 0.3, 0.2]), "labels": t([1, 1, 2, 3], torch.int64)},
        {"boxes": t([[50, 50, 60, 60], [100, 100, 110, 110], [0, 0, 10, 9]]),
         "scores": t([0.7, 0.6, 0.5]), "labels": t([1, 1, 1], torch.int64)},
    ]
    # class 1, by score: TP, FP (duplicate), difficult (ignored), FP, TP; 3 positives.
    # recall 1/3 at precision 1 -> 4 of the 11 points are 1; recall 2/3 at precision 1/2 -> 3 points are 0.5.
    # class 2: one TP -> AP 1. class 3 has no ground truth -> left out of the mean.
    mean, per_class = voc07_map(preds, targets, num_classes=4)
    assert per_class[1] == pytest.approx(5.5 / 11)
    assert per_class[2] == pytest.approx(1.0)
    assert 3 not in per_class
    assert mean == pytest.approx((5.5 / 11 + 1.0) / 2)


@pytest.fixture(scope="module")
def val_scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    generate_scenes(root, n_train=1, n_val=12, size=128, seed=5, formats=["coco"])
    return root / "coco"


def _noisy_predictions(ds, rng):
    preds, targets = [], []
    for i in range(len(ds)):
        _, tg = ds[i]
        boxes = tg["boxes"].as_subclass(torch.Tensor)
        masks = tg["masks"].as_subclass(torch.Tensor).bool()
        n = len(boxes)
        jitter = torch.from_numpy(rng.normal(0, 3, (n, 4))).float()
        pb = (boxes + jitter).clamp(0, 128)
        pb[:, 2:] = torch.maximum(pb[:, 2:], pb[:, :2] + 1)
        labels = tg["labels"].clone()
        flip = torch.from_numpy(rng.random(n) < 0.2)
        labels[flip] = labels[flip] % 4 + 1
        pm = torch.roll(masks, shifts=int(rng.integers(-3, 4)), dims=2)
        extra = torch.tensor([[5.0, 5.0, 40.0, 40.0]])  # a false positive per image
        preds.append({"boxes": torch.cat([pb, extra]), "scores": torch.from_numpy(rng.random(n + 1)).float(),
                      "labels": torch.cat([labels, torch.tensor([1])]),
                      "masks": torch.cat([pm, torch.zeros(1, 128, 128, dtype=torch.bool)])})
        targets.append({"boxes": boxes, "labels": tg["labels"], "iscrowd": tg["iscrowd"], "masks": masks,
                        "difficult": tg["difficult"], "area": tg["area"]})
    return preds, targets


def test_coco_metrics_match_pycocotools(val_scenes):
    from pycocotools import mask as mask_utils
    from pycocotools.cocoeval import COCOeval

    ds = CocoDetection(val_scenes / "val", val_scenes / "annotations" / "instances_val.json", with_masks=True)
    preds, targets = _noisy_predictions(ds, np.random.default_rng(0))
    report = detection_report(preds, targets, num_classes=5, masks=True)
    assert set(report) == {"bbox", "segm", "voc07_map50"}
    assert set(report["bbox"]) == set(COCO_KEYS) == set(report["segm"])

    results = {"bbox": [], "segm": []}
    for rec, p in zip(ds.records, preds):
        for b, s, lab, m in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist(), p["masks"]):
            common = {"image_id": rec["coco_id"], "category_id": ds.label_to_cat[lab], "score": s}
            results["bbox"].append({**common, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
            rle = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            results["segm"].append({**common, "segmentation": rle})
    stats_index = {"map": 0, "map_50": 1, "map_75": 2, "map_small": 3, "map_medium": 4, "map_large": 5,
                   "mar_small": 9, "mar_medium": 10, "mar_large": 11}
    for iou_type in ("bbox", "segm"):
        with contextlib.redirect_stdout(io.StringIO()):
            dt = ds.coco.loadRes(results[iou_type])
            ev = COCOeval(ds.coco, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        for key, idx in stats_index.items():
            assert report[iou_type][key] == pytest.approx(ev.stats[idx], abs=1e-6), (iou_type, key)
    assert 0.2 < report["bbox"]["map_50"] < 1.0


def test_perfect_detections_score_one(val_scenes):
    ds = CocoDetection(val_scenes / "val", val_scenes / "annotations" / "instances_val.json")
    preds, targets = [], []
    for i in range(len(ds)):
        tg = ds[i][1]
        boxes = tg["boxes"].as_subclass(torch.Tensor)
        preds.append({"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": tg["labels"]})
        targets.append({"boxes": boxes, "labels": tg["labels"], "iscrowd": tg["iscrowd"],
                        "difficult": tg["difficult"]})
    report = detection_report(preds, targets, num_classes=5)
    assert report["voc07_map50"] == pytest.approx(1.0)
    assert report["bbox"]["map"] == pytest.approx(1.0)


def test_frozen_layers_really_frozen():
    torch.manual_seed(0)
    cfg = DetectionModelConfig(name="res2net50_26w_4s", frozen_stages=1, norm="frozen",
                               rpn_batch_size_per_image=32, box_batch_size_per_image=32)
    model = build_detector(cfg, num_classes=3, image_size=64)
    body = model.backbone.body
    norms = [m for m in body.modules() if "Norm" in type(m).__name__]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    frozen = [body.conv1, body.layer1]
    trained = [body.layer2, body.layer3, body.layer4]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in trained for p in m.parameters())
    before = {k: v.clone() for k, v in body.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 20.0, 60.0, 60.0]]), "labels": torch.tensor([2])}]
    sum(model(images, targets).values()).backward()
    opt.step()
    after = body.state_dict()
    for key in before:
        same = torch.equal(before[key], after[key])
        if key.startswith(("conv1.", "bn1.", "layer1.")) or "bn" in key or "downsample.1" in key:
            assert same, f"{key} changed although frozen"
    assert not torch.equal(before["layer2.0.conv1.weight"], after["layer2.0.conv1.weight"])


def test_head_sizes_reach_torchvision():
    """The CPU-sizing keys (FPN width, RPN proposal counts) reach torchvision's modules."""
    cfg = DetectionModelConfig(name="res2net26_lite", fpn_channels=96, rpn_pre_nms_top_n_train=600,
                               rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=200,
                               rpn_post_nms_top_n_test=100)
    model = build_detector(cfg, num_classes=5, image_size=128)
    assert model.backbone.out_channels == 96
    assert model.backbone.fpn.layer_blocks[0][0].out_channels == 96
    assert model.rpn._pre_nms_top_n == {"training": 600, "testing": 200}
    assert model.rpn._post_nms_top_n == {"training": 300, "testing": 100}
    assert model.roi_heads.box_head.fc6.in_features == 96 * 7 * 7


@pytest.mark.parametrize("head", ["faster", "mask"])
def test_default_heads_have_torchvisions_layout(head):
    """With the default keys our explicitly built heads have exactly the modules and parameter shapes that
    torchvision builds from ``num_classes`` (checkpoints keep loading), and the sizing keys reach them."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN

    ours = build_detector(DetectionModelConfig(name="res2net26_lite", head=head), num_classes=5, image_size=128)
    cls = MaskRCNN if head == "mask" else FasterRCNN
    ref = cls(ours.backbone, num_classes=5, rpn_anchor_generator=ours.rpn.anchor_generator)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    cfg = DetectionModelConfig(name="res2net26_lite", head=head, anchor_base=8, anchor_scales=3, box_head_dim=256)
    model = build_detector(cfg, num_classes=5, image_size=128)
    assert model.rpn.anchor_generator.sizes[0] == pytest.approx((8.0, 8 * 2 ** (1 / 3), 8 * 2 ** (2 / 3)))
    assert model.rpn.head.cls_logits.out_channels == 9  # 3 sizes x 3 aspect ratios per location
    assert model.roi_heads.box_head.fc7.out_features == 256
    assert model.roi_heads.box_predictor.cls_score.in_features == 256
    with pytest.raises(ValueError, match="anchor_scales"):
        build_detector(DetectionModelConfig(name="res2net26_lite", anchor_scales=0), num_classes=5, image_size=128)


def test_frozen_stages_out_of_range_and_the_older_trainable_layers():
    with pytest.raises(ValueError, match="frozen_stages must be in \\[-1, 4\\]"):
        build_detector(DetectionModelConfig(frozen_stages=5), num_classes=3, image_size=64)
    with pytest.raises(ValueError, match="trainable_layers must be in \\[0, 5\\]"):
        build_detector(DetectionModelConfig(trainable_layers=6), num_classes=3, image_size=64)
    with pytest.raises(ValueError, match="name the same setting"):
        build_detector(DetectionModelConfig(trainable_layers=3, frozen_stages=1), num_classes=3, image_size=64)
    with pytest.warns(FutureWarning, match="model.trainable_layers=3 is now model.frozen_stages=1"):
        old = build_detector(DetectionModelConfig(trainable_layers=3), num_classes=3, image_size=64)
    new = build_detector(DetectionModelConfig(frozen_stages=1), num_classes=3, image_size=64)
    assert ([n for n, p in old.named_parameters() if p.requires_grad]
            == [n for n, p in new.named_parameters() if p.requires_grad])


@pytest.mark.slow
def test_detect_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data", "synthetic", "--steps", "1", "--batch-size", "2", "--input-size", "64", "--quiet",
              "--set", "data.synthetic_train=4", "--set", "data.synthetic_val=2",
              "--set", "model.rpn_batch_size_per_image=32", "--set", "model.box_batch_size_per_image=32"]
    assert main(["detect", "train", "--head", "mask", "--out", str(out)] + common) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm", "voc07_map50"}
    assert set(metrics["bbox"]) == set(COCO_KEYS)
    assert json.loads((out / "data_report.json").read_text())["val"]["images"] == 2
    ev = tmp_path / "eval"
    assert main(["detect", "eval", "--checkpoint", str(out / "last.pt"), "--out", str(ev)]) == 0
    assert set(json.loads((ev / "metrics.json").read_text())) == {"bbox", "segm", "voc07_map50"}
    pred = tmp_path / "pred"
    assert main(["detect", "predict", "--checkpoint", str(out / "last.pt"), "--out", str(pred),
                 "--input", str(out / "data" / "coco" / "val"), "--score-thresh", "0.0"]) == 0
    assert sorted(p.name for p in pred.glob("*.png")) == ["val_00000_det.png", "val_00001_det.png"]
    # a user error is one line, exit code 2
    assert main(["detect", "eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_score_thresholds_are_probabilities() -> None:
    """Issue 22 probe: ``model.predict_score_thresh=1.5`` was taken and drew nothing; a threshold is in [0, 1]."""
    from res2net.engine.config import load_config
    from res2net.errors import ConfigError
    from res2net.tasks.detection import DetectionConfig

    for key in ("predict_score_thresh", "box_score_thresh"):
        with pytest.raises(ConfigError, match=key):
            load_config(DetectionConfig, None, [f"model.{key}=1.5"])
