"""What ``res2net train`` and ``res2net eval`` run: every model of a config trained with one or more seeds
(:func:`train_models`, which writes the report) and a checkpoint scored on a data set
(:func:`evaluate_checkpoint`)."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ...engine import Context, build_loader, fit, init_distributed, load_config, select_amp, select_device
from ...engine.runfolder import RunLock
from ...errors import CheckpointError, ConfigError, DataError
from ...models import get_spec
from ...weights import PRETRAINED_DIR, describe_checkpoint, fetch_first, load_model, save_pretrained
from ...weights.load import require_classifier
from .config import ClassificationConfig
from .data import ClassificationData, load_data
from .report import earlier_models, model_summary, write_report
from .seeds import seed_statistics, seeds_plot
from .classifier import ClassificationTask


def train_one(name: str, cfg: ClassificationConfig, out: Path, resume: bool, quiet: bool,
              command: str = "res2net train") -> Tuple[Dict[str, Any], Optional[Tensor], ClassificationData]:
    """Fit one model (fine-tuning from ``model.pretrained`` when set) into ``out``; write its best weights as a
    :func:`~res2net.weights.save_pretrained` folder (``out/pretrained``).

    Args:
        name: the model's name.
        cfg: the run's config.
        out: the model's run folder.
        resume: continue the run in ``out``.
        quiet: print no header line.
        command: the command line recorded in the pretrained folder.

    Returns:
        Its ``metrics.json`` entry, its confusion matrix (None off rank 0) and its data.
    """
    weights = None
    if cfg.model.pretrained:
        weights = fetch_first(name, cfg.model.pretrained)
    data = load_data(cfg.data, name, cfg.run.seed, card=weights.preprocessing if weights else None)
    task = ClassificationTask(name, cfg, data, weights)
    if not quiet:
        start = f", fine-tuning from {weights.source}" if weights else ""
        print(f"== {name}: {len(data.train)} train / {len(data.test)} test images, {cfg.run.epochs} epochs{start}, "
              f"out {out}", file=sys.stderr)
    result = fit(task, cfg, out, resume=resume)
    summary = model_summary(name, result, data, len(task.skipped))
    if task.dist.is_main and (out / "best.pt").is_file():
        best = load_model(out / "best.pt", name)  # the model's name, classes and preprocessing come with it
        save_pretrained(best, out / PRETRAINED_DIR, classes=data.classes, data=cfg.data.dataset, command=command,
                        metrics={k: summary[k] for k in ("test_top1", "test_top5")})
    return summary, task.confusion, data


def train_models(cfg: ClassificationConfig, out: Path, seeds: int = 1, resume: bool = False,
                 command: str = "res2net train") -> Dict[str, Dict[str, Any]]:
    """Train every model of ``cfg`` into ``out`` (``out/<model>``, or ``out/<model>/seed<S>`` with several seeds:
    ``run.seed``, +1, ...), one after the other, with ``out`` locked; then (rank 0) write the report, with the
    seed statistics and ``seeds.png`` when ``seeds > 1``, and print the results.

    Args:
        cfg: the config (``model.name`` are the models).
        out: the report folder; a report of another data set there is refused before training.
        seeds: seeds per model.
        resume: continue the runs in ``out``.
        command: the command line recorded in the report.

    Returns:
        The first seed's ``metrics.json`` entry per model.

    Raises:
        DataError: no evaluation image could be read for some model (its metrics are null in the report).
    """
    dist = init_distributed(cfg.run.device)
    lock = RunLock(out)  # one run at a time per --out
    try:
        if dist.is_main:
            lock.acquire()
            earlier_models(out, cfg.data.dataset)  # a report of another data set is refused before training
            if resume:
                _check_seed_layout(out, cfg.model.name, seeds)
        start = time.perf_counter()
        summaries: Dict[str, Dict[str, Any]] = {}
        confusions: Dict[str, Optional[Tensor]] = {}
        data: Optional[ClassificationData] = None
        top1: Dict[str, List[float]] = {name: [] for name in cfg.model.name}
        for k, seed in enumerate([cfg.run.seed + k for k in range(seeds)]):
            run_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed))
            for name in cfg.model.name:
                folder = out / name if seeds == 1 else out / name / f"seed{seed}"
                summary, confusion, data = train_one(name, run_cfg, folder, resume,
                                                     quiet=not dist.is_main or cfg.run.quiet, command=command)
                top1[name].append(summary["test_top1"])
                if k == 0:
                    summaries[name], confusions[name] = summary, confusion
        wall = time.perf_counter() - start
        if dist.is_main and data is not None:
            stats = None
            if seeds > 1:
                pairs = [(n, get_spec(n).baseline) for n in cfg.model.name if get_spec(n).baseline in top1]
                stats = seed_statistics(top1, [(a, b) for a, b in pairs if b is not None])
                seeds_plot(stats, out / "seeds.png")
            write_report(out, summaries, confusions, data.classes, cfg, wall, command, seeds=stats)
            _print_results(out, summaries, stats, seeds)
        return summaries
    finally:
        lock.release()


def _check_seed_layout(out: Path, names: Sequence[str], seeds: int) -> None:
    """``--resume`` continues the runs this command would write: a folder of one seed (``out/<model>/last.pt``)
    and ``--seeds N > 1`` (``out/<model>/seed<S>/``), or the other way round, is refused instead of started anew."""
    for name in names:
        single = (out / name / "last.pt").is_file()
        several = sorted(p.parent.name for p in (out / name).glob("seed*/last.pt"))
        if seeds > 1 and single:
            raise ConfigError(f"--resume --seeds {seeds}: {out / name} holds a run of one seed; resume it without "
                              "--seeds, or start the seeds in another --out")
        if seeds == 1 and several and not single:
            raise ConfigError(f"--resume: {out / name} holds runs of several seeds ({', '.join(several)}); give "
                              f"--seeds {len(several)} to continue them")


def _print_results(out: Path, summaries: Mapping[str, Dict[str, Any]], stats: Optional[Dict[str, Any]],
                   seeds: int) -> None:
    """One line per model (and per Res2Net/baseline pair with several seeds), then the report's path; a model
    no evaluation image could be read for raises :class:`DataError`."""
    for name, s in summaries.items():
        if stats:
            m = stats["models"][name]
            print(f"{name}: top-1 {100 * m['mean']:.2f}% +- {100 * m['std']:.2f} over {seeds} seeds")
        else:
            print(f"{name}: top-1 {100 * s['test_top1']:.2f}%  top-5 {100 * s['test_top5']:.2f}%  "
                  f"{s['train_seconds']:.0f} s  {s['images_per_second']:.0f} img/s")
    for pair in (stats or {}).get("pairs", []):
        lo, hi = pair["ci95"]
        print(f"{pair['model']} - {pair['baseline']}: {100 * pair['mean_diff']:+.2f} points, 95% CI "
              f"[{100 * lo:+.2f}, {100 * hi:+.2f}] ({'excludes' if pair['excludes_zero'] else 'includes'} 0)")
    print(f"report: {out / 'report.md'}")
    unscored = [n for n, s in summaries.items() if not math.isfinite(s["test_top1"])]
    if unscored:
        raise DataError(f"no evaluation image could be read for {', '.join(unscored)}: their test metrics are "
                        f"null in {out / 'metrics.json'} (see the skipped-image warnings)")


def evaluate_checkpoint(checkpoint: Union[str, Path], name: Optional[str] = None,
                        values: Optional[Dict[str, Any]] = None, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Top-1/top-5 of a checkpoint (ours or a bare state_dict) on the test split of a data set: the
    checkpoint's own data settings (without its subsets) < ``values`` < ``overrides``.

    Args:
        checkpoint: the checkpoint file.
        name: the model it holds (default: the one our checkpoints name).
        values: dotted config values given by flags (None: not given).
        overrides: ``KEY=VALUE`` overrides (``--set``).

    Returns:
        The result: model, checkpoint, dataset, images, top-1/top-5 (and their errors), loss, skipped images.
    """
    info = describe_checkpoint(checkpoint)
    require_classifier(info)
    name = name or info.model_name
    if not name:
        raise CheckpointError(f"{checkpoint} does not say which model it holds; give --model NAME")
    data_values = dict((info.config or {}).get("data", {}))
    for key in ("train_subset", "test_subset"):
        data_values.pop(key, None)
    config_values = {f"data.{k}": v for k, v in data_values.items()}
    config_values.update({k: v for k, v in (values or {}).items() if v is not None})
    cfg = load_config(ClassificationConfig, None, list(overrides), config_values)
    data = load_data(cfg.data, name, cfg.run.seed)
    task = ClassificationTask(name, cfg, data)
    model = load_model(info, name)
    if (model.num_classes, model.in_chans) != (len(data.classes), data.in_chans):
        raise CheckpointError(f"{checkpoint} holds {name} for {model.num_classes} classes and {model.in_chans} "
                              f"input channel(s); {cfg.data.dataset} has {len(data.classes)} and {data.in_chans}")
    metrics = _evaluate(task, model, cfg, Path(checkpoint).parent)
    if not metrics:
        raise CheckpointError(f"no readable evaluation images in {cfg.data.root}")
    return {"model": name, "checkpoint": str(checkpoint), "dataset": cfg.data.dataset,
            "images": len(data.test), "top1_error": 1 - metrics["top1"], "top5_error": 1 - metrics["top5"],
            "top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"],
            "skipped_images": len(task.skipped)}


def _evaluate(task: ClassificationTask, model: torch.nn.Module, cfg: ClassificationConfig,
              out_dir: Path) -> Dict[str, float]:
    """The task's evaluation of ``model`` over the test split, on the config's device and AMP setting."""
    device = select_device(cfg.run.device)
    ctx = Context(device=device, amp_dtype=select_amp(cfg.run.amp, device), channels_last=cfg.run.channels_last,
                  dist=init_distributed(cfg.run.device), out_dir=out_dir)
    model.to(device).eval()
    if ctx.channels_last:
        model.to(memory_format=torch.channels_last)
    loader, _ = build_loader(task.data.test, cfg.optim.batch_size, train=False, workers=cfg.run.workers,
                             collate_fn=task.collate_fn, device=device)
    with torch.no_grad(), ctx.autocast():
        return task.evaluate(model, loader, ctx)
