"""Object detection and instance segmentation: torchvision Faster R-CNN / Mask R-CNN on a Res2Net + FPN body.

Metrics: the COCO AP family for boxes (and masks with Mask R-CNN) through torchmetrics'
``MeanAveragePrecision`` (pycocotools backend), and VOC07 mAP at IoU 0.5 with the 11-point protocol
(:func:`voc07_map`, ours).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork, box_iou
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..data.dense import CocoDetection, VocDetection, collate_detection, detection_transforms
from ..errors import ConfigError, DataError
from ..models import get_spec
from ..data.photos import save_png, to_uint8
from ..engine.config import between
from .dense_config import DenseModelConfig, dense_config
from .dense_task import DenseTask, build_backbone, check_classes

COCO_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_small", "mar_medium",
             "mar_large")
HEADS = ("faster", "mask")
TARGET_KEYS = ("boxes", "labels", "iscrowd", "masks", "area")  # what MeanAveragePrecision reads


@dataclass
class DetectionModelConfig(DenseModelConfig):
    """Backbone plus the R-CNN head settings (torchvision argument names)."""

    head: str = "faster"  # faster (Faster R-CNN) | mask (Mask R-CNN)
    anchor_base: float = 0.0  # smallest anchor (doubling per FPN level); 0 = 32 * image_size / 800
    anchor_scales: int = 1  # anchor sizes per FPN level: base x 2^(k / anchor_scales), k < anchor_scales
    box_head_dim: int = 1024  # width of the two-layer MLP box head (torchvision's TwoMLPHead)
    fpn_channels: int = 256  # FPN output channels (what the RPN and box heads read)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_score_thresh: float = between(0.05, 0, 1)  # detections kept for evaluation
    box_detections_per_img: int = 100
    predict_score_thresh: float = between(0.5, 0, 1)  # detections drawn by `predict`
    classes: List[str] = field(default_factory=list)  # object class names; filled from the training data


DetectionConfig = dense_config(DetectionModelConfig)


class Res2NetFPN(nn.Module):
    """A zoo features-only model (C2..C5) + torchvision's FeaturePyramidNetwork with a max-pool P6: the same
    computation as torchvision's ``BackboneWithFPN``, without its IntermediateLayerGetter (our trunks return
    their stage maps directly). ``out_channels`` is what torchvision's R-CNN heads read."""

    def __init__(self, body: nn.Module, out_channels: int = 256) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork([f["num_chs"] for f in body.feature_info], out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def build_detector(cfg: DetectionModelConfig, num_classes: int, image_size: int) -> nn.Module:
    """Faster R-CNN or Mask R-CNN (``cfg.head``) with a Res2Net + FPN backbone; ``num_classes`` includes the
    background. Images are resized so the short side is ``image_size`` (long side <= 1333/800 of it) and
    normalised with the backbone's mean/std; anchors are torchvision's scaled by ``image_size / 800``
    (``anchor_scales`` > 1 adds octave sizes per level, as RetinaNet); the box head is torchvision's
    TwoMLPHead of width ``box_head_dim``. With the defaults the modules and state_dict equal torchvision's."""
    if cfg.head not in HEADS:
        raise ConfigError(f"model.head must be one of {HEADS}, got {cfg.head!r}")
    if cfg.anchor_scales < 1 or cfg.box_head_dim < 1:
        raise ConfigError(f"model.anchor_scales and model.box_head_dim must be >= 1, got {cfg.anchor_scales} "
                          f"and {cfg.box_head_dim}")
    spec = get_spec(cfg.name)
    backbone = Res2NetFPN(build_backbone(cfg, out_indices=(1, 2, 3, 4)), out_channels=cfg.fpn_channels)
    base = cfg.anchor_base or 32.0 * image_size / 800.0
    sizes = tuple(tuple(max(2.0, base * 2 ** (i + k / cfg.anchor_scales)) for k in range(cfg.anchor_scales))
                  for i in range(5))
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))
    resolution = 7  # torchvision's RoI-align output for the box head
    box_head = TwoMLPHead(cfg.fpn_channels * resolution ** 2, cfg.box_head_dim)
    box_predictor = FastRCNNPredictor(cfg.box_head_dim, num_classes)
    cls, extra = FasterRCNN, {}
    if cfg.head == "mask":  # torchvision's default mask predictor (256 -> 256 -> classes), built here because
        cls, extra = MaskRCNN, {"mask_predictor": MaskRCNNPredictor(256, 256, num_classes)}  # num_classes=None
    return cls(backbone, num_classes=None, min_size=image_size, max_size=int(image_size * 1333 / 800),
               image_mean=list(spec.mean), image_std=list(spec.std), rpn_anchor_generator=anchors,
               rpn_head=RPNHead(cfg.fpn_channels, anchors.num_anchors_per_location()[0]),
               box_head=box_head, box_predictor=box_predictor,
               rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
               rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
               rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
               rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
               rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
               box_batch_size_per_image=cfg.box_batch_size_per_image, box_score_thresh=cfg.box_score_thresh,
               box_detections_per_img=cfg.box_detections_per_img, **extra)


# ---- VOC07 ---------------------------------------------------------------------------------------------------
def voc07_ap(recall: Tensor, precision: Tensor) -> float:
    """11-point interpolated AP: mean over t in {0, 0.1, ..., 1} of max precision at recall >= t."""
    ap = 0.0
    for t in torch.linspace(0, 1, 11):
        mask = recall >= t - 1e-12
        ap += float(precision[mask].max()) if mask.any() else 0.0
    return ap / 11


def voc07_map(preds: Sequence[Dict[str, Tensor]], targets: Sequence[Dict[str, Tensor]], num_classes: int,
              iou_threshold: float = 0.5) -> Tuple[float, Dict[int, float]]:
    """PASCAL VOC 2007 mAP: per class, detections of all images sorted by score are matched greedily to the
    unmatched ground truth box of highest IoU (>= ``iou_threshold``); a match to a ``difficult`` box counts
    neither way, a second match to a box is a false positive. Classes 1..num_classes-1 that have no
    (non-difficult) ground truth are left out of the mean. Boxes are continuous xyxy (no VOC +1 pixel).

    Returns (mAP, {class: AP})."""
    per_class: Dict[int, float] = {}
    for c in range(1, num_classes):
        records: List[Tuple[float, int, int]] = []  # (score, image index, detection index)
        gts, n_pos = [], 0
        for i, (p, t) in enumerate(zip(preds, targets)):
            keep = t["labels"] == c
            difficult = t.get("difficult", torch.zeros_like(t["labels"], dtype=torch.bool))[keep].bool()
            gts.append((t["boxes"][keep].float(), difficult, torch.zeros(int(keep.sum()), dtype=torch.bool)))
            n_pos += int((~difficult).sum())
            for j in torch.nonzero(p["labels"] == c).flatten().tolist():
                records.append((float(p["scores"][j]), i, j))
        if n_pos == 0:
            continue
        records.sort(key=lambda r: -r[0])
        tp, fp = torch.zeros(len(records)), torch.zeros(len(records))
        for k, (_, i, j) in enumerate(records):
            boxes, difficult, used = gts[i]
            if len(boxes) == 0:
                fp[k] = 1
                continue
            ious = box_iou(preds[i]["boxes"][j:j + 1].float(), boxes)[0]
            best = int(ious.argmax())
            if ious[best] < iou_threshold:
                fp[k] = 1
            elif difficult[best]:
                continue
            elif used[best]:
                fp[k] = 1
            else:
                tp[k], used[best] = 1, True
        ctp, cfp = tp.cumsum(0), fp.cumsum(0)
        recall = ctp / n_pos
        precision = ctp / (ctp + cfp).clamp(min=1e-12)
        per_class[c] = voc07_ap(recall, precision) if len(records) else 0.0
    mean = sum(per_class.values()) / len(per_class) if per_class else 0.0
    return mean, per_class


def detection_report(preds: Sequence[Dict[str, Tensor]], targets: Sequence[Dict[str, Tensor]], num_classes: int,
                     masks: bool = False) -> Dict[str, Any]:
    """metrics.json of detection: COCO AP family for boxes (and masks) by torchmetrics' MeanAveragePrecision
    with the pycocotools backend, plus :func:`voc07_map`. ``preds``: boxes, scores, labels (masks: bool
    (N, H, W)); ``targets``: boxes, labels, iscrowd, difficult (masks), and ``area`` where the data gives
    it (COCO's annotation area decides small/medium/large; without it the box or mask area does)."""
    from torchmetrics.detection import MeanAveragePrecision

    iou_types = ["bbox", "segm"] if masks else ["bbox"]
    # pycocotools' own float64 thresholds (torchmetrics' defaults are float32 linspaces, which shift matches
    # at the boundaries and make AP differ from COCOeval in the third decimal)
    metric = MeanAveragePrecision(iou_type=iou_types, backend="pycocotools",
                                  iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
                                  rec_thresholds=np.linspace(0.0, 1.0, 101).tolist())
    metric.update(list(preds), [{k: v for k, v in t.items() if k in TARGET_KEYS} for t in targets])
    res = metric.compute()
    report: Dict[str, Any] = {}
    for iou in iou_types:
        prefix = f"{iou}_" if len(iou_types) > 1 else ""
        report[iou] = {k: float(res[prefix + k]) for k in COCO_KEYS}
    report["voc07_map50"] = voc07_map(preds, targets, num_classes)[0]
    return report


# ---- the task --------------------------------------------------------------------------------------------
class DetectionTask(DenseTask):
    """Faster/Mask R-CNN training on COCO json (``data_format`` coco) or VOC xml folders."""

    name = "detection"
    primary_metric = "bbox/map_50"
    collate_fn = staticmethod(collate_detection)

    @property
    def masks(self) -> bool:
        return self.cfg.model.head == "mask"

    def make_datasets(self, root: Path, train: bool) -> Dataset:
        """COCO (``annotations/instances_{split}.json`` + ``{split}/``) or VOC (``ImageSets/Main``) layout."""
        split = self.cfg.data.train_split if train else self.cfg.data.val_split
        tf = detection_transforms(train)
        if (root / "annotations").is_dir():
            ds: Any = CocoDetection(root / split, root / "annotations" / f"instances_{split}.json",
                                    with_masks=self.masks, train=train, transforms=tf)
        elif (root / "ImageSets" / "Main").is_dir():
            ds = VocDetection(root, split, with_masks=self.masks, train=train, transforms=tf)
        else:
            raise DataError(f"{root}: neither a COCO folder (annotations/instances_{split}.json) nor a VOC "
                            "folder (ImageSets/Main)")
        check_classes(self.cfg.model.classes, ds.classes, root)
        return ds

    def read_classes(self, root: Path) -> List[str]:
        """The object classes of the validation split's annotations."""
        saved, self.cfg.model.classes = self.cfg.model.classes, []  # read, not compared, here
        try:
            return list(self.make_datasets(root, train=False).classes)
        finally:
            self.cfg.model.classes = saved

    @property
    def classes(self) -> List[str]:
        return self.cfg.model.classes

    def build_model(self) -> nn.Module:
        if not self.classes:
            raise ConfigError("the detector's classes are unknown: run prepare_data() first (or load a checkpoint)")
        return build_detector(self.cfg.model, len(self.classes) + 1, self.cfg.data.input_size)

    def training_step(self, model: nn.Module, batch: Any, ctx: Any) -> Tuple[Tensor, Dict[str, float]]:
        images, targets = batch
        clean = []
        for t in targets:
            keep = t["iscrowd"] == 0
            c = {"boxes": t["boxes"].as_subclass(Tensor)[keep], "labels": t["labels"][keep]}
            if self.masks:
                c["masks"] = t["masks"].as_subclass(Tensor)[keep]
            clean.append(c)
        losses = model(images, clean)
        return sum(losses.values()), {k: float(v.detach()) for k, v in losses.items()}

    def compute_report(self, model: nn.Module, loader: Any, ctx: Any) -> Dict[str, Any]:
        """``{"bbox": {...}, "segm": {...} (Mask R-CNN), "voc07_map50"}``."""
        all_preds, all_targets = [], []
        for batch in loader:
            images, targets = ctx.to_device(batch)
            outputs = model(images)
            for out, t in zip(outputs, targets):
                p = {k: out[k].detach().cpu() for k in ("boxes", "scores", "labels")}
                g = {"boxes": t["boxes"].as_subclass(Tensor).cpu(), "labels": t["labels"].cpu(),
                     "iscrowd": t["iscrowd"].cpu(), "difficult": t["difficult"].cpu(), "area": t["area"].cpu()}
                if self.masks:
                    p["masks"] = out["masks"][:, 0].detach().cpu() > 0.5
                    g["masks"] = t["masks"].as_subclass(Tensor).cpu().bool()
                all_preds.append(p)
                all_targets.append(g)
        return detection_report(all_preds, all_targets, len(self.classes) + 1, self.masks)

    def predict_images(self, model: nn.Module, images: List[Tuple[Path, Tensor]], out_dir: Path) -> List[Path]:
        """``<stem>_det.png``: boxes with class and score (masks filled with Mask R-CNN)."""
        device = next(model.parameters()).device
        outputs = model([img.to(device) for _, img in images])
        written = []
        thresh = self.cfg.model.predict_score_thresh
        for (path, img), out in zip(images, outputs):
            keep = out["scores"] >= thresh
            canvas = to_uint8(img)
            if self.masks and keep.any():
                canvas = draw_segmentation_masks(canvas, out["masks"][keep][:, 0].cpu() > 0.5, alpha=0.45)
            labels = [f"{self.classes[int(c) - 1]} {float(s):.2f}"
                      for c, s in zip(out["labels"][keep], out["scores"][keep])]
            canvas = draw_bounding_boxes(canvas, out["boxes"][keep].cpu(), labels=labels, colors="yellow")
            written.append(save_png(canvas, out_dir / f"{path.stem}_det.png"))
        return written
