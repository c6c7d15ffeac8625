"""The resume policy: which checkpoint a run continues from and when it refuses, what only a resume reads back,
the epoch's running sums, seeding and the command line that continues a stopped run. The RNG states themselves
are saved and restored by :func:`~res2net.engine.checkpoint.rng_state` / ``set_rng_state``."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError, Res2NetError
from .checkpoint import load_latest, previous_path
from .distributed import under_torchrun

# what only a resume needs; best.pt leaves it out (with AdamW that is two thirds of a checkpoint's size)
RESUME_ONLY_KEYS = ("optimizer", "scheduler", "scaler", "rng", "sampler", "step_in_epoch", "epoch_progress")
# settings a resume may change freely: they change neither the weights nor the data order
RESUME_FREE_KEYS = ("run.quiet", "run.workers", "run.num_threads", "run.log_every", "run.checkpoint_every",
                    "run.tensorboard", "run.device")
# sections whose changes the loop can absorb with a warning on an explicit --resume (the lr, the length of the
# run); a change anywhere else (the data, the model) is refused
RESUME_SOFT_SECTIONS = ("optim", "sched", "run")


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; with ``deterministic`` also force deterministic kernels, else let cuDNN
    pick the fastest convolution algorithm per input shape (``cudnn.benchmark``; no effect on the CPU).

    Args:
        seed: the run's seed (``run.seed``).
        deterministic: force deterministic kernels (``run.deterministic``).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic)


@dataclass
class EpochProgress:
    """Running sums of the current epoch; saved in mid-epoch checkpoints so that a resumed epoch reports the
    loss over all of its steps."""

    loss_sum: float = 0.0
    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    lr: float = 0.0

    def add(self, loss: float, images: int, seconds: float, lr: float) -> None:
        """Count one optimizer step.

        Args:
            loss: its loss (averaged over the ranks).
            images: the images it trained on (all ranks).
            seconds: its loading + step time.
            lr: the learning rate after it.
        """
        self.loss_sum, self.steps = self.loss_sum + loss, self.steps + 1
        self.images, self.seconds, self.lr = self.images + images, self.seconds + seconds, lr

    def summary(self, epoch: int, eval_seconds: float) -> Dict[str, Any]:
        """The training part of epoch ``epoch``'s record (``eval_seconds``: its evaluation's time, counted in)."""
        epoch_seconds = self.seconds + eval_seconds
        return {"epoch": epoch + 1, "train_loss": self.loss_sum / max(1, self.steps), "lr": self.lr,
                "epoch_seconds": epoch_seconds, "images_per_second": self.images / max(epoch_seconds, 1e-9)}

    def as_dict(self) -> Dict[str, float]:
        """The sums as a plain dict (``EpochProgress(**d)`` reads it back)."""
        return dataclasses.asdict(self)


@dataclass
class RunState:
    """What a run has done so far: saved in every checkpoint and read back by a resume, beside the weights, the
    optimizer side (:class:`~res2net.engine.optim.Optimization`), the RNG states and the position."""

    history: List[Dict[str, Any]] = field(default_factory=list)  # one record per finished epoch
    best: Optional[float] = None  # the best primary metric so far (it selected best.pt)
    train_seconds: float = 0.0
    images_seen: int = 0
    progress: EpochProgress = field(default_factory=EpochProgress)  # the current epoch's sums

    def saved(self) -> Dict[str, Any]:
        """The ``history``, ``best``, ``train_seconds`` and ``images_seen`` entries of a checkpoint (the epoch's
        sums are saved as ``epoch_progress`` in mid-epoch checkpoints only)."""
        return {"history": self.history, "best": self.best, "train_seconds": self.train_seconds,
                "images_seen": self.images_seen}

    @classmethod
    def read_back(cls, state: Dict[str, Any]) -> "RunState":
        """The run state a checkpoint holds.

        Args:
            state: the checkpoint's contents.

        Returns:
            Its :class:`RunState`.
        """
        progress = state.get("epoch_progress")
        return cls(list(state["history"]), state["best"], state["train_seconds"], state["images_seen"],
                   EpochProgress(**progress) if progress else EpochProgress())

    def improves(self, metrics: Dict[str, float], key: str, higher_is_better: bool) -> bool:
        """Whether ``metrics[key]`` (finite) beats the best so far.

        Args:
            metrics: an evaluation's metrics.
            key: the metric that selects ``best.pt``.
            higher_is_better: its direction.

        Returns:
            True when it is the new best.
        """
        value = metrics.get(key)
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if higher_is_better else value < self.best


def config_changes(saved: Dict[str, Any], now: Dict[str, Any], prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two nested config dicts (keys on one side only included).

    Args:
        saved: the checkpoint's config.
        now: this run's config.
        prefix: the dotted path of both dicts (for the recursion).

    Returns:
        The changed keys, sorted per level.
    """
    changed = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


def read_resume_state(last_path: Path, resume: bool) -> Optional[Dict[str, Any]]:
    """The checkpoint to continue from (rank 0), None for a fresh run. Without ``resume`` a folder holding a
    checkpoint is refused, except under ``torchrun``, where it is the elastic agent restarting the group.

    Args:
        last_path: the run's ``last.pt`` (``last.prev.pt`` is read when it is unusable).
        resume: whether the user asked to continue the run.

    Returns:
        The checkpoint's contents, or None.
    """
    if not (last_path.exists() or previous_path(last_path).exists()):
        return None
    if not (resume or under_torchrun()):
        raise Res2NetError(f"{last_path} exists; pass --resume to continue it or choose another --out")
    return load_latest(last_path)


def _value(cfg: Dict[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def check_compatible(state: Dict[str, Any], where: Path, *, task: str, world_size: int, steps_per_epoch: int,
                     config: Dict[str, Any], free_keys: Sequence[str], strict: bool) -> None:
    """Refuse a checkpoint of another task, process count, data or model; warn about (explicit resume) or
    refuse (``strict``: automatic resume under torchrun) changed optimizer/schedule/run settings.

    Args:
        state: the checkpoint read back.
        where: its file, named in the messages.
        task: this run's task name.
        world_size: this run's process count.
        steps_per_epoch: this run's optimizer steps per epoch.
        config: this run's config as a dict.
        free_keys: the task's keys a resume may change, besides :data:`RESUME_FREE_KEYS`.
        strict: refuse any change of setting.
    """
    saved_task = state.get("task", task)
    if saved_task != task:
        raise CheckpointError(f"{where} holds a {saved_task} run, not {task}; choose another --out")
    saved_world = state.get("sampler", {}).get("world_size", world_size)
    if saved_world != world_size:
        raise Res2NetError(f"{where} was written by {saved_world} process(es); resume with the same number "
                           f"(now {world_size})")
    free = set(RESUME_FREE_KEYS) | set(free_keys)
    saved_cfg = state.get("config") if isinstance(state.get("config"), dict) else {}
    changed = [k for k in config_changes(saved_cfg, config) if k not in free]
    hard = [k for k in changed if k.split(".")[0] not in RESUME_SOFT_SECTIONS]
    if hard or (strict and changed):
        why = "under torchrun a run folder is only continued with the same settings" if strict and not hard \
            else "the data or the model would change under the run"
        shown = "; ".join(f"{k} {_value(saved_cfg, k)!r} -> {_value(config, k)!r}" for k in (hard or changed))
        raise ConfigError(f"{where} holds a run with other settings ({shown}); "
                          f"{why}: give the same settings or choose another --out")
    saved_steps = state.get("steps_per_epoch")
    if saved_steps is not None and saved_steps != steps_per_epoch:
        raise ConfigError(f"{where} was written with {saved_steps} steps per epoch, this run has "
                          f"{steps_per_epoch} (the training data changed); choose another --out")
    if changed:
        warnings.warn(f"resuming {where} with changed settings {', '.join(changed)}: the run will not match an "
                      "uninterrupted one", stacklevel=2)


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
