"""Image classification on the shared engine, and the ``res2net train`` / ``res2net eval`` commands.

``res2net train`` with no arguments runs the embedded default: the ``fashion_mnist`` recipe trains a small
Res2Net and its same-budget ResNet baseline on Fashion-MNIST and writes ``metrics.json``, ``report.md``,
``curves.png`` and ``confusion.png`` to ``--out`` (default ``runs/<timestamp>``). See docs/TRAINING.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import (TensorImageDataset, batch_collate, classification_transforms, image_folder_split,
                    load_cifar100, load_fashion_mnist, normalize, progressive_size, random_crop_flip, resize_batch,
                    skip_collate)
from ..data import fashion_mnist as fmnist
from ..data.images import CIFAR_SIZE, warn_bad_files
from ..data.preprocessing import Preprocessing
from ..engine import (Context, FitResult, OptimConfig, RunConfig, SchedConfig, Task, add_engine_args,
                      build_loader, engine_values, fit, load_config, select_amp,
                      select_device, to_dict)
from ..engine.args import positive_int
from ..engine.config import at_least
from ..engine.distributed import init_distributed
from ..errors import CheckpointError, ConfigError
from ..models import count_macs, count_params, create_model, get_spec
from ..weights import describe_checkpoint, model_from_checkpoint

DATASETS = ("fashion-mnist", "cifar100", "imagefolder")
DEFAULT_RECIPE = "fashion_mnist"


@dataclass
class ModelSection:
    """Which models to train (one after another, same recipe) and model-side regularisation."""

    names: List[str] = field(default_factory=lambda: ["res2net50_26w_4s"])
    drop_path_rate: float = 0.0
    zero_init_last: bool = False


@dataclass
class DataSection:
    """Where the images come from and how they are augmented."""

    dataset: str = "imagefolder"  # fashion-mnist | cifar100 | imagefolder
    data_dir: Optional[str] = None  # fashion-mnist: default /usr/share/datasets/fashion-mnist
    train_subset: Optional[int] = at_least(None, 1)  # random subset of the training set (seeded by run.seed)
    test_subset: Optional[int] = at_least(None, 1)  # random subset of the evaluation set
    val_split: str = "val"  # imagefolder: sub-folder evaluated (class folders, or flat + <split>_labels.txt)
    input_size: Optional[int] = at_least(None, 1)  # imagefolder: crop size (default: the model card's)
    crop_padding: int = at_least(4, 0)  # in-memory sets: zero padding of the random crop (0: no crop)
    flip: bool = True  # in-memory sets: random horizontal flip
    train_scales: Optional[List[float]] = None  # progressive resizing: training batches resized to these
    # fractions of the native size, spread over the run (first epoch the first, last epoch the last);
    # evaluation always at the native size
    download: bool = True  # fashion-mnist: torchvision download when the files are absent


@dataclass
class ClassificationConfig:
    """The ``res2net train`` schema: ``model.*``, ``data.*``, ``optim.*``, ``sched.*``, ``run.*``."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class ClassificationData:
    """Train/evaluation sets and how to feed them."""

    train: Dataset
    test: Dataset
    classes: List[str]
    in_chans: int
    input_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    in_memory: bool  # TensorImageDataset: batched augmentation in prepare_batch


@functools.lru_cache(maxsize=2)
def _tensor_sets(dataset: str, data_dir: Optional[str], download: bool) -> Dict[str, TensorImageDataset]:
    if dataset == "fashion-mnist":
        return load_fashion_mnist(data_dir, download=download)
    if not data_dir:
        raise ConfigError("data.data_dir (--data-dir) is required for cifar100")
    return load_cifar100(data_dir)


# the in-memory data sets are used at their native size
NATIVE_SIZES = {"fashion-mnist": fmnist.SIZE, "cifar100": CIFAR_SIZE}


def dataset_normalization(dataset: str, model_name: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) the images of ``dataset`` are normalised with: Fashion-MNIST's own statistics, else the
    model card's."""
    card = get_spec(model_name)
    mean, std = (fmnist.MEAN, fmnist.STD) if dataset == "fashion-mnist" else (card.mean, card.std)
    return tuple(mean), tuple(std)


def dataset_preprocessing(dataset: str, model_name: str, input_size: Optional[int] = None
                          ) -> Tuple[int, Tuple[float, ...], Tuple[float, ...]]:
    """(input size, mean, std) of ``model_name`` on ``dataset``: the in-memory sets' native size, else
    ``input_size`` (``data.input_size``) or the model card's; normalisation as :func:`dataset_normalization`."""
    size = NATIVE_SIZES.get(dataset) or input_size or get_spec(model_name).input_size
    return (int(size), *dataset_normalization(dataset, model_name))


def load_data(cfg: DataSection, model_name: str, seed: int = 0) -> ClassificationData:
    """The data sets of ``cfg`` with the preprocessing of the paper (or of the Fashion-MNIST recipe)."""
    card = get_spec(model_name)
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)}; got {cfg.dataset!r}")
    if cfg.train_scales is not None and (not cfg.train_scales or any(not 0 < x <= 4 for x in cfg.train_scales)):
        raise ConfigError(f"data.train_scales must be a non-empty list of fractions of the input size in (0, 4]; "
                          f"got {cfg.train_scales}")
    size, mean, std = dataset_preprocessing(cfg.dataset, model_name, cfg.input_size)
    if cfg.dataset in NATIVE_SIZES:
        sets = _tensor_sets(cfg.dataset, cfg.data_dir, cfg.download)
        train, test = sets["train"], sets["test"]
        if cfg.train_subset:
            train = train.subset(cfg.train_subset, seed)
        if cfg.test_subset:
            test = test.subset(cfg.test_subset, seed)
        return ClassificationData(train, test, train.classes, train.images.shape[1], size, mean, std,
                                  in_memory=True)
    if not cfg.data_dir:
        raise ConfigError("data.data_dir (--data-dir) is required for imagefolder: a folder with train/ and "
                          f"{cfg.val_split}/")
    root = Path(cfg.data_dir)
    tf = functools.partial(classification_transforms, input_size=size, crop_pct=card.crop_pct, mean=mean,
                           std=std, interpolation=card.interpolation)
    train_files = image_folder_split(root, "train", tf(train=True))
    test_files = image_folder_split(root, cfg.val_split, tf(train=False), classes=train_files.classes)
    train_set: Dataset = train_files
    test_set: Dataset = test_files
    if cfg.train_subset or cfg.test_subset:
        g = torch.Generator().manual_seed(seed)
        if cfg.train_subset:
            train_set = torch.utils.data.Subset(train_files, torch.randperm(len(train_files), generator=g)
                                                [:cfg.train_subset].tolist())
        if cfg.test_subset:
            test_set = torch.utils.data.Subset(test_files, torch.randperm(len(test_files), generator=g)
                                               [:cfg.test_subset].tolist())
    return ClassificationData(train_set, test_set, train_files.classes, 3, size, mean, std, in_memory=False)


class ClassificationTask(Task):
    """Cross-entropy training of one named model; evaluation by top-1/top-5 accuracy (torchmetrics)."""

    name = "classification"
    primary_metric = "top1"
    higher_is_better = True

    def __init__(self, model_name: str, cfg: ClassificationConfig, data: ClassificationData) -> None:
        self.model_name, self.cfg, self.data = model_name, cfg, data
        self.collate_fn = batch_collate if data.in_memory else skip_collate
        self.skipped: Set[str] = set()
        for files in (data.train, data.test):
            warn_bad_files(getattr(getattr(files, "dataset", files), "bad_files", []), self.skipped)
        self.confusion: Optional[Tensor] = None

    def build_model(self) -> nn.Module:
        return create_model(self.model_name, num_classes=len(self.data.classes), in_chans=self.data.in_chans,
                            drop_path_rate=self.cfg.model.drop_path_rate,
                            zero_init_last=self.cfg.model.zero_init_last)

    def build_datasets(self) -> Tuple[Dataset, Optional[Dataset]]:
        return self.data.train, self.data.test

    def checkpoint_meta(self) -> Dict[str, Any]:
        card = get_spec(self.model_name)
        prep = Preprocessing(self.data.input_size, self.data.mean, self.data.std,
                             1.0 if self.data.in_memory else card.crop_pct, card.interpolation)
        return {"model": self.model_name, "classes": list(self.data.classes), "in_chans": self.data.in_chans,
                "dataset": self.cfg.data.dataset, "preprocessing": prep.to_dict()}

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


# ---- report ------------------------------------------------------------------------------------------------
def model_summary(name: str, result: FitResult, data: ClassificationData, skipped: int) -> Dict[str, Any]:
    """The metrics.json entry of one trained model."""
    with torch.device("meta"):
        meta_model = create_model(name, num_classes=len(data.classes), in_chans=data.in_chans)
    epoch_times = [h["epoch_seconds"] for h in result.history]
    return {
        "test_top1": result.metrics.get("top1", float("nan")), "test_top5": result.metrics.get("top5", float("nan")),
        "params": count_params(meta_model), "macs": count_macs(meta_model, data.input_size, data.in_chans),
        "train_seconds": result.train_seconds, "images_per_second": result.images_per_second,
        "skipped_images": skipped, "epochs": result.epochs,
        "epoch_seconds": epoch_times, "history": result.history,
    }


def write_report(out: Path, summaries: Dict[str, Dict[str, Any]], confusions: Dict[str, Optional[Tensor]],
                 classes: List[str], cfg: ClassificationConfig, wall_seconds: float, command: str) -> None:
    """metrics.json, report.md, curves.png (loss and accuracy per epoch) and confusion.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    metrics = {"models": summaries, "dataset": cfg.data.dataset, "wall_seconds": wall_seconds,
               "command": command, "config": to_dict(cfg)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, s in summaries.items():
        epochs = [h["epoch"] for h in s["history"]]
        ax_loss.plot(epochs, [h["train_loss"] for h in s["history"]], "-o", label=f"{name} train")
        ev = [(h["epoch"], h["loss"], h["top1"]) for h in s["history"] if "top1" in h]
        ax_loss.plot([e[0] for e in ev], [e[1] for e in ev], "--s", label=f"{name} test")
        ax_acc.plot([e[0] for e in ev], [100 * e[2] for e in ev], "-o", label=name)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="test top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    shown = {n: c for n, c in confusions.items() if c is not None}
    if shown:
        fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 5), squeeze=False)
        for ax, (name, conf) in zip(axes[0], shown.items()):
            norm = conf.float() / conf.sum(1, keepdim=True).clamp(min=1)
            ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
            ax.set(title=name, xlabel="predicted", ylabel="true")
            if len(classes) <= 20:
                ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
                ax.set_yticks(range(len(classes)), classes, fontsize=7)
                for i in range(len(classes)):
                    for j in range(len(classes)):
                        if conf[i, j]:
                            ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=6,
                                    color="white" if norm[i, j] > 0.5 else "black")
        fig.tight_layout()
        fig.savefig(out / "confusion.png", dpi=110)
        plt.close(fig)

    lines = [f"# Classification report ({cfg.data.dataset})", "", f"Command: `{command}`", "",
             f"Wall time: {wall_seconds:.0f} s", "",
             "| model | params | MACs | top-1 err (%) | top-5 err (%) | epochs | train s | s/epoch | img/s | skipped |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in summaries.items():
        per_epoch = sum(s["epoch_seconds"]) / max(1, len(s["epoch_seconds"]))
        lines.append(f"| {name} | {s['params']:,} | {s['macs'] / 1e6:.1f}M | {100 * (1 - s['test_top1']):.2f} | "
                     f"{100 * (1 - s['test_top5']):.2f} | {s['epochs']} | {s['train_seconds']:.0f} | "
                     f"{per_epoch:.1f} | {s['images_per_second']:.0f} | {s['skipped_images']} |")
    for name, s in summaries.items():
        base = get_spec(name).baseline
        if base in summaries:
            b = summaries[base]
            ratio = (sum(s["epoch_seconds"]) / len(s["epoch_seconds"])) / \
                (sum(b["epoch_seconds"]) / len(b["epoch_seconds"]))
            lines += ["", f"{name} vs its same-budget baseline {base}: top-1 "
                      f"{100 * s['test_top1']:.2f}% vs {100 * b['test_top1']:.2f}%, params {s['params']:,} vs "
                      f"{b['params']:,}, time per epoch x{ratio:.2f}."]
    lines += ["", "![curves](curves.png)", "", "![confusion](confusion.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


# ---- commands ------------------------------------------------------------------------------------------------
TASK_FLAGS = {"model": "model.names", "dataset": "data.dataset", "data_dir": "data.data_dir",
              "train_subset": "data.train_subset"}


def train_config(args: argparse.Namespace) -> ClassificationConfig:
    """The config of a ``res2net train`` call: recipe < flags < ``--set``."""
    values = engine_values(args)
    values.update({key: getattr(args, dest) for dest, key in TASK_FLAGS.items()})
    if values["model.names"] is not None:
        values["model.names"] = [values["model.names"]]
    cfg = load_config(ClassificationConfig, args.config, args.overrides, values)
    for name in cfg.model.names:
        get_spec(name)  # unknown names fail before any data is read
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    """``res2net train``: train every model of the config, then write the report (rank 0)."""
    cfg = train_config(args)
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out DIR (the folder of the run to continue)")
    out = Path(args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    dist = init_distributed(cfg.run.device)
    start = time.perf_counter()
    summaries: Dict[str, Dict[str, Any]] = {}
    confusions: Dict[str, Optional[Tensor]] = {}
    data: Optional[ClassificationData] = None
    for name in cfg.model.names:
        data = load_data(cfg.data, name, cfg.run.seed)
        task = ClassificationTask(name, cfg, data)
        if dist.is_main and not cfg.run.quiet:
            print(f"== {name}: {len(data.train)} train / {len(data.test)} test images, {cfg.run.epochs} epochs, "
                  f"out {out / name}", file=sys.stderr)
        result = fit(task, cfg, out / name, resume=args.resume)
        summaries[name] = model_summary(name, result, data, len(task.skipped))
        confusions[name] = task.confusion
    wall = time.perf_counter() - start
    if dist.is_main and data is not None:
        command = "res2net train " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train"] else "res2net train"
        write_report(out, summaries, confusions, data.classes, cfg, wall, command.strip())
        for name, s in summaries.items():
            print(f"{name}: top-1 {100 * s['test_top1']:.2f}%  top-5 {100 * s['test_top5']:.2f}%  "
                  f"{s['train_seconds']:.0f} s  {s['images_per_second']:.0f} img/s")
        print(f"report: {out / 'report.md'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``res2net eval``: top-1/top-5 error of a checkpoint on a data set; prints and writes JSON."""
    info = describe_checkpoint(args.checkpoint)
    name = args.model or info.model_name
    if not name:
        raise CheckpointError(f"{args.checkpoint} does not say which model it holds; give --model NAME")
    data_values = dict((info.config or {}).get("data", {}))
    for key in ("train_subset", "test_subset"):
        data_values.pop(key, None)
    values = {f"data.{k}": v for k, v in data_values.items()}
    flags = {"data.dataset": args.dataset, "data.data_dir": args.data_dir, "data.test_subset": args.test_subset,
             "optim.batch_size": args.batch_size, "run.device": args.device, "run.workers": args.workers}
    values.update({k: v for k, v in flags.items() if v is not None})
    cfg = load_config(ClassificationConfig, None, args.overrides, values)
    data = load_data(cfg.data, name, cfg.run.seed)
    task = ClassificationTask(name, cfg, data)
    model = model_from_checkpoint(info, name).model
    if (model.num_classes, model.in_chans) != (len(data.classes), data.in_chans):
        raise CheckpointError(f"{args.checkpoint} holds {name} for {model.num_classes} classes and {model.in_chans} "
                              f"input channel(s); {cfg.data.dataset} has {len(data.classes)} and {data.in_chans}")
    device = select_device(cfg.run.device)
    ctx = Context(device=device, amp_dtype=select_amp(cfg.run.amp, device), channels_last=cfg.run.channels_last,
                  dist=init_distributed(cfg.run.device), out_dir=Path(args.checkpoint).parent)
    model.to(device).eval()
    if ctx.channels_last:
        model.to(memory_format=torch.channels_last)
    loader, _ = build_loader(data.test, cfg.optim.batch_size, train=False, workers=cfg.run.workers,
                             collate_fn=task.collate_fn, device=device)
    with torch.no_grad(), ctx.autocast():
        metrics = task.evaluate(model, loader, ctx)
    if not metrics:
        raise CheckpointError(f"no readable evaluation images in {cfg.data.data_dir}")
    result = {"model": name, "checkpoint": str(args.checkpoint), "dataset": cfg.data.dataset,
              "images": len(data.test), "top1_error": 1 - metrics["top1"], "top5_error": 1 - metrics["top5"],
              "top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"],
              "skipped_images": len(task.skipped)}
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{name} on {cfg.data.dataset} ({len(data.test)} images): top-1 error "
          f"{100 * result['top1_error']:.2f}%  top-5 error {100 * result['top5_error']:.2f}%  -> {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``eval`` to the ``res2net`` command."""
    p = subparsers.add_parser("train", help="train classifiers (default: Res2Net vs ResNet on Fashion-MNIST)",
                              description="Train image classifiers with a recipe (YAML) on the shared engine. "
                              "With no arguments: the embedded Fashion-MNIST default (docs/TRAINING.md).")
    p.add_argument("--model", help="model name (res2net models); default: the recipe's model.names")
    p.add_argument("--dataset", choices=DATASETS, help="data set (data.dataset)")
    p.add_argument("--data-dir", help="data folder (data.data_dir)")
    p.add_argument("--train-subset", type=positive_int, metavar="N",
                   help="train on a random N images (data.train_subset)")
    add_engine_args(p, DEFAULT_RECIPE)
    p.set_defaults(func=cmd_train)

    e = subparsers.add_parser("eval", help="top-1/top-5 error of a checkpoint",
                              description="Evaluate a checkpoint (ours or a bare state_dict) on a data set.")
    e.add_argument("--model", help="model name the checkpoint belongs to (default: the one our checkpoints name)")
    e.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    e.add_argument("--dataset", choices=DATASETS, help="data set (default: the checkpoint's, else imagefolder)")
    e.add_argument("--data-dir", help="data folder")
    e.add_argument("--test-subset", type=positive_int, metavar="N", help="evaluate a random N images")
    e.add_argument("--batch-size", type=positive_int)
    e.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--workers", type=int, help="DataLoader worker processes")
    e.add_argument("--out", help="JSON file to write (default: <checkpoint>.eval.json)")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config key (data.*, run.*), e.g. --set run.amp=off")
    e.set_defaults(func=cmd_eval)
