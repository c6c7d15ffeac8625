"""The optimizer side of a run: the optimizer and per-step lr schedule factories, and :class:`Optimization`,
which holds them with the fp16 GradScaler and the EMA, takes one optimizer step and saves/restores their state."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, Res2NetError
from .config import OptimConfig, SchedConfig


def scaled_lr(optim: OptimConfig, global_batch: int) -> float:
    """Linear scaling rule (Goyal et al.): ``lr * global_batch / lr_batch``.

    Args:
        optim: the ``optim`` section (``lr`` is for a global batch of ``lr_batch``).
        global_batch: images per optimizer step over all processes.

    Returns:
        The learning rate of this run.
    """
    return optim.lr * global_batch / optim.lr_batch


def build_optimizer(params: List[Dict[str, Any]], optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW from the ``optim`` section. A parameter group may carry
    ``lr_mult``: its lr is ``lr * lr_mult`` (e.g. a pretrained backbone trained slower than a new head).

    Args:
        params: the parameter groups.
        optim: the ``optim`` section.
        lr: the base learning rate.

    Returns:
        The optimizer.
    """
    params = [dict(g, lr=lr * g["lr_mult"]) if "lr_mult" in g else g for g in params]
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov,
                               weight_decay=optim.weight_decay)
    if optim.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=optim.weight_decay)
    raise Res2NetError(f"optim.name must be sgd or adamw, got {optim.name!r}")


def lr_factor(sched: SchedConfig, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at a given optimizer step for the multistep, cosine and constant
    schedules, with optional linear warm-up (``warmup_epochs``).

    Args:
        sched: the ``sched`` section.
        steps_per_epoch: optimizer steps per epoch.
        total_steps: optimizer steps of the run.

    Returns:
        step -> factor.
    """
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
    (its state_dict holds no code, so checkpoints stay ``weights_only``-loadable).

    Args:
        optimizer: the optimizer scheduled.
        sched: the ``sched`` section.
        steps_per_epoch: optimizer steps per epoch.
        epochs: epochs of the run.

    Returns:
        The scheduler, stepped once per optimizer step.
    """
    total = steps_per_epoch * epochs
    if sched.name == "onecycle" and total >= 4:
        max_lr = [g["lr"] for g in optimizer.param_groups]
        pct_start = min(max(sched.pct_start, 2.0 / total), 1.0 - 2.0 / total)  # each phase needs >= 2 steps
        if pct_start != sched.pct_start:
            warnings.warn(f"sched.pct_start={sched.pct_start} leaves a phase of the one-cycle schedule without a "
                          f"step in this run of {total} steps; using {pct_start:.4g}", UserWarning, stacklevel=2)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total,
                                                   pct_start=pct_start)
    if sched.name == "onecycle":  # fewer than 4 steps: nothing to anneal
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(sched, steps_per_epoch, total))
    if sched.name not in ("multistep", "cosine", "constant"):
        raise Res2NetError(f"sched.name must be multistep, onecycle, cosine or constant, got {sched.name!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(sched, steps_per_epoch, total))


@dataclass
class Optimization:
    """The optimizer, its lr schedule, the GradScaler (active with fp16 autocast only) and the EMA of the weights
    (with ``optim.ema_decay``) of one model; :meth:`step` is one optimizer step."""

    model: nn.Module  # the task's model on the device (unwrapped: DDP shares its parameters)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: Optional[torch.optim.swa_utils.AveragedModel]
    clip_grad_norm: float = 0.0

    @classmethod
    def build(cls, model: nn.Module, params: List[Dict[str, Any]], optim: OptimConfig, sched: SchedConfig, *,
              lr: float, steps_per_epoch: int, epochs: int, device: torch.device, fp16: bool) -> "Optimization":
        """Build everything from the ``optim`` and ``sched`` sections.

        Args:
            model: the model trained (its EMA copy is made here).
            params: its optimizer parameter groups (:meth:`Task.param_groups`).
            optim: the ``optim`` section.
            sched: the ``sched`` section.
            lr: the base learning rate (:func:`scaled_lr`).
            steps_per_epoch: optimizer steps per epoch.
            epochs: epochs of the run (the schedule's length).
            device: the run's device.
            fp16: whether autocast is fp16 (then the GradScaler scales the loss).

        Returns:
            The run's :class:`Optimization`.
        """
        optimizer = build_optimizer(params, optim, lr)
        scheduler = build_scheduler(optimizer, sched, steps_per_epoch, epochs)
        scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        ema = None
        if optim.ema_decay:
            ema = torch.optim.swa_utils.AveragedModel(
                model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(optim.ema_decay), use_buffers=True)
        return cls(model, optimizer, scheduler, scaler, ema, optim.clip_grad_norm)

    @property
    def lr(self) -> float:
        """The current learning rate of the first parameter group."""
        return self.optimizer.param_groups[0]["lr"]

    def step(self, loss: Tensor) -> None:
        """Back-propagate ``loss`` (scaled with fp16), clip the gradient norm (``optim.clip_grad_norm``), step
        the optimizer and the lr schedule, update the EMA."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def state_dict(self) -> Dict[str, Any]:
        """The ``optimizer``, ``scheduler``, ``scaler`` and ``ema`` entries of a checkpoint."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None}

    def load_state_dict(self, state: Dict[str, Any], source: Path) -> None:
        """Restore what :meth:`state_dict` saved.

        Args:
            state: a checkpoint holding the entries of :meth:`state_dict`.
            source: the checkpoint's file, named in the error.

        Raises:
            CheckpointError: the state does not fit this optimizer, schedule or model.
        """
        # a one-cycle schedule's length is fixed at its start (and a run under 4 steps has none): another length
        # cannot continue it (torch failed with a bare KeyError 'max_lr' mid-epoch)
        planned = getattr(self.scheduler, "total_steps", None)
        saved_state = state.get("scheduler")
        saved = saved_state.get("total_steps") if isinstance(saved_state, dict) else None
        if planned != saved:
            length = lambda n: f"a one-cycle schedule of {n} steps" if n else "no one-cycle schedule"  # noqa: E731
            raise CheckpointError(f"{source}: it holds {length(saved)} and this run needs {length(planned)} "
                                  "(run.epochs, the batch size or the data changed); a one-cycle schedule cannot be "
                                  "stretched: start a new run (its best.pt can be the --pretrained weights)")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None and state["ema"] is not None:
                self.ema.load_state_dict(state["ema"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{source}: optimizer/scheduler state does not fit this run "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
