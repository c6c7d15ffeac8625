"""What the engine trains: the :class:`Task` contract, the :class:`Context` a task sees while the loop runs, and
the :class:`FitResult` the loop returns (docs/TRAINING.md, "The engine")."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .distributed import DistInfo


@dataclass
class Context:
    """What a task needs to know about the running loop."""

    device: torch.device
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    dist: DistInfo
    out_dir: Path
    epoch: int = 0
    global_step: int = 0

    def autocast(self) -> ContextManager[Any]:
        """Autocast to the run's AMP dtype on the run's device (a no-op with ``amp=off``)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, obj: Any) -> Any:
        """Move tensors (in nested lists/tuples/dicts) to the device; 4-D float tensors become channels_last
        when the run uses it."""
        if isinstance(obj, Tensor):
            obj = obj.to(self.device, non_blocking=True)
            if self.channels_last and obj.dim() == 4 and obj.is_floating_point():
                obj = obj.contiguous(memory_format=torch.channels_last)
            return obj
        if isinstance(obj, dict):
            return {k: self.to_device(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.to_device(v) for v in obj)
        return obj


class Task(ABC):
    """What the engine trains. Subclass it and implement the abstract methods (docs/TRAINING.md, "The engine")."""

    name: str = "task"
    primary_metric: str = "loss"  # key of evaluate()'s result that selects best.pt
    higher_is_better: bool = False
    collate_fn: Optional[Callable[[Any], Any]] = None  # for the DataLoader; None: torch's default_collate
    # this process's rank and world size; the Trainer sets it (to its own DistInfo) before build_datasets
    dist: DistInfo = DistInfo()
    # config keys (dotted) a resume may change without notice, besides the engine's RESUME_FREE_KEYS: where
    # the data lives, not what it is
    resume_free_keys: Tuple[str, ...] = ("data.root", "data.download")

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model (the engine moves it to the device and wraps it for DDP)."""

    @abstractmethod
    def build_datasets(self) -> Tuple[Dataset, Optional[Dataset]]:
        """(train, validation) map-style data sets; validation may be None."""

    def prepare_batch(self, batch: Any, ctx: Context, train: bool) -> Any:
        """Move a loader batch to the device and apply batched (on-device) augmentation when ``train``."""
        return ctx.to_device(batch)

    @abstractmethod
    def training_step(self, model: nn.Module, batch: Any, ctx: Context) -> Tuple[Tensor, Dict[str, float]]:
        """Forward one prepared batch (the engine has entered autocast) -> (loss, extra scalars to log)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: Iterable[Any], ctx: Context) -> Dict[str, float]:
        """Metrics of ``model`` (in eval mode, under no_grad and autocast) over the validation loader."""

    def checkpoint_meta(self) -> Dict[str, Any]:
        """What a checkpoint should say about its model for later use (saved under ``meta``; plain values):
        e.g. the model name, class names and preprocessing, read by :func:`res2net.weights.describe_checkpoint`."""
        return {}

    def param_groups(self, model: nn.Module) -> List[Dict[str, Any]]:
        """Optimizer parameter groups (default: one group, weight decay on every parameter)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]


@dataclass
class FitResult:
    """What :func:`~res2net.engine.fit` returns (on every rank)."""

    model: nn.Module  # the trained model (EMA weights when EMA is on), unwrapped, on the device
    history: List[Dict[str, Any]]  # one record per epoch: train loss, lr, eval metrics, seconds
    metrics: Dict[str, float]  # the final evaluation
    train_seconds: float
    images_per_second: float
    epochs: int
    out_dir: Path
    extra: Dict[str, Any] = field(default_factory=dict)

