"""Classification as an engine :class:`~res2net.engine.Task`: cross-entropy training of one named model,
top-1/top-5 accuracy (torchmetrics)."""

from __future__ import annotations

import sys
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ...data import batch_collate, normalize, progressive_size, random_crop_flip, resize_batch, skip_collate
from ...data.images import warn_bad_files
from ...engine import Context, Task
from ...errors import ConfigError
from ...models import build_model
from ...weights import FetchedWeights, load_for_finetuning
from .config import ClassificationConfig
from .data import ClassificationData


class ClassificationTask(Task):
    """Cross-entropy training of one named model; evaluation by top-1/top-5 accuracy (torchmetrics)."""

    name = "classification"
    resume_free_keys = Task.resume_free_keys + ("model.name",)  # a folder holds one model of the list
    primary_metric = "top1"
    higher_is_better = True

    def __init__(self, model_name: str, cfg: ClassificationConfig, data: ClassificationData,
                 weights: Optional[FetchedWeights] = None) -> None:
        self.model_name, self.cfg, self.data = model_name, cfg, data
        self.weights = weights  # pretrained weights to fine-tune from (cfg.model.pretrained, fetched once)
        self.collate_fn = batch_collate if data.in_memory else skip_collate
        self.skipped: Set[str] = set()
        for files in (data.train, data.test):
            warn_bad_files(getattr(getattr(files, "dataset", files), "bad_files", []), self.skipped)
        self.confusion: Optional[Tensor] = None

    def build_model(self) -> nn.Module:
        """The model for the data's classes and channels; with pretrained weights, the backbone loaded from them
        (:func:`res2net.weights.load_for_finetuning`), and the frozen stages of ``model.frozen_stages`` /
        ``model.linear_probe`` (their BatchNorm statistics frozen too)."""
        m = self.cfg.model
        model = build_model(self.model_name, num_classes=len(self.data.classes), in_chans=self.data.in_chans,
                             drop_path_rate=m.drop_path_rate, zero_init_last=m.zero_init_last)
        if self.weights is not None:
            for note in load_for_finetuning(model, self.model_name, self.weights, self.data.classes):
                if self.dist.is_main:
                    print(f"{self.model_name}: {note}", file=sys.stderr)
        frozen = len(model.stage_modules()) if m.linear_probe else m.frozen_stages
        if frozen >= 0:
            try:
                model.configure_backbone(frozen_stages=frozen)
            except ValueError as exc:
                raise ConfigError(f"model.frozen_stages (--frozen-stages): {exc}") from None
        return model

    def param_groups(self, model: nn.Module) -> List[Dict[str, Any]]:
        """One group, or with ``optim.backbone_lr_mult`` != 1 the backbone at that fraction of the head's lr."""
        mult = self.cfg.optim.backbone_lr_mult
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if mult == 1.0:
            return [{"params": [p for _, p in trainable]}]
        head = [p for n, p in trainable if n.startswith("fc.")]
        body = [p for n, p in trainable if not n.startswith("fc.")]
        return [g for g in ({"params": body, "lr_mult": mult}, {"params": head}) if g["params"]]

    def build_datasets(self) -> Tuple[Dataset, Optional[Dataset]]:
        return self.data.train, self.data.test

    def checkpoint_meta(self) -> Dict[str, Any]:
        return {"model": self.model_name, "classes": list(self.data.classes), "in_chans": self.data.in_chans,
                "dataset": self.cfg.data.dataset, "preprocessing": self.data.preprocessing.to_dict()}

    def prepare_batch(self, batch: Any, ctx: Context, train: bool) -> Tuple[Tensor, Tensor]:
        if self.data.in_memory:
            images, labels = ctx.to_device(batch)
            if train:
                images = random_crop_flip(images, self.cfg.data.crop_padding, self.cfg.data.flip)
            images = normalize(images, self.data.mean, self.data.std)
        else:
            images, labels, bad = batch
            warn_bad_files(bad, self.skipped)
            images, labels = ctx.to_device((images, labels))
        if train and self.cfg.data.train_scales:
            size = progressive_size(self.data.input_size, self.cfg.data.train_scales, ctx.epoch, self.cfg.run.epochs)
            images = resize_batch(images, size)
        if ctx.channels_last and images.dim() == 4:  # (an all-unreadable image-folder batch is empty)
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def training_step(self, model: nn.Module, batch: Tuple[Tensor, Tensor], ctx: Context
                      ) -> Tuple[Tensor, Dict[str, float]]:
        images, labels = batch
        if images.numel() == 0:  # every file of the batch was unreadable: a zero loss keeps DDP in step
            return sum(p.sum() * 0.0 for p in model.parameters()), {}  # type: ignore[return-value]
        loss = nn.functional.cross_entropy(model(images), labels, label_smoothing=self.cfg.optim.label_smoothing)
        return loss, {}

    def evaluate(self, model: nn.Module, loader: Iterable[Any], ctx: Context) -> Dict[str, float]:
        from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

        n_cls = len(self.data.classes)
        top1 = MulticlassAccuracy(n_cls, top_k=1, average="micro", sync_on_compute=False).to(ctx.device)
        top5 = MulticlassAccuracy(n_cls, top_k=min(5, n_cls), average="micro", sync_on_compute=False).to(ctx.device)
        confusion = MulticlassConfusionMatrix(n_cls, sync_on_compute=False).to(ctx.device)
        loss_sum, count = 0.0, 0
        for batch in loader:
            images, labels = self.prepare_batch(batch, ctx, train=False)
            if images.numel() == 0:
                continue
            logits = model(images).float()
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            count += labels.numel()
            for metric in (top1, top5, confusion):
                metric.update(logits, labels)
        if count == 0:
            return {}
        self.confusion = confusion.compute().cpu()
        return {"top1": float(top1.compute()), "top5": float(top5.compute()), "loss": loss_sum / count}
