"""The task-agnostic training loop: :class:`Trainer` runs one :class:`~res2net.engine.contract.Task` with one config
into one output folder (docs/TRAINING.md, "The engine")."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import Res2NetError
from ..hardware import limit_threads, select_device
from ..weights.load import load_state_dict_strict
from .checkpoint import rng_state, save_atomic, set_rng_state
from .config import OptimConfig, RunConfig, SchedConfig, current_key_names, to_dict
from .distributed import (DistInfo, agree, all_reduce_mean, barrier, broadcast_buffers, broadcast_object, cleanup,
                          init_distributed, select_amp)
from .logging import JsonlLogger, echo
from .optim import Optimization, scaled_lr
from .resume import (RESUME_ONLY_KEYS, EpochProgress, RunState, check_compatible, read_resume_state, resume_command,
                     seed_everything)
from .runfolder import RunLock
from .sampler import ResumableBatchSampler, build_loader
from .signals import EvaluationInterrupted, Preempted, StopSignals, TrainingDiverged, stoppable
from .contract import Context, FitResult, Task


class Trainer:
    """Runs one task with one config into one output folder.

    ``cfg`` is any config dataclass with ``optim`` (:class:`OptimConfig`), ``sched`` (:class:`SchedConfig`)
    and ``run`` (:class:`RunConfig`) sections; it is saved whole in every checkpoint. Call :meth:`fit`, which
    runs :meth:`set_up`, :meth:`start` (fresh or restored from ``last.pt``), then per epoch
    :meth:`train_epoch` (each batch: :meth:`step`, then :meth:`record`) and :meth:`end_epoch`.

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
        self.optimization: Optional[Optimization] = None  # optimizer, lr schedule, GradScaler, EMA
        self.train_loader: Optional[DataLoader] = None
        self.sampler: Optional[ResumableBatchSampler] = None
        self.val_loader: Optional[DataLoader] = None
        self.steps_per_epoch = 0
        self.global_batch = self.optim.batch_size * self.dist.world_size
        self.logger = JsonlLogger(self.out_dir / "log.jsonl", False)
        self.lock = RunLock(self.out_dir)
        self.state = RunState()  # what the run has done (saved in checkpoints)
        self.eval_pending = False  # the last epoch's training ended but its evaluation did not
        self.stop = StopSignals()

    # ---- checkpoints --------------------------------------------------------------------------------
    def _checkpoint(self, epoch: int, step_in_epoch: int) -> Dict[str, Any]:
        assert self.raw_model is not None and self.optimization is not None
        return {
            "model": self.raw_model.state_dict(), **self.optimization.state_dict(),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.ctx.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch_progress": self.state.progress.as_dict() if step_in_epoch else None,
            "rng": rng_state(),
            "sampler": {"seed": self.run.seed, "epoch": epoch, "start_batch": step_in_epoch,
                        "world_size": self.dist.world_size},
            "config": to_dict(self.cfg), "task": self.task.name, "meta": self.task.checkpoint_meta(),
            **self.state.saved(),
        }

    def save(self, epoch: int, step_in_epoch: int, best: bool = False) -> None:
        """Write ``last.pt`` (and ``best.pt``) atomically; rank 0 only."""
        if not self.dist.is_main:
            return
        state = self._checkpoint(epoch, step_in_epoch)
        save_atomic(state, self.last_path)
        if best:  # for evaluation and prediction only: no optimizer/scheduler/RNG state (resume reads last.pt)
            weights = {k: v for k, v in state.items() if k not in RESUME_ONLY_KEYS}
            save_atomic(weights, self.best_path, keep_previous=False)

    def _restore(self, state: Dict[str, Any]) -> Tuple[int, int]:
        assert self.raw_model is not None and self.optimization is not None
        load_state_dict_strict(self.raw_model, state["model"], source=str(self.last_path))
        self.optimization.load_state_dict(state, self.last_path)
        self.ctx.global_step = state["global_step"]
        self.state = RunState.read_back(state)
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
        it between batches (raising :class:`EvaluationInterrupted` on rank 0 after the ranks met)."""
        metrics: Dict[str, float] = {}
        interrupted = False
        if self.val_loader is not None and self.dist.is_main:
            model = self.eval_model
            was = model.training
            model.eval()
            try:
                with torch.no_grad(), self.ctx.autocast():
                    metrics = self.task.evaluate(model, stoppable(self.val_loader, self.stop), self.ctx)
            except EvaluationInterrupted:
                interrupted = True
            finally:
                model.train(was)
            if not interrupted and not metrics:
                warnings.warn(f"evaluation of {self.out_dir} gave no metrics (no usable validation sample?)",
                              stacklevel=2)
        barrier(self.dist)
        if agree(interrupted, self.dist):  # every rank leaves the epoch end the same way
            raise EvaluationInterrupted
        return metrics

    @property
    def eval_model(self) -> nn.Module:
        """The model evaluated and returned: the EMA weights when EMA is on, else the trained model."""
        assert self.raw_model is not None and self.optimization is not None
        ema = self.optimization.ema
        return ema.module if ema is not None else self.raw_model

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
        self.optimization = Optimization.build(
            self.raw_model, task.param_groups(self.raw_model), self.optim, self.sched,
            lr=scaled_lr(self.optim, self.global_batch), steps_per_epoch=self.steps_per_epoch, epochs=run.epochs,
            device=self.device, fp16=self.ctx.amp_dtype == torch.float16)
        self.logger = JsonlLogger(self.out_dir / "log.jsonl", self.dist.is_main, run.tensorboard)

    def start(self) -> Tuple[int, int]:
        """(epoch, batch) to start at: (0, 0), or where ``last.pt`` left off. Rank 0 decides and reads the
        checkpoint; the other ranks receive its decision and state (so the folder may be rank 0's alone)."""
        decision: Tuple[str, Any] = ("fresh", None)
        if self.dist.is_main:
            try:
                state = read_resume_state(self.last_path, self.resume)
                if state is not None:
                    state["config"] = current_key_names(type(self.cfg), state.get("config"))  # older key names
                    check_compatible(state, self.last_path, task=self.task.name, world_size=self.dist.world_size,
                                     steps_per_epoch=self.steps_per_epoch, config=to_dict(self.cfg),
                                     free_keys=self.task.resume_free_keys, strict=not self.resume)
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
        assert self.optimization is not None
        run, last = self.run, self.steps_per_epoch
        self.ctx.epoch = epoch
        self.sampler.set_epoch(epoch, first)
        if first == 0:
            self.state.progress = EpochProgress(lr=self.optimization.lr)
        self.model.train()
        show = self.dist.is_main and not run.quiet
        bar = tqdm(total=last, initial=first, desc=f"epoch {epoch + 1}/{run.epochs}", disable=not show, leave=False,
                   dynamic_ncols=True)
        t_last = time.perf_counter()
        try:
            if self._should_stop():  # asked during the set-up or the previous epoch's end
                self._preempt(epoch, first)
            for i, batch in enumerate(self.train_loader, start=first):
                loss, extra = self.step(batch, epoch, i)
                now = time.perf_counter()
                self.record(epoch, loss, extra, now - t_last, bar)  # loading + step time of this batch
                t_last = now
                if run.checkpoint_every and self.ctx.global_step % run.checkpoint_every == 0 and i + 1 < last:
                    self.save(epoch, i + 1)
                    t_last = time.perf_counter()
                # a stop is taken here, before the next batch is loaded: loading may draw from the global RNG
                # (image-folder augmentation with run.workers=0), and the checkpoint must hold the RNG of step i+1
                if i + 1 < last and self._should_stop():
                    self._preempt(epoch, i + 1)
        finally:
            bar.close()

    def step(self, batch: Any, epoch: int, i: int) -> Tuple[float, Dict[str, float]]:
        """One optimizer step on loader batch ``i`` of ``epoch``; a NaN/inf loss stops the run first
        (:class:`TrainingDiverged`).

        Returns:
            The loss averaged over the ranks and the task's extra scalars.
        """
        assert self.model is not None and self.optimization is not None
        batch = self.task.prepare_batch(batch, self.ctx, train=True)
        with self.ctx.autocast():
            loss, extra = self.task.training_step(self.model, batch, self.ctx)
        loss_value = float(all_reduce_mean(loss.detach().float(), self.dist))
        if not math.isfinite(loss_value):
            kept = self.last_path if self.last_path.exists() else "none written yet"
            raise TrainingDiverged(f"loss is {loss_value} at epoch {epoch + 1}, step {i + 1}; stopped "
                                   f"(last good checkpoint: {kept}); try a lower optim.lr")
        self.optimization.step(loss)
        self.ctx.global_step += 1
        self.state.images_seen += self.global_batch
        return loss_value, extra

    def record(self, epoch: int, loss: float, extra: Dict[str, float], seconds: float, bar: Any) -> None:
        """The record of one optimizer step: the run's and the epoch's sums, the progress bar ``bar`` and,
        every ``run.log_every`` steps, a ``step`` line in ``log.jsonl``."""
        assert self.optimization is not None
        self.state.train_seconds += seconds
        self.state.progress.add(loss, self.global_batch, seconds, self.optimization.lr)
        lr = self.state.progress.lr
        bar.update(1)
        if not bar.disable:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.4g}", img_s=f"{self.global_batch / seconds:.0f}")
        if self.ctx.global_step % max(1, self.run.log_every) == 0:
            self.logger.log("step", self.ctx.global_step, epoch=epoch + 1, loss=loss, lr=lr,
                            images_per_second=self.global_batch / seconds, **extra)

    def end_epoch(self, epoch: int) -> None:
        """Synchronise BatchNorm buffers, evaluate (when due), record the epoch, write checkpoints. A stop
        request during the evaluation saves the trained epoch with its evaluation pending."""
        assert self.raw_model is not None
        broadcast_buffers(self.raw_model, self.dist)  # BN statistics of the last steps differ per rank
        last = epoch + 1 == self.run.epochs
        t_eval = time.perf_counter()
        try:
            due = last or (epoch + 1) % max(1, self.run.eval_every) == 0
            metrics = self.evaluate() if due else {}
        except EvaluationInterrupted:
            self._preempt(epoch, self.steps_per_epoch)
        self.eval_pending = False
        record = {**self.state.progress.summary(epoch, time.perf_counter() - t_eval), **metrics}
        self.state.history.append(record)
        self.logger.log("epoch", self.ctx.global_step, **record)
        if self.dist.is_main:
            echo(record)
        better = self.state.improves(metrics, self.task.primary_metric, self.task.higher_is_better)
        if better:
            self.state.best = metrics[self.task.primary_metric]
        self.state.progress = EpochProgress()
        self.save(epoch + 1, 0, best=better)
        if not last and self._should_stop():
            self._preempt(epoch + 1, 0, save=False)

    def _result(self) -> FitResult:
        done = self.state
        final = next((h for h in reversed(done.history) if self.task.primary_metric in h), {})
        metrics = {k: v for k, v in final.items() if k not in ("epoch", "train_loss", "lr", "epoch_seconds",
                                                                "images_per_second")}
        return FitResult(model=self.eval_model, history=done.history, metrics=metrics,
                         train_seconds=done.train_seconds,
                         images_per_second=done.images_seen / max(done.train_seconds, 1e-9),
                         epochs=self.run.epochs, out_dir=self.out_dir)


def fit(task: Task, cfg: Any, out_dir: Path, resume: bool = False) -> FitResult:
    """Train ``task`` with ``cfg`` (``optim``, ``sched``, ``run`` sections) into ``out_dir`` (continuing its
    ``last.pt`` with ``resume``): ``Trainer(task, cfg, out_dir, resume).fit()``; returns its :class:`FitResult`."""
    return Trainer(task, cfg, out_dir, resume=resume).fit()
