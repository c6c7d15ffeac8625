"""Semantic segmentation: DeepLab v3+ (torchvision's ASPP + the v3+ decoder) on a dilated Res2Net.

Metrics from one torchmetrics confusion matrix (255 = ignore): mean IoU over the classes that occur in the
ground truth or the predictions, per-class IoU, pixel accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.utils import draw_segmentation_masks

from ..data.dense import (IGNORE_INDEX, VOC_CLASSES, MaskFolder, dense_transforms, read_class_list,
                          segmentation_pairs)
from ..data.scenes import voc_palette
from ..layers import conv_bn_relu
from ..errors import ConfigError
from ..data.photos import save_png, to_uint8
from .dense_config import DenseModelConfig, dense_config
from .dense_task import DenseTask, Normalize, build_backbone, check_classes


@dataclass
class SegmentationModelConfig(DenseModelConfig):
    """Backbone plus DeepLab v3+ settings."""

    output_stride: int = 16  # 16 (ASPP rates 6/12/18) or 8 (rates doubled)
    head_channels: int = 256  # ASPP and decoder width (the paper's 256; smaller for CPU-sized runs)
    classes: List[str] = field(default_factory=list)  # class names, background first; filled from the data


SegmentationConfig = dense_config(SegmentationModelConfig)


class DeepLabV3Plus(nn.Module):
    """DeepLab v3+ (Chen et al., ECCV 2018): ASPP (rates 6/12/18 at output stride 16, doubled at 8) on the
    last stage, upsampled x4 and concatenated with a 48-channel projection of the stride-4 stage (C2), then
    two 3x3 convs and a 1x1 classifier; logits are upsampled to the input size.

    >>> m = DeepLabV3Plus(SegmentationModelConfig(name="resnet50"), num_classes=3).eval()
    >>> m(torch.rand(1, 3, 64, 64)).shape
    torch.Size([1, 3, 64, 64])
    """

    def __init__(self, cfg: SegmentationModelConfig, num_classes: int) -> None:
        super().__init__()
        if cfg.output_stride not in (8, 16):
            raise ConfigError(f"model.output_stride must be 8 or 16, got {cfg.output_stride}")
        self.normalize = Normalize(cfg.name)
        self.backbone = build_backbone(cfg, out_indices=(1, 4), output_stride=cfg.output_stride)
        low_ch, high_ch = (f["num_chs"] for f in self.backbone.feature_info)
        rates = [6, 12, 18] if cfg.output_stride == 16 else [12, 24, 36]
        if cfg.head_channels < 1:
            raise ConfigError(f"model.head_channels must be >= 1, got {cfg.head_channels}")
        width = cfg.head_channels
        self.aspp = ASPP(high_ch, rates, out_channels=width)
        self.project = conv_bn_relu(low_ch, 48, 1)
        self.decoder = nn.Sequential(conv_bn_relu(width + 48, width, 3), conv_bn_relu(width, width, 3),
                                     nn.Conv2d(width, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        low, high = self.backbone(self.normalize(x))
        y = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.decoder(torch.cat([y, self.project(low)], dim=1))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def segmentation_report(confmat: Tensor, classes: List[str]) -> Dict[str, Any]:
    """``{"miou", "pixel_acc", "per_class_iou"}`` from a (C, C) confusion matrix (rows = ground truth).
    Classes absent from both ground truth and predictions have no IoU (null) and are left out of the mean."""
    cm = confmat.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    valid = ~torch.isnan(iou)
    return {"miou": float(iou[valid].mean()) if valid.any() else 0.0,
            "pixel_acc": float(tp.sum() / cm.sum().clamp(min=1)),
            "per_class_iou": {name: (None if torch.isnan(v) else float(v)) for name, v in zip(classes, iou)}}


class SegmentationTask(DenseTask):
    """DeepLab v3+ on VOC segmentation folders or plain ``images``/``masks`` folders."""

    name = "segmentation"
    data_format = "voc"
    primary_metric = "miou"

    @property
    def classes(self) -> List[str]:
        return self.cfg.model.classes

    def read_classes(self, root: Path) -> List[str]:
        """``background`` and the folder's class list (``class_names.txt``, else VOC's 20 classes)."""
        return ["background"] + list(read_class_list(root, VOC_CLASSES))

    def make_datasets(self, root: Path, train: bool) -> Dataset:
        check_classes(self.cfg.model.classes, self.read_classes(root), root)
        split = self.cfg.data.train_split if train else self.cfg.data.val_split
        return MaskFolder(segmentation_pairs(root, split), num_classes=len(self.classes),
                          transforms=dense_transforms(self.cfg.data.input_size, train), source=str(root))

    def build_model(self) -> nn.Module:
        if not self.classes:
            raise ConfigError("the segmentation classes are unknown: run prepare_data() first (or load a checkpoint)")
        return DeepLabV3Plus(self.cfg.model, len(self.classes))

    def training_step(self, model: nn.Module, batch: Any, ctx: Any) -> Tuple[Tensor, Dict[str, float]]:
        images, masks = batch
        return F.cross_entropy(model(images), masks, ignore_index=IGNORE_INDEX), {}

    def compute_report(self, model: nn.Module, loader: Any, ctx: Any) -> Dict[str, Any]:
        from torchmetrics.classification import MulticlassConfusionMatrix

        metric = MulticlassConfusionMatrix(len(self.classes), ignore_index=IGNORE_INDEX).to(ctx.device)
        for batch in loader:
            images, masks = ctx.to_device(batch)
            metric.update(model(images).argmax(1), masks)
        return segmentation_report(metric.compute().cpu(), self.classes)

    def predict_images(self, model: nn.Module, images: List[Tuple[Path, Tensor]], out_dir: Path) -> List[Path]:
        """``<stem>_seg.png`` (image with the classes overlaid) and ``<stem>_mask.png`` (VOC palette indices)."""
        from PIL import Image

        device = next(model.parameters()).device
        written = []
        palette = voc_palette()
        colors = [tuple(palette[3 * i:3 * i + 3]) for i in range(len(self.classes))]
        for path, img in images:
            pred = model(img[None].to(device)).argmax(1)[0].cpu()
            onehot = torch.stack([pred == c for c in range(1, len(self.classes))])
            overlay = draw_segmentation_masks(to_uint8(img), onehot, alpha=0.5, colors=colors[1:])
            written.append(save_png(overlay, out_dir / f"{path.stem}_seg.png"))
            png = Image.fromarray(pred.to(torch.uint8).numpy(), mode="P")
            png.putpalette(palette)
            png.save(out_dir / f"{path.stem}_mask.png")
            written.append(out_dir / f"{path.stem}_mask.png")
        return written

