"""The task-agnostic training loop (see the package docstring for the contract)."""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import warnings
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..errors import Res2NetError
from .checkpoint import load_latest, rng_state, save_atomic, set_rng_state
from .config import OptimConfig, RunConfig, SchedConfig, to_dict
from .distributed import (DistInfo, all_reduce_mean, barrier, broadcast_buffers, init_distributed, select_amp,
                          select_device)
from .sampler import ResumableBatchSampler


# settings whose change on resume makes the continued run differ from an uninterrupted one
RESUME_SENSITIVE = {"optim": ("name", "lr", "lr_batch", "momentum", "nesterov", "weight_decay", "batch_size",
                              "label_smoothing", "clip_grad_norm", "ema_decay"),
                    "sched": ("name", "milestones", "gamma", "warmup_epochs", "pct_start"),
                    "run": ("epochs", "seed", "amp", "channels_last")}


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
    """SGD (momentum, optional Nesterov) or AdamW from the ``optim`` section."""
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
                 world_size: int = 1, workers: int = 0, collate_fn: Optional[Callable[[Any], Any]] = None,
                 device: Optional[torch.device] = None) -> Tuple[DataLoader, ResumableBatchSampler]:
    """A DataLoader over ``dataset`` driven by a :class:`ResumableBatchSampler` (shuffled and dropping the
    last partial batch when ``train``; in order and complete otherwise). Its own generator keeps worker seeding
    off torch's global RNG."""
    sampler = ResumableBatchSampler(len(dataset), batch_size, shuffle=train, seed=seed,  # type: ignore[arg-type]
                                    rank=rank, world_size=world_size, drop_last=train)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                        pin_memory=device is not None and device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed))
    return loader, sampler


class JsonlLogger:
    """Appends one JSON record per line to ``<out>/log.jsonl`` (rank 0 only); optional TensorBoard."""

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
        if not self.enabled:
            return
        rec = {"type": kind, "step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# what only a resume needs; best.pt leaves it out (with AdamW that is two thirds of a checkpoint's size)
RESUME_ONLY_KEYS = ("optimizer", "scheduler", "scaler", "rng", "sampler", "step_in_epoch")


class Trainer:
    """Runs one task with one config into one output folder.

    ``cfg`` is any config dataclass with ``optim`` (:class:`OptimConfig`), ``sched`` (:class:`SchedConfig`)
    and ``run`` (:class:`RunConfig`) sections; it is saved whole in every checkpoint. Call :meth:`fit`.
    """

    def __init__(self, task: Task, cfg: Any, out_dir: Path, resume: bool = False,
                 dist_info: Optional[DistInfo] = None) -> None:
        self.task, self.cfg, self.out_dir, self.resume = task, cfg, Path(out_dir), resume
        self.optim: OptimConfig = cfg.optim
        self.sched: SchedConfig = cfg.sched
        self.run: RunConfig = cfg.run
        self.dist = dist_info or init_distributed(self.run.device)
        self.device = select_device(self.run.device, self.dist.local_rank)
        self.ctx = Context(device=self.device, amp_dtype=select_amp(self.run.amp, self.device),
                           channels_last=self.run.channels_last, dist=self.dist, out_dir=self.out_dir)
        self.last_path = self.out_dir / "last.pt"
        self.best_path = self.out_dir / "best.pt"

    # ---- checkpoints --------------------------------------------------------------------------------
    def _state(self, epoch: int, step_in_epoch: int) -> Dict[str, Any]:
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.ctx.global_step,
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

    def _restore(self, state: Dict[str, Any]) -> Tuple[int, int]:
        saved_world = state["sampler"]["world_size"]
        if saved_world != self.dist.world_size:
            raise Res2NetError(f"{self.last_path} was written by {saved_world} process(es); resume with the "
                               f"same number (now {self.dist.world_size})")
        saved, now = state.get("config", {}), to_dict(self.cfg)
        changed = [f"{sec}.{k}" for sec, keys in RESUME_SENSITIVE.items() for k in keys
                   if k in saved.get(sec, {}) and saved[sec][k] != now.get(sec, {}).get(k)]
        if changed:
            warnings.warn(f"resuming {self.last_path} with changed settings {', '.join(changed)}: the run will "
                          "not match an uninterrupted one", stacklevel=2)
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.ctx.global_step = state["global_step"]
        self.history, self.best = list(state["history"]), state["best"]
        self.train_seconds, self.images_seen = state["train_seconds"], state["images_seen"]
        set_rng_state(state["rng"])
        return state["epoch"], state["step_in_epoch"]

    # ---- pieces --------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, train: bool) -> Tuple[DataLoader, ResumableBatchSampler]:
        rank, world = (self.dist.rank, self.dist.world_size) if train else (0, 1)
        return build_loader(dataset, self.optim.batch_size, train=train, seed=self.run.seed, rank=rank,
                            world_size=world, workers=self.run.workers, collate_fn=self.task.collate_fn,
                            device=self.device)

    def evaluate(self) -> Dict[str, float]:
        """Run the task's evaluation on rank 0 (other ranks wait); returns {} elsewhere."""
        metrics: Dict[str, float] = {}
        if self.val_loader is not None and self.dist.is_main:
            model = self.eval_model
            was = model.training
            model.eval()
            with torch.no_grad(), self.ctx.autocast():
                metrics = self.task.evaluate(model, self.val_loader, self.ctx)
            model.train(was)
        barrier(self.dist)
        return metrics

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.raw_model

    def _is_better(self, metrics: Dict[str, float]) -> bool:
        value = metrics.get(self.task.primary_metric)
        if value is None:
            return False
        if self.best is None:
            return True
        return value > self.best if self.task.higher_is_better else value < self.best

    # ---- the loop ------------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train (resuming from ``last.pt`` when asked), evaluate each epoch, checkpoint, log; return results."""
        from tqdm.auto import tqdm

        run, task = self.run, self.task
        if run.num_threads:
            torch.set_num_threads(run.num_threads)
        seed_everything(run.seed, run.deterministic)
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        model = task.build_model().to(self.device)
        if run.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.raw_model = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        task.dist = self.dist  # a task's data set-up may depend on the rank (e.g. rank 0 writes shared files)
        train_set, val_set = task.build_datasets()
        train_loader, sampler = self._loader(train_set, train=True)
        self.val_loader = self._loader(val_set, train=False)[0] if val_set is not None else None
        steps_per_epoch = len(sampler)
        global_batch = self.optim.batch_size * self.dist.world_size
        self.optimizer = build_optimizer(task.param_groups(self.raw_model), self.optim,
                                         scaled_lr(self.optim, global_batch))
        self.scheduler = build_scheduler(self.optimizer, self.sched, steps_per_epoch, run.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.ctx.amp_dtype == torch.float16)
        self.ema: Optional[torch.optim.swa_utils.AveragedModel] = None
        if self.optim.ema_decay:
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.raw_model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(self.optim.ema_decay),
                use_buffers=True)
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[float] = None
        self.train_seconds, self.images_seen = 0.0, 0
        logger = JsonlLogger(self.out_dir / "log.jsonl", self.dist.is_main, run.tensorboard)

        start_epoch, start_batch = 0, 0
        if self.resume:
            state = load_latest(self.last_path)
            if state is not None:
                start_epoch, start_batch = self._restore(state)
                logger.log("resume", self.ctx.global_step, epoch=start_epoch, batch=start_batch)
        elif self.dist.is_main and self.last_path.exists():
            raise Res2NetError(f"{self.last_path} exists; pass --resume to continue it or choose another --out")
        barrier(self.dist)

        show = self.dist.is_main and not run.quiet
        for epoch in range(start_epoch, run.epochs):
            self.ctx.epoch = epoch
            sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
            model.train()
            first = start_batch if epoch == start_epoch else 0
            bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{run.epochs}",
                       disable=not show, leave=False, dynamic_ncols=True)
            loss_sum, loss_n, n_epoch = 0.0, 0, 0
            lr = self.optimizer.param_groups[0]["lr"]
            t_epoch = t_last = time.perf_counter()
            for i, batch in enumerate(train_loader, start=first):
                batch = task.prepare_batch(batch, self.ctx, train=True)
                with self.ctx.autocast():
                    loss, extra = task.training_step(model, batch, self.ctx)
                loss_value = float(all_reduce_mean(loss.detach().float(), self.dist))
                if not math.isfinite(loss_value):
                    kept = self.last_path if self.last_path.exists() else "none written yet"
                    raise TrainingDiverged(f"loss is {loss_value} at epoch {epoch + 1}, step {i + 1}; stopped "
                                           f"(last good checkpoint: {kept}); try a lower optim.lr")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if self.optim.clip_grad_norm:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.optim.clip_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.raw_model)
                self.ctx.global_step += 1
                n_epoch += global_batch
                self.images_seen += global_batch
                now = time.perf_counter()
                dt, t_last = now - t_last, now  # loading + step time of this batch
                self.train_seconds += dt
                loss_sum, loss_n = loss_sum + loss_value, loss_n + 1
                lr = self.optimizer.param_groups[0]["lr"]
                bar.update(1)
                if show:
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.4g}", img_s=f"{global_batch / dt:.0f}")
                if self.ctx.global_step % max(1, run.log_every) == 0:
                    logger.log("step", self.ctx.global_step, epoch=epoch + 1, loss=loss_value, lr=lr,
                               images_per_second=global_batch / dt, **extra)
                if run.checkpoint_every and self.ctx.global_step % run.checkpoint_every == 0 \
                        and i + 1 < steps_per_epoch:
                    self.save(epoch, i + 1)
                    t_last = time.perf_counter()
            bar.close()
            broadcast_buffers(self.raw_model, self.dist)  # BN statistics of the last steps differ per rank
            epoch_seconds = time.perf_counter() - t_epoch
            last = epoch + 1 == run.epochs
            metrics = self.evaluate() if (last or (epoch + 1) % max(1, run.eval_every) == 0) else {}
            record = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, loss_n), "lr": lr,
                      "epoch_seconds": epoch_seconds, "images_per_second": n_epoch / max(epoch_seconds, 1e-9),
                      **metrics}
            self.history.append(record)
            logger.log("epoch", self.ctx.global_step, **record)
            if self.dist.is_main:
                tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in record.items()), file=sys.stderr)
            better = self._is_better(metrics)
            if better:
                self.best = metrics[task.primary_metric]
            self.save(epoch + 1, 0, best=better)
        logger.close()
        barrier(self.dist)
        final = next((h for h in reversed(self.history) if task.primary_metric in h), {})
        metrics = {k: v for k, v in final.items() if k not in ("epoch", "train_loss", "lr", "epoch_seconds",
                                                                "images_per_second")}
        return FitResult(model=self.eval_model, history=self.history, metrics=metrics,
                         train_seconds=self.train_seconds,
                         images_per_second=self.images_seen / max(self.train_seconds, 1e-9),
                         epochs=run.epochs, out_dir=self.out_dir)


def fit(task: Task, cfg: Any, out_dir: Path, resume: bool = False) -> FitResult:
    """Train ``task`` with ``cfg`` into ``out_dir``: ``Trainer(task, cfg, out_dir, resume).fit()``."""
    return Trainer(task, cfg, out_dir, resume=resume).fit()
