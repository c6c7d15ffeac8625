"""Salient object detection: a DSS-style head (Hou et al., CVPR 2017) on Res2Net stages.

Metrics follow the SOD toolkits (``pysodmetrics``) on 8-bit maps: each prediction is quantised to uint8,
min-max normalised; the ground truth is the mask binarised (> 128). Max F-measure (beta^2 = 0.3) is the
maximum over 256 thresholds of the image-averaged F curve; adaptive F thresholds each map at
``min(2 * mean, 1)``; MAE is the image-averaged mean absolute error. Maps are evaluated at the data's
``input_size`` (the validation loader resizes images and masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.dense import MaskFolder, dense_transforms, saliency_pairs
from ..data.photos import save_png, to_uint8
from ..layers import conv_bn_relu
from .dense_config import DenseModelConfig, dense_config
from .dense_task import DenseTask, Normalize, build_backbone

BETA2 = 0.3


@dataclass
class SaliencyModelConfig(DenseModelConfig):
    """Backbone plus DSS head settings."""

    side_channels: int = 64  # width of each side-output branch
    stages: str = "1,2,3,4"  # feature levels with a side output (0 = stem, 1..4 = C2..C5)


SaliencyConfig = dense_config(SaliencyModelConfig)


class DSSHead(nn.Module):
    """Side outputs on several stages with short connections: side output i is a learned 1x1 combination of
    its own logits and the upsampled logits of every deeper side output; the fused output is a 1x1
    combination of all (refined) side outputs. Returns the side outputs (shallow to deep) and the fused
    output last, all logits at ``size``."""

    def __init__(self, in_channels: Sequence[int], mid: int = 64) -> None:
        super().__init__()
        n = len(in_channels)
        self.sides = nn.ModuleList(nn.Sequential(conv_bn_relu(c, mid, 3), conv_bn_relu(mid, mid, 3),
                                                 nn.Conv2d(mid, 1, 1)) for c in in_channels)
        self.short = nn.ModuleList(nn.Conv2d(n - i, 1, 1) for i in range(n))
        self.fuse = nn.Conv2d(n, 1, 1)

    def forward(self, feats: Sequence[Tensor], size: Tuple[int, int]) -> List[Tensor]:
        raw = [side(f) for side, f in zip(self.sides, feats)]
        outs = []
        for i, short in enumerate(self.short):
            stack = [raw[i]] + [F.interpolate(r, size=raw[i].shape[-2:], mode="bilinear", align_corners=False)
                                for r in raw[i + 1:]]
            outs.append(F.interpolate(short(torch.cat(stack, 1)), size=size, mode="bilinear", align_corners=False))
        return outs + [self.fuse(torch.cat(outs, 1))]


class DSSNet(nn.Module):
    """Backbone (features of ``cfg.stages``) + :class:`DSSHead`; ``forward`` returns a list of (N, 1, H, W)
    logits, the fused output last.

    >>> m = DSSNet(SaliencyModelConfig(name="resnet50")).eval()
    >>> [tuple(o.shape) for o in m(torch.rand(1, 3, 64, 64))][-1]
    (1, 1, 64, 64)
    """

    def __init__(self, cfg: SaliencyModelConfig) -> None:
        super().__init__()
        try:
            stages = [int(s) for s in cfg.stages.split(",")]
        except ValueError:
            raise ValueError(f"model.stages must be comma-separated feature levels, got {cfg.stages!r}") from None
        self.normalize = Normalize(cfg.name)
        self.backbone = build_backbone(cfg, out_indices=stages)
        self.head = DSSHead([f["num_chs"] for f in self.backbone.feature_info], cfg.side_channels)

    def forward(self, x: Tensor) -> List[Tensor]:
        return self.head(self.backbone(self.normalize(x)), x.shape[-2:])


class SaliencyMeter:
    """Accumulates max-F / adaptive-F (beta^2 = 0.3) and MAE exactly as ``pysodmetrics`` computes them on
    uint8 prediction maps and > 128 binarised masks (float64 arithmetic)."""

    def __init__(self) -> None:
        self.curve = torch.zeros(256, dtype=torch.float64)
        self.adaptive = 0.0
        self.mae = 0.0
        self.n = 0

    @staticmethod
    def _f(p: Tensor, r: Tensor) -> Tensor:
        num = (1 + BETA2) * p * r
        return num / torch.where(num == 0, torch.ones_like(num), BETA2 * p + r)

    def update_uint8(self, pred: Tensor, gt: Tensor) -> None:
        """One image: ``pred`` uint8 (H, W) map, ``gt`` bool (H, W) mask."""
        p = pred.double() / 255
        if p.max() != p.min():
            p = (p - p.min()) / (p.max() - p.min())
        gt = gt.bool()
        self.mae += float((p - gt.double()).abs().mean())
        binary = p >= min(2 * float(p.mean()), 1.0)
        inter = int((binary & gt).sum())
        if inter:
            pre, rec = inter / int(binary.sum()), inter / int(gt.sum())
            self.adaptive += (1 + BETA2) * pre * rec / (BETA2 * pre + rec)
        q = (p * 255).to(torch.uint8).long()
        fg = torch.bincount(q[gt], minlength=256).flip(0).cumsum(0).double()
        bg = torch.bincount(q[~gt], minlength=256).flip(0).cumsum(0).double()
        tps, ps = fg, fg + bg
        ps[ps == 0] = 1
        self.curve += self._f(tps / ps, tps / max(int(gt.sum()), 1))
        self.n += 1

    def update(self, probs: Tensor, masks: Tensor) -> None:
        """A batch: ``probs`` (N, H, W) in [0, 1], ``masks`` (N, H, W) in {0, 1}."""
        for p, m in zip(probs.detach().float().cpu(), masks.cpu()):
            self.update_uint8((p * 255).round().to(torch.uint8), m > 0.5)

    def compute(self) -> Dict[str, float]:
        n = max(self.n, 1)
        return {"max_f": float((self.curve / n).max()), "adaptive_f": self.adaptive / n, "mae": self.mae / n}


class SaliencyTask(DenseTask):
    """DSS-style saliency on paired image/mask folders; deep supervision: BCE on every output."""

    name = "saliency"
    data_format = "saliency"
    primary_metric = "max_f"

    def make_datasets(self, root: Path, train: bool) -> Dataset:
        split = self.cfg.data.train_split if train else self.cfg.data.val_split
        return MaskFolder(saliency_pairs(root, split), num_classes=None,
                          transforms=dense_transforms(self.cfg.data.input_size, train), source=str(root))

    def build_model(self) -> nn.Module:
        return DSSNet(self.cfg.model)

    def training_step(self, model: nn.Module, batch: Any, ctx: Any) -> Tuple[Tensor, Dict[str, float]]:
        images, masks = batch
        target = masks[:, None].float()
        losses = [F.binary_cross_entropy_with_logits(o, target) for o in model(images)]
        return sum(losses), {"loss_fused": float(losses[-1].detach())}

    def compute_report(self, model: nn.Module, loader: Any, ctx: Any) -> Dict[str, Any]:
        meter = SaliencyMeter()
        for batch in loader:
            images, masks = ctx.to_device(batch)
            meter.update(torch.sigmoid(model(images)[-1][:, 0].float()), masks)
        return meter.compute()

    def predict_images(self, model: nn.Module, images: List[Tuple[Path, Tensor]], out_dir: Path) -> List[Path]:
        """``<stem>_sal.png``: the fused saliency map (8-bit grey) at the image's size."""
        device = next(model.parameters()).device
        written = []
        for path, img in images:
            prob = torch.sigmoid(model(img[None].to(device))[-1][0, 0]).cpu()
            written.append(save_png(to_uint8(prob), out_dir / f"{path.stem}_sal.png"))
        return written
