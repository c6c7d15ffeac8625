"""The task-agnostic training engine: one loop for classification, detection, segmentation and saliency.

The loop (:class:`Trainer`) owns everything that is not task-specific: device selection (CUDA when present),
``torchrun`` DDP (gloo on CPU, nccl on CUDA; only rank 0 writes files or prints), AMP (bf16 autocast on CPU,
bf16/fp16 on CUDA with a GradScaler for fp16), channels_last, the optimizer and per-step lr schedule, EMA,
gradient clipping, atomic checkpoints (``last.pt`` + ``last.prev.pt`` + ``best.pt``), exact resume (model,
optimizer, scheduler, scaler, EMA, every RNG state and the sampler position, so a run killed mid-epoch
resumes bit for bit with ``run.deterministic``), NaN/inf stop, JSONL logs and tqdm progress; and the faults of a
cluster: SIGTERM/SIGINT stop at the next step boundary with ``last.pt`` written (:class:`Preempted`, exit
143/130 through the CLI), a lock on the output folder, resumes that would mix runs refused, automatic resume of a
``torchrun`` restart, bounded process-group set-up, strict JSON (:func:`res2net.jsonio.write_json`).

A task supplies the rest by subclassing :class:`Task`::

    class MyTask(Task):
        name = "segmentation"
        primary_metric, higher_is_better = "miou", True   # key of evaluate() that picks best.pt
        collate_fn = None                                 # DataLoader collate (None: default_collate)

        def build_model(self) -> nn.Module: ...           # fresh model; the engine moves/wraps it
        def build_datasets(self) -> (train_set, val_set): # map-style data sets (val may be None)
        def prepare_batch(self, batch, ctx, train): ...   # optional: ctx.to_device(batch) + batched augment
        def training_step(self, model, batch, ctx) -> (loss, {"name": float, ...})   # under autocast
        def evaluate(self, model, loader, ctx) -> {"miou": float, ...}   # eval mode, no_grad, autocast
        def param_groups(self, model) -> [{"params": ...}, ...]          # optional

    result = fit(MyTask(...), cfg, out_dir, resume=False)   # -> FitResult(model, history, metrics, ...)

``ctx`` is a :class:`Context` (device, amp dtype, channels_last, dist info, out_dir, epoch, global_step;
``ctx.to_device(obj)`` and ``ctx.autocast()``). Sample order comes from the engine's
:class:`ResumableBatchSampler` (seeded per epoch, sharded per rank); a task never builds its own training
loader (``build_loader`` makes the same kind of loader for stand-alone evaluation commands). A task may set
``self.collate_fn`` in ``__init__`` (it is read after ``build_datasets``). Per model, the engine writes
``<out>/last.pt``, ``last.prev.pt``, ``best.pt`` (by ``primary_metric``; weights, EMA, config and history
only, for evaluation: a resume reads ``last.pt``) and ``log.jsonl``; it refuses to
overwrite an existing ``last.pt`` unless ``resume=True``.
Random augmentation should use torch's global RNG in ``prepare_batch`` (restored on resume); augmentation
inside DataLoader workers (``run.workers > 0``) is reproducible per run, but a mid-epoch resume is exact
only with ``run.workers=0`` or augmentation in ``prepare_batch``.

Configuration: a task declares a top-level dataclass holding the engine's sections :class:`OptimConfig`
(``optim.*``), :class:`SchedConfig` (``sched.*``), :class:`RunConfig` (``run.*``) plus its own sections, and
reads it with :func:`load_config(schema, recipe, overrides, values)` from a packaged recipe
(``res2net/configs/<name>.yaml``) or a YAML path; unknown keys and wrong types raise one-line
:class:`~res2net.errors.ConfigError` naming the key and what is allowed. The command-line flags that fill it
(``--config --epochs --batch-size ... --set KEY=VALUE``) live with the commands
(:mod:`res2net.commands.common`). Precedence: schema defaults < recipe < flags < ``--set``.

Learning rate: ``optim.lr`` is for a global batch of ``optim.lr_batch``; the loop uses
``lr * batch_size * world_size / lr_batch`` (linear scaling rule), so adding processes keeps the recipe.
Checkpoints load with ``torch.load(path, weights_only=True)`` (:func:`load_checkpoint`, which is
:func:`res2net.weights.io.read_checkpoint`, the package's one checkpoint reader).
"""

from .checkpoint import load_checkpoint, load_latest, save_atomic
from .config import OptimConfig, RunConfig, SchedConfig, load_config, to_dict
from ..hardware import select_device
from .distributed import DistInfo, init_distributed, select_amp
from .sampler import ResumableBatchSampler
from .runfolder import RunLock
from .trainer import (Context, FitResult, Preempted, Task, Trainer, TrainingDiverged, build_loader, fit,
                      seed_everything)

__all__ = [
    "Context", "DistInfo", "FitResult", "OptimConfig", "Preempted", "ResumableBatchSampler", "RunConfig", "RunLock",
    "SchedConfig",
    "Task", "Trainer", "TrainingDiverged", "build_loader", "fit",
    "init_distributed", "load_checkpoint", "load_config", "load_latest", "save_atomic", "seed_everything",
    "select_amp", "select_device", "to_dict",
]
