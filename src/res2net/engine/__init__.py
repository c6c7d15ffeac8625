"""The task-agnostic training engine: one loop (:class:`Trainer`, :func:`fit`) for classification, detection,
segmentation and saliency; a task subclasses :class:`Task`. How to write a task, the config sections, the
guarantees (exact resume, preemption, DDP, AMP, atomic checkpoints) and the module of each job: docs/TRAINING.md,
"The engine"."""

from .checkpoint import load_checkpoint, load_latest, save_atomic
from .config import OptimConfig, RunConfig, SchedConfig, load_config, to_dict
from ..hardware import select_device
from .distributed import DistInfo, init_distributed, select_amp
from .resume import seed_everything
from .sampler import ResumableBatchSampler, build_loader
from .runfolder import RunLock
from .signals import Preempted, TrainingDiverged
from .contract import Context, FitResult, Task
from .trainer import Trainer, fit

__all__ = [
    "Context", "DistInfo", "FitResult", "OptimConfig", "Preempted", "ResumableBatchSampler", "RunConfig", "RunLock",
    "SchedConfig",
    "Task", "Trainer", "TrainingDiverged", "build_loader", "fit",
    "init_distributed", "load_checkpoint", "load_config", "load_latest", "save_atomic", "seed_everything",
    "select_amp", "select_device", "to_dict",
]
