"""The task-agnostic training loop (see the package docstring for the contract)."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
import warnings
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import torch.distributed as dist

from ..errors import CheckpointError, ConfigError, Res2NetError
from ..hardware import default_workers, limit_threads, select_device
from ..weights.load import load_state_dict_strict
from .checkpoint import load_latest, previous_path, rng_state, save_atomic, set_rng_state
from .config import OptimConfig, RunConfig, SchedConfig, to_dict
from .distributed import (DistInfo, agree, all_reduce_mean, barrier, broadcast_buffers, broadcast_object, cleanup,
                          init_distributed, select_amp, under_torchrun)
from ..jsonio import jsonl_line
from .runfolder import RunLock
from .sampler import ResumableBatchSampler


class TrainingDiverged(Res2NetError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


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
    """What the engine trains. Subclass it and implement the abstract methods (see the package docstring)."""

    name: str = "task"
    primary_metric: str = "loss"  # key of evaluate()'s result that selects best.pt
    higher_is_better: bool = False
    collate_fn: Optional[Callable[[Any], Any]] = None  # for the DataLoader; None: torch's default_collate
    # this process's rank and world size; the Trainer sets it (to its own DistInfo) before build_datasets
    dist: DistInfo = DistInfo()
    # config keys (dotted) a resume may change without notice, besides the engine's RESUME_FREE_KEYS: where
    # the data lives, not what it is
    resume_free_keys: Tuple[str, ...] = ("data.data_dir", "data.download")

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
    """What :func:`fit` returns (on every rank)."""

    model: nn.Module  # the trained model (EMA weights when EMA is on), unwrapped, on the device
    history: List[Dict[str, Any]]  # one record per epoch: train loss, lr, eval metrics, seconds
    metrics: Dict[str, float]  # the final evaluation
    train_seconds: float
    images_per_second: float
    epochs: int
    out_dir: Path
    extra: Dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; with ``deterministic`` also force deterministic kernels, else let cuDNN
    pick the fastest convolution algorithm per input shape (``cudnn.benchmark``; no effect on the CPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic)


def scaled_lr(optim: OptimConfig, global_batch: int) -> float:
    """Linear scaling rule (Goyal et al.): ``lr * global_batch / lr_batch``."""
    return optim.lr * global_batch / optim.lr_batch


def build_optimizer(params: List[Dict[str, Any]], optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW from the ``optim`` section. A parameter group may carry
    ``lr_mult``: its lr is ``lr * lr_mult`` (e.g. a pretrained backbone trained slower than a new head)."""
    params = [dict(g, lr=lr * g["lr_mult"]) if "lr_mult" in g else g for g in params]
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov,
                               weight_decay=optim.weight_decay)
    if optim.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=optim.weight_decay)
    raise Res2NetError(f"optim.name must be sgd or adamw, got {optim.name!r}")


def lr_factor(sched: SchedConfig, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at a given optimizer step for the multistep, cosine and constant
    schedules, with optional linear warm-up (``warmup_epochs``)."""
    warmup = int(round(sched.warmup_epochs * steps_per_epoch))
    milestones = [m * steps_per_epoch for m in sched.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if sched.name == "multistep":
            return sched.gamma ** sum(step >= m for m in milestones)
        if sched.name == "cosine":
            t = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
        return 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, sched: SchedConfig, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step scheduler: torch's OneCycleLR for ``onecycle``, a LambdaLR of :func:`lr_factor` otherwise
    (its state_dict holds no code, so checkpoints stay ``weights_only``-loadable)."""
    total = steps_per_epoch * epochs
    if sched.name == "onecycle" and total >= 4:
        max_lr = [g["lr"] for g in optimizer.param_groups]
        pct_start = min(max(sched.pct_start, 2.0 / total), 0.5)  # each phase needs >= 1 step in tiny runs
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total,
                                                   pct_start=pct_start)
    if sched.name == "onecycle":  # fewer than 4 steps: nothing to anneal
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(sched, steps_per_epoch, total))
    if sched.name not in ("multistep", "cosine", "constant"):
        raise Res2NetError(f"sched.name must be multistep, onecycle, cosine or constant, got {sched.name!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(sched, steps_per_epoch, total))


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, workers: Optional[int] = 0, collate_fn: Optional[Callable[[Any], Any]] = None,
                 device: Optional[torch.device] = None) -> Tuple[DataLoader, ResumableBatchSampler]:
    """A DataLoader over ``dataset`` driven by a :class:`ResumableBatchSampler` (shuffled and dropping the
    last partial batch when ``train``; in order and complete otherwise). Its own generator keeps worker seeding
    off torch's global RNG. ``workers=None``: :func:`res2net.hardware.default_workers`."""
    workers = default_workers() if workers is None else workers
    sampler = ResumableBatchSampler(len(dataset), batch_size, shuffle=train, seed=seed,  # type: ignore[arg-type]
                                    rank=rank, world_size=world_size, drop_last=train)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                        pin_memory=device is not None and device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed))
    return loader, sampler


class JsonlLogger:
    """Appends one strict-JSON record per line to ``<out>/log.jsonl`` (rank 0 only); optional TensorBoard."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool = False) -> None:
        self.path, self.enabled = path, enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise Res2NetError("run.tensorboard=true needs the tensorboard package "
                                   "(pip install tensorboard)") from None
            self.tb = SummaryWriter(str(path.parent / "tb"))

    def log(self, kind: str, step: int, **values: Any) -> None:
        """Append one record (non-finite numbers become null, see :mod:`res2net.jsonio`)."""
        if not self.enabled:
            return
        rec = {"type": kind, "step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(jsonl_line(rec) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


# what only a resume needs; best.pt leaves it out (with AdamW that is two thirds of a checkpoint's size)
RESUME_ONLY_KEYS = ("optimizer", "scheduler", "scaler", "rng", "sampler", "step_in_epoch", "epoch_progress")
# settings a resume may change freely: they change neither the weights nor the data order
RESUME_FREE_KEYS = ("run.quiet", "run.workers", "run.num_threads", "run.log_every", "run.checkpoint_every",
                    "run.tensorboard", "run.device")
# sections whose changes the loop can absorb with a warning on an explicit --resume (the lr, the length of the
# run); a change anywhere else (the data, the model) is refused
RESUME_SOFT_SECTIONS = ("optim", "sched", "run")


class Preempted(Res2NetError):
    """SIGTERM or SIGINT stopped the run at a step boundary, after ``last.pt`` was written. ``exit_code`` is
    128 + the signal number (143 for SIGTERM, 130 for SIGINT), so that a scheduler can requeue the job."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopSignals:
    """SIGTERM/SIGINT handlers that only record the request; the loop stops at the next step boundary.

    Installed by :meth:`Trainer.fit` for its duration (the previous handlers come back afterwards). The handler
    never raises, so a signal that arrives while a checkpoint is written cannot cut the file."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.count = 0
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)

    def install(self) -> None:
        """Take over SIGTERM and SIGINT (only possible in the main thread; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class _EvaluationInterrupted(Exception):
    """A stop was requested while rank 0 evaluated; the evaluation is redone after the resume."""


def _stoppable(loader: Iterable[Any], stop: StopSignals) -> Iterator[Any]:
    for batch in loader:
        if stop.requested:
            raise _EvaluationInterrupted
        yield batch


@dataclass
class EpochProgress:
    """Running sums of the current epoch; saved in mid-epoch checkpoints so that a resumed epoch reports the
    loss over all of its steps."""

    loss_sum: float = 0.0
    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    lr: float = 0.0

    def as_dict(self) -> Dict[str, float]:
        return dataclasses.asdict(self)


def config_changes(saved: Dict[str, Any], now: Dict[str, Any], prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two nested config dicts (keys on one side only included)."""
    changed = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


def resume_command() -> str:
    """The command line that continues this run: this process's own, with ``--resume``."""
    argv = list(sys.argv)
    prog = Path(argv[0]).name if argv else ""
    if prog in ("res2net", "cli.py", "__main__.py") or argv[0].endswith("res2net/cli.py"):
        if under_torchrun():
            return "the same torchrun command (a restarted torchrun group resumes by itself)"
        args = [a for a in argv[1:] if a != "--resume"]
        return shlex.join(["res2net", *args, "--resume"])
    return "Trainer(..., resume=True).fit()"


class Trainer:
    """Runs one task with one config into one output folder.

    ``cfg`` is any config dataclass with ``optim`` (:class:`OptimConfig`), ``sched`` (:class:`SchedConfig`)
    and ``run`` (:class:`RunConfig`) sections; it is saved whole in every checkpoint. Call :meth:`fit`, which
    runs :meth:`set_up`, :meth:`start` (fresh or restored from ``last.pt``), then per epoch
    :meth:`train_epoch` and :meth:`end_epoch`.

    Faults: SIGTERM/SIGINT stop at the next step boundary with ``last.pt`` written (:class:`Preempted`); the
    output folder is locked for the run (:class:`~res2net.engine.runfolder.RunLock`); under ``torchrun`` a
    folder holding a run of the same configuration is resumed without ``resume=True`` (elastic restarts).
    """

    def __init__(self, task: Task, cfg: Any, out_dir: Path, resume: bool = False,
                 dist_info: Optional[DistInfo] = None) -> None:
        self.task, self.cfg, self.out_dir, self.resume = task, cfg, Path(out_dir), resume
        self.optim: OptimConfig = cfg.optim
        self.sched: SchedConfig = cfg.sched
        self.run: RunConfig = cfg.run
        self.owns_group = dist_info is None and not (dist.is_available() and dist.is_initialized())
        self.dist = dist_info or init_distributed(self.run.device)
        self.device = select_device(self.run.device, self.dist.local_rank)
        self.ctx = Context(device=self.device, amp_dtype=select_amp(self.run.amp, self.device),
                           channels_last=self.run.channels_last, dist=self.dist, out_dir=self.out_dir)
        self.last_path = self.out_dir / "last.pt"
        self.best_path = self.out_dir / "best.pt"
        # built by set_up()
        self.raw_model: Optional[nn.Module] = None  # the task's model on the device
        self.model: Optional[nn.Module] = None  # the same, wrapped in DDP when distributed
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None
        self.scaler: Optional[torch.amp.GradScaler] = None
        self.ema: Optional[torch.optim.swa_utils.AveragedModel] = None
        self.train_loader: Optional[DataLoader] = None
        self.sampler: Optional[ResumableBatchSampler] = None
        self.val_loader: Optional[DataLoader] = None
        self.steps_per_epoch = 0
        self.global_batch = self.optim.batch_size * self.dist.world_size
        self.logger = JsonlLogger(self.out_dir / "log.jsonl", False)
        self.lock = RunLock(self.out_dir)
        # the run's state (saved in checkpoints)
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[float] = None
        self.train_seconds, self.images_seen = 0.0, 0
        self.progress = EpochProgress()
        self.eval_pending = False  # the last epoch's training ended but its evaluation did not
        self.stop = StopSignals()

    # ---- checkpoints --------------------------------------------------------------------------------
    def _state(self, epoch: int, step_in_epoch: int) -> Dict[str, Any]:
        assert self.raw_model is not None and self.optimizer is not None and self.scheduler is not None
        assert self.scaler is not None
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.ctx.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch_progress": self.progress.as_dict() if step_in_epoch else None,
            "rng": rng_state(),
            "sampler": {"seed": self.run.seed, "epoch": epoch, "start_batch": step_in_epoch,
                        "world_size": self.dist.world_size},
            "config": to_dict(self.cfg), "task": self.task.name, "meta": self.task.checkpoint_meta(),
            "history": self.history, "best": self.best, "train_seconds": self.train_seconds,
            "images_seen": self.images_seen,
        }

    def save(self, epoch: int, step_in_epoch: int, best: bool = False) -> None:
        """Write ``last.pt`` (and ``best.pt``) atomically; rank 0 only."""
        if not self.dist.is_main:
            return
        state = self._state(epoch, step_in_epoch)
        save_atomic(state, self.last_path)
        if best:  # for evaluation and prediction only: no optimizer/scheduler/RNG state (resume reads last.pt)
            weights = {k: v for k, v in state.items() if k not in RESUME_ONLY_KEYS}
            save_atomic(weights, self.best_path, keep_previous=False)

    def _find_checkpoint(self) -> Optional[Dict[str, Any]]:
        """Rank 0: the checkpoint to continue from, None for a fresh run. Without ``resume`` a folder holding a
        checkpoint is refused, except under ``torchrun``, where it is the elastic agent restarting the group."""
        if not (self.last_path.exists() or previous_path(self.last_path).exists()):
            return None
        if not (self.resume or under_torchrun()):
            raise Res2NetError(f"{self.last_path} exists; pass --resume to continue it or choose another --out")
        state = load_latest(self.last_path)
        if state is not None:
            self._check_compatible(state, strict=not self.resume)
        return state

    def _check_compatible(self, state: Dict[str, Any], strict: bool) -> None:
        """Refuse a checkpoint of another task, process count, data or model; warn about (explicit resume) or
        refuse (automatic resume under torchrun) changed optimizer/schedule/run settings."""
        where = self.last_path
        saved_task = state.get("task", self.task.name)
        if saved_task != self.task.name:
            raise CheckpointError(f"{where} holds a {saved_task} run, not {self.task.name}; choose another --out")
        saved_world = state.get("sampler", {}).get("world_size", self.dist.world_size)
        if saved_world != self.dist.world_size:
            raise Res2NetError(f"{where} was written by {saved_world} process(es); resume with the same number "
                               f"(now {self.dist.world_size})")
        free = set(RESUME_FREE_KEYS) | set(self.task.resume_free_keys)
        saved_cfg = state.get("config") if isinstance(state.get("config"), dict) else {}
        now_cfg = to_dict(self.cfg)
        changed = [k for k in config_changes(saved_cfg, now_cfg) if k not in free]

        def show(key: str) -> str:
            node_a, node_b = saved_cfg, now_cfg
            for part in key.split("."):
                node_a = node_a.get(part) if isinstance(node_a, dict) else None
                node_b = node_b.get(part) if isinstance(node_b, dict) else None
            return f"{key} {node_a!r} -> {node_b!r}"

        hard = [k for k in changed if k.split(".")[0] not in RESUME_SOFT_SECTIONS]
        if hard or (strict and changed):
            why = "under torchrun a run folder is only continued with the same settings" if strict and not hard \
                else "the data or the model would change under the run"
            raise ConfigError(f"{where} holds a run with other settings ({'; '.join(show(k) for k in (hard or changed))}); "
                              f"{why}: give the same settings or choose another --out")
        saved_steps = state.get("steps_per_epoch")
        if saved_steps is not None and saved_steps != self.steps_per_epoch:
            raise ConfigError(f"{where} was written with {saved_steps} steps per epoch, this run has "
                              f"{self.steps_per_epoch} (the training data changed); choose another --out")
        if changed:
            warnings.warn(f"resuming {where} with changed settings {', '.join(changed)}: the run will not match an "
                          "uninterrupted one", stacklevel=3)

    def _restore(self, state: Dict[str, Any]) -> Tuple[int, int]:
        assert self.raw_model is not None and self.optimizer is not None and self.scheduler is not None
        assert self.scaler is not None
        load_state_dict_strict(self.raw_model, state["model"], source=str(self.last_path))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None and state["ema"] is not None:
                self.ema.load_state_dict(state["ema"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{self.last_path}: optimizer/scheduler state does not fit this run "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        self.ctx.global_step = state["global_step"]
        self.history, self.best = list(state["history"]), state["best"]
        self.train_seconds, self.images_seen = state["train_seconds"], state["images_seen"]
        progress = state.get("epoch_progress")
        self.progress = EpochProgress(**progress) if progress else EpochProgress()
        set_rng_state(state["rng"])
        return state["epoch"], state["step_in_epoch"]

    # ---- pieces --------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, train: bool) -> Tuple[DataLoader, ResumableBatchSampler]:
        rank, world = (self.dist.rank, self.dist.world_size) if train else (0, 1)
        return build_loader(dataset, self.optim.batch_size, train=train, seed=self.run.seed, rank=rank,
                            world_size=world, workers=self.run.workers, collate_fn=self.task.collate_fn,
                            device=self.device)

    def evaluate(self) -> Dict[str, float]:
        """Run the task's evaluation on rank 0 (other ranks wait); returns {} elsewhere. A stop request stops
        it between batches (raising :class:`_EvaluationInterrupted` on rank 0 after the ranks met)."""
        metrics: Dict[str, float] = {}
        interrupted = False
        if self.val_loader is not None and self.dist.is_main:
            model = self.eval_model
            was = model.training
            model.eval()
            try:
                with torch.no_grad(), self.ctx.autocast():
                    metrics = self.task.evaluate(model, _stoppable(self.val_loader, self.stop), self.ctx)
            except _EvaluationInterrupted:
                interrupted = True
            finally:
                model.train(was)
            if not interrupted and not metrics:
                warnings.warn(f"evaluation of {self.out_dir} gave no metrics (no usable validation sample?)",
                              stacklevel=2)
        barrier(self.dist)
        if agree(interrupted, self.dist):  # every rank leaves the epoch end the same way
            raise _EvaluationInterrupted
        return metrics

    @property
    def eval_model(self) -> nn.Module:
        assert self.raw_model is not None
        return self.ema.module if self.ema is not None else self.raw_model

    def _is_better(self, metrics: Dict[str, float]) -> bool:
        value = metrics.get(self.task.primary_metric)
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.task.higher_is_better else value < self.best

    # ---- the loop ------------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train (resuming from ``last.pt`` when asked, or under torchrun), evaluate each epoch, checkpoint,
        log; return the results. SIGTERM/SIGINT raise :class:`Preempted` after ``last.pt`` is written."""
        self.stop.install()
        try:
            self.set_up()
            start_epoch, start_batch = self.start()
            for epoch in range(start_epoch, self.run.epochs):
                self.train_epoch(epoch, start_batch if epoch == start_epoch else 0)
                self.end_epoch(epoch)
            barrier(self.dist)
            return self._result()
        finally:
            self.stop.restore()
            self.logger.close()
            self.lock.release()
            if self.owns_group:
                cleanup(self.dist)

    def set_up(self) -> None:
        """Seed, lock the output folder (rank 0), build the model, data, loaders, optimizer, schedule, EMA."""
        run, task = self.run, self.task
        if run.num_threads:
            torch.set_num_threads(run.num_threads)
        else:
            limit_threads()
        seed_everything(run.seed, run.deterministic)
        if self.dist.is_main:
            self.lock.acquire()  # also proves the folder writable before any work
        model = task.build_model().to(self.device)
        if run.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.raw_model = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = model
        task.dist = self.dist  # a task's data set-up may depend on the rank (e.g. rank 0 writes shared files)
        train_set, val_set = task.build_datasets()
        self.train_loader, self.sampler = self._loader(train_set, train=True)
        self.val_loader = self._loader(val_set, train=False)[0] if val_set is not None else None
        self.steps_per_epoch = len(self.sampler)
        self.optimizer = build_optimizer(task.param_groups(self.raw_model), self.optim,
                                         scaled_lr(self.optim, self.global_batch))
        self.scheduler = build_scheduler(self.optimizer, self.sched, self.steps_per_epoch, run.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.ctx.amp_dtype == torch.float16)
        if self.optim.ema_decay:
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.raw_model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(self.optim.ema_decay),
                use_buffers=True)
        self.logger = JsonlLogger(self.out_dir / "log.jsonl", self.dist.is_main, run.tensorboard)

    def start(self) -> Tuple[int, int]:
        """(epoch, batch) to start at: (0, 0), or where ``last.pt`` left off. Rank 0 decides and reads the
        checkpoint; the other ranks receive its decision and state (so the folder may be rank 0's alone)."""
        decision: Tuple[str, Any] = ("fresh", None)
        if self.dist.is_main:
            try:
                state = self._find_checkpoint()
                decision = ("resume", state) if state is not None else ("fresh", None)
            except Res2NetError as exc:
                decision = ("error", exc)
        decision = broadcast_object(decision, self.dist)
        if decision[0] == "error":
            raise decision[1]
        if decision[0] == "fresh":
            return 0, 0
        epoch, batch = self._restore(decision[1])
        self.eval_pending = batch == self.steps_per_epoch
        self.logger.log("resume", self.ctx.global_step, epoch=epoch, batch=batch)
        return epoch, batch

    def _should_stop(self) -> bool:
        """Whether any rank was asked to stop (every rank gets the same answer)."""
        return agree(self.stop.requested, self.dist)

    def _preempt(self, epoch: int, step_in_epoch: int, save: bool = True) -> None:
        """Write ``last.pt`` at this step boundary (unless just written) and raise :class:`Preempted`."""
        if save:
            self.save(epoch, step_in_epoch)
        barrier(self.dist)
        shown_epoch = epoch + 1 if step_in_epoch else epoch
        where = self.last_path if self.dist.is_main else f"{self.last_path} (written by rank 0)"
        raise Preempted(f"interrupted at epoch {shown_epoch} step {step_in_epoch}; checkpoint {where}; resume with: "
                        f"{resume_command()}", self.stop.exit_code)

    def train_epoch(self, epoch: int, first: int) -> None:
        """Optimizer steps ``first..steps_per_epoch-1`` of ``epoch``; after a step a periodic checkpoint may be
        written and a stop request is honoured (checkpoint, :class:`Preempted`) before the next batch is loaded;
        the epoch's last step leaves the stop to :meth:`end_epoch`."""
        from tqdm.auto import tqdm

        assert self.sampler is not None and self.train_loader is not None and self.model is not None
        assert self.optimizer is not None and self.scheduler is not None and self.scaler is not None
        run, task = self.run, self.task
        self.ctx.epoch = epoch
        self.sampler.set_epoch(epoch, first)
        if first == 0:
            self.progress = EpochProgress(lr=self.optimizer.param_groups[0]["lr"])
        self.model.train()
        show = self.dist.is_main and not run.quiet
        bar = tqdm(total=self.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{run.epochs}",
                   disable=not show, leave=False, dynamic_ncols=True)
        t_last = time.perf_counter()
        try:
            if self._should_stop():  # asked during the set-up or the previous epoch's end
                self._preempt(epoch, first)
            for i, batch in enumerate(self.train_loader, start=first):
                batch = task.prepare_batch(batch, self.ctx, train=True)
                with self.ctx.autocast():
                    loss, extra = task.training_step(self.model, batch, self.ctx)
                loss_value = float(all_reduce_mean(loss.detach().float(), self.dist))
                if not math.isfinite(loss_value):
                    kept = self.last_path if self.last_path.exists() else "none written yet"
                    raise TrainingDiverged(f"loss is {loss_value} at epoch {epoch + 1}, step {i + 1}; stopped "
                                           f"(last good checkpoint: {kept}); try a lower optim.lr")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if self.optim.clip_grad_norm:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.clip_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                if self.ema is not None:
                    assert self.raw_model is not None
                    self.ema.update_parameters(self.raw_model)
                self.ctx.global_step += 1
                self.images_seen += self.global_batch
                now = time.perf_counter()
                dt, t_last = now - t_last, now  # loading + step time of this batch
                self.train_seconds += dt
                p = self.progress
                p.loss_sum, p.steps, p.images, p.seconds = (p.loss_sum + loss_value, p.steps + 1,
                                                            p.images + self.global_batch, p.seconds + dt)
                p.lr = self.optimizer.param_groups[0]["lr"]
                bar.update(1)
                if show:
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{p.lr:.4g}",
                                    img_s=f"{self.global_batch / dt:.0f}")
                if self.ctx.global_step % max(1, run.log_every) == 0:
                    self.logger.log("step", self.ctx.global_step, epoch=epoch + 1, loss=loss_value, lr=p.lr,
                                    images_per_second=self.global_batch / dt, **extra)
                if run.checkpoint_every and self.ctx.global_step % run.checkpoint_every == 0 \
                        and i + 1 < self.steps_per_epoch:
                    self.save(epoch, i + 1)
                    t_last = time.perf_counter()
                # a stop is taken here, before the next batch is loaded: loading may draw from the global RNG
                # (image-folder augmentation with run.workers=0), and the checkpoint must hold the RNG of step i+1
                if i + 1 < self.steps_per_epoch and self._should_stop():
                    self._preempt(epoch, i + 1)
        finally:
            bar.close()

    def end_epoch(self, epoch: int) -> None:
        """Synchronise BatchNorm buffers, evaluate (when due), record the epoch, write checkpoints. A stop
        request during the evaluation saves the trained epoch with its evaluation pending."""
        assert self.raw_model is not None
        run, task = self.run, self.task
        broadcast_buffers(self.raw_model, self.dist)  # BN statistics of the last steps differ per rank
        last = epoch + 1 == run.epochs
        t_eval = time.perf_counter()
        try:
            due = last or (epoch + 1) % max(1, run.eval_every) == 0
            metrics = self.evaluate() if due else {}
        except _EvaluationInterrupted:
            self._preempt(epoch, self.steps_per_epoch)
        self.eval_pending = False
        p = self.progress
        epoch_seconds = p.seconds + time.perf_counter() - t_eval
        record = {"epoch": epoch + 1, "train_loss": p.loss_sum / max(1, p.steps), "lr": p.lr,
                  "epoch_seconds": epoch_seconds, "images_per_second": p.images / max(epoch_seconds, 1e-9),
                  **metrics}
        self.history.append(record)
        self.logger.log("epoch", self.ctx.global_step, **record)
        if self.dist.is_main:
            from tqdm.auto import tqdm

            tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in record.items()), file=sys.stderr)
        better = self._is_better(metrics)
        if better:
            self.best = metrics[task.primary_metric]
        self.progress = EpochProgress()
        self.save(epoch + 1, 0, best=better)
        if not last and self._should_stop():
            self._preempt(epoch + 1, 0, save=False)

    def _result(self) -> FitResult:
        task = self.task
        final = next((h for h in reversed(self.history) if task.primary_metric in h), {})
        metrics = {k: v for k, v in final.items() if k not in ("epoch", "train_loss", "lr", "epoch_seconds",
                                                                "images_per_second")}
        return FitResult(model=self.eval_model, history=self.history, metrics=metrics,
                         train_seconds=self.train_seconds,
                         images_per_second=self.images_seen / max(self.train_seconds, 1e-9),
                         epochs=self.run.epochs, out_dir=self.out_dir)


def fit(task: Task, cfg: Any, out_dir: Path, resume: bool = False) -> FitResult:
    """Train ``task`` with ``cfg`` into ``out_dir``: ``Trainer(task, cfg, out_dir, resume).fit()``."""
    return Trainer(task, cfg, out_dir, resume=resume).fit()
