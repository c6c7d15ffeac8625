"""Pieces shared by the detection, segmentation and saliency tasks: config sections, the backbone factory,
the engine Task base class (data resolution, ``--steps``, reports), and the train/eval/predict commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.dense import IMAGE_EXTS, load_rgb
from ..data.scenes import GENERATOR_VERSION, generate_scenes
from ..engine import OptimConfig, RunConfig, SchedConfig, Task, load_config
from ..engine.args import positive_int
from ..engine.config import at_least
from ..engine.distributed import barrier, dist_info_from_env
from ..errors import CheckpointError, ConfigError, DataError
from ..models import create_model, get_spec

NORMS = ("bn", "frozen")


@dataclass
class DenseModelConfig:
    """The backbone: any zoo model, optional weights, how much of it trains and which normalisation."""

    name: str = "res2net50_26w_4s"
    pretrained: str = ""  # "" = random init, "official" = the zoo's checkpoint, or a path / URL
    trainable_layers: int = 5  # torchvision semantics: stages trained from the top (5 = all, stem included)
    norm: str = "bn"  # bn | frozen (torchvision FrozenBatchNorm2d)


@dataclass
class DenseDataConfig:
    """Where the data comes from. ``synthetic``: generated scenes written to ``<out>/data`` (or ``root``)."""

    synthetic: bool = False
    root: str = ""
    image_size: int = at_least(128, 32)  # training/eval resize (segmentation, saliency) or detector min/max size
    train_split: str = "train"
    val_split: str = "val"
    synthetic_train: int = at_least(200, 1)
    synthetic_val: int = at_least(50, 1)
    synthetic_seed: int = 0
    steps: int = at_least(0, 0)  # > 0: one epoch of exactly this many optimizer steps (the train set is cycled)


@dataclass
class DenseOptimConfig(OptimConfig):
    """The engine's optimizer section with dense-task defaults: AdamW 1e-3 at batch 8."""

    name: str = "adamw"
    lr: float = 1e-3
    lr_batch: int = 8
    batch_size: int = 8


@dataclass
class DenseSchedConfig(SchedConfig):
    """Cosine decay over the run by default."""

    name: str = "cosine"
    milestones: List[int] = field(default_factory=list)


@dataclass
class DenseRunConfig(RunConfig):
    """Short runs: one epoch, fp32 (AMP off: torchvision's detection ops are fp32 on CPU), loading in the main
    process, a log record every 5 steps."""

    epochs: int = 1
    amp: str = "off"
    workers: int = 0
    log_every: int = 5


def dense_config(model_cls: Type[Any]) -> Type[Any]:
    """A top-level config schema with a task's ``model`` section and the shared data/engine sections."""
    name = model_cls.__name__.replace("Model", "")
    return dataclasses.make_dataclass(name, [
        ("model", model_cls, field(default_factory=model_cls)),
        ("data", DenseDataConfig, field(default_factory=DenseDataConfig)),
        ("optim", DenseOptimConfig, field(default_factory=DenseOptimConfig)),
        ("sched", DenseSchedConfig, field(default_factory=DenseSchedConfig)),
        ("run", DenseRunConfig, field(default_factory=DenseRunConfig)),
    ])


def frozen_stages_for(trainable_layers: int, n_stages: int) -> int:
    """torchvision's ``trainable_layers`` (k top stages trainable; n + 1 = the stem too) as mmdetection's
    ``frozen_stages`` (stem and the first k stages frozen; -1 = nothing)."""
    if not 0 <= trainable_layers <= n_stages + 1:
        raise ConfigError(f"model.trainable_layers must be in [0, {n_stages + 1}] for this backbone, "
                          f"got {trainable_layers}")
    return n_stages - trainable_layers


def build_backbone(cfg: DenseModelConfig, out_indices: Sequence[int], output_stride: Optional[int] = None
                   ) -> nn.Module:
    """A features-only zoo model: ``cfg.norm == "frozen"`` uses FrozenBatchNorm2d, the bottom stages are
    frozen per ``cfg.trainable_layers``, ``cfg.pretrained`` loads weights."""
    from torchvision.ops import FrozenBatchNorm2d

    if cfg.norm not in NORMS:
        raise ConfigError(f"model.norm must be one of {NORMS}, got {cfg.norm!r}")
    pretrained: Any = True if cfg.pretrained == "official" else (cfg.pretrained or False)
    model = create_model(cfg.name, pretrained=pretrained, features_only=True, out_indices=tuple(out_indices),
                         output_stride=output_stride, norm_layer=FrozenBatchNorm2d if cfg.norm == "frozen" else None)
    n_stages = len(model.stage_modules())  # 4 for ResNet-style trunks, 5 for DLA (level1..level5)
    model.configure_backbone(frozen_stages=frozen_stages_for(cfg.trainable_layers, n_stages))
    return model


def check_classes(known: Sequence[str], found: Sequence[str], source: Path) -> List[str]:
    """The class list of a model (``known``, from its config) must equal the data's (``found``)."""
    if known and list(known) != list(found):
        raise DataError(f"{source}: classes {list(found)} differ from the model's {list(known)}")
    return list(found)


class Normalize(nn.Module):
    """``(x - mean) / std`` with the backbone's preprocessing constants (inputs in [0, 1])."""

    def __init__(self, model_name: str) -> None:
        super().__init__()
        spec = get_spec(model_name)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Repeat(Dataset):
    """``length`` items cycling over ``dataset`` (``data.steps``: a fixed number of optimizer steps)."""

    def __init__(self, dataset: Dataset, length: int) -> None:
        self.dataset, self.length = dataset, length
        self.skipped = getattr(dataset, "skipped", {})

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int) -> Any:
        return self.dataset[idx % len(self.dataset)]  # type: ignore[arg-type]


class DenseTask(Task):
    """Engine Task base of the three dense tasks. Subclasses set ``name``, ``data_format`` (the generated
    layout they read) and implement ``build_model``, ``make_datasets``, ``training_step``, ``compute_report``
    (the nested metrics.json) and ``predict_images``; ``evaluate`` flattens the report for the engine."""

    data_format = "coco"
    higher_is_better = True

    def __init__(self, cfg: Any, out_dir: Path) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.report: Dict[str, Any] = {}
        self.data_report: Dict[str, Any] = {}
        self.dist = dist_info_from_env()  # the Trainer replaces it with its own DistInfo before build_datasets

    # ---- data ---------------------------------------------------------------------------------------
    def data_root(self) -> Path:
        """The folder of this task's layout; generates the scenes first when ``data.synthetic``."""
        d = self.cfg.data
        if not d.synthetic and not d.root:
            raise ConfigError("give --data-dir DIR or --data synthetic")
        if not d.synthetic:
            root = Path(d.root)
            if not root.exists():
                raise DataError(f"{root}: data folder not found")
            return root
        if not d.root:  # remembered in the checkpoint's config, so eval/predict find the same scenes
            d.root = str((self.out_dir / "data").resolve())
        base = Path(d.root)
        wanted = {"n_train": d.synthetic_train, "n_val": d.synthetic_val, "size": d.image_size,
                  "seed": d.synthetic_seed, "generator": GENERATOR_VERSION}  # else (re)generated
        meta = base / "scenes.json"
        if self.dist.is_main:  # under torchrun rank 0 writes the scenes while the others wait
            have = json.loads(meta.read_text()) if meta.is_file() else {}
            if any(have.get(k) != v for k, v in wanted.items()) or not (base / self.data_format).is_dir():
                generate_scenes(base, d.synthetic_train, d.synthetic_val, size=d.image_size,
                                seed=d.synthetic_seed)
        barrier(self.dist)
        return base / self.data_format

    def make_datasets(self, root: Path, train: bool) -> Dataset:
        """The ``train_split`` (train=True, with augmentation) or ``val_split`` data set of ``root``."""
        raise NotImplementedError

    def build_datasets(self) -> Tuple[Dataset, Optional[Dataset]]:
        root = self.data_root()
        train_set = self.make_datasets(root, train=True)
        val_set = self.make_datasets(root, train=False)
        self.record_skips(train=train_set, val=val_set)
        if self.cfg.data.steps > 0:  # N optimizer steps of the global batch (every rank takes N batches)
            train_set = Repeat(train_set, self.cfg.data.steps * self.cfg.optim.batch_size * self.dist.world_size)
        return train_set, val_set

    def record_skips(self, **sets: Dataset) -> None:
        """Count the documented skips of each split (written to ``data_report.json``; warned on stderr)."""
        for split, ds in sets.items():
            skipped = dict(getattr(ds, "skipped", {}))
            self.data_report[split] = {"images": len(ds), "skipped": skipped}  # type: ignore[arg-type]
            if skipped:
                print(f"warning: {split} data: skipped {skipped} (see data_report.json)", file=sys.stderr)

    # ---- evaluation -----------------------------------------------------------------------------------
    def compute_report(self, model: nn.Module, loader: Any, ctx: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: Any, ctx: Any) -> Dict[str, float]:
        """The engine's per-epoch metrics: the flattened report (``bbox/map_50``, ``miou``, ...)."""
        self.report = self.compute_report(model, loader, ctx)
        return flatten(self.report)

    def write_reports(self, out_dir: Path) -> Path:
        """``metrics.json`` (the issue's schema) and ``data_report.json`` (split sizes and skip counts)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "data_report.json").write_text(json.dumps(self.data_report, indent=2))
        path = out_dir / "metrics.json"
        path.write_text(json.dumps(self.report, indent=2))
        return path

    # ---- prediction -----------------------------------------------------------------------------------
    def predict_images(self, model: nn.Module, images: List[Tuple[Path, Tensor]], out_dir: Path) -> List[Path]:
        raise NotImplementedError


def flatten(report: Dict[str, Any], prefix: str = "") -> Dict[str, float]:
    """``{"bbox": {"map": x}}`` -> ``{"bbox/map": x}`` (numbers only)."""
    flat: Dict[str, float] = {}
    for k, v in report.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)):
            flat[prefix + k] = float(v)
    return flat


def list_images(path: Path) -> List[Path]:
    """One image file, or every image in a folder (sorted); DataError if there is none."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such image file or folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"{path}: no images ({', '.join(IMAGE_EXTS)})")
    return files


def save_png(image: Tensor, path: Path) -> Path:
    """Save a (3, H, W) or (H, W) uint8 tensor as PNG."""
    arr = image.detach().cpu()
    arr = arr.permute(1, 2, 0) if arr.dim() == 3 else arr
    Image.fromarray(arr.numpy()).save(path)
    return path


def to_uint8(image: Tensor) -> Tensor:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


# ---- commands ----------------------------------------------------------------------------------------------
TaskFactory = Callable[[Any, Path], DenseTask]


def build_config(schema: Type[Any], args: argparse.Namespace, extra: Dict[str, Any]) -> Any:
    """Schema defaults <- ``--config`` recipe <- flags <- ``--set``."""
    from ..engine import engine_values

    values = engine_values(args)
    values.update({"model.name": args.model, "data.root": args.data_dir, "data.steps": args.steps,
                   "data.image_size": args.image_size, "model.pretrained": args.pretrained,
                   "model.trainable_layers": args.trainable_layers, "model.norm": args.norm})
    if args.data is not None:
        values["data.synthetic"] = args.data == "synthetic"
    if args.steps is not None and args.epochs is None:
        values["run.epochs"] = 1
    values.update(extra)
    return load_config(schema, args.config, args.overrides, values)


def cmd_train(task_cls: Type[DenseTask], schema: Type[Any], args: argparse.Namespace,
              extra: Dict[str, Any]) -> int:
    """``train``: fit on the engine, then write the final evaluation as metrics.json."""
    from ..engine import Trainer

    cfg = build_config(schema, args, extra)
    if args.steps is not None and args.epochs is not None and args.epochs != 1:
        raise ConfigError("--steps runs one epoch of that many steps; do not combine it with --epochs")
    out = Path(args.out or "runs/" + task_cls.name)
    task = task_cls(cfg, out)
    trainer = Trainer(task, cfg, out, resume=args.resume)
    result = trainer.fit()
    if not trainer.dist.is_main:  # under torchrun only rank 0 evaluates and writes
        return 0
    if not task.report:  # resumed after the last epoch: evaluate the final weights
        run_eval(task, result.model, cfg, next(result.model.parameters()).device)
    path = task.write_reports(out)
    print(json.dumps(task.report))
    print(f"wrote {path}")
    return 0


def load_trained(task_cls: Type[DenseTask], schema: Type[Any], args: argparse.Namespace,
                 extra: Dict[str, Any]) -> Tuple[DenseTask, nn.Module, Any]:
    """Rebuild a trained model from ``--checkpoint`` (its saved config; data flags may replace the data)."""
    from ..engine.config import from_dict
    from ..weights import describe_checkpoint, load_state_dict_strict

    ckpt = Path(args.checkpoint)
    info = describe_checkpoint(ckpt)
    if info.config is None or info.task not in (None, task_cls.name):
        raise CheckpointError(f"{ckpt}: not a {task_cls.name} checkpoint (task {info.task!r})")
    cfg = from_dict(schema, info.config)
    if getattr(args, "data", None) is not None or getattr(args, "data_dir", None):
        cfg.data.synthetic = getattr(args, "data", None) == "synthetic"
        cfg.data.root = getattr(args, "data_dir", None) or ""
    for key, value in extra.items():
        if value is not None:
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
    cfg.model.pretrained = ""  # the checkpoint holds every weight; fetch no backbone file
    random_weights = getattr(args, "random_weights", False)
    # the untrained reference never overwrites the trained run's metrics.json
    out = Path(args.out or (ckpt.parent / "random-weights" if random_weights else ckpt.parent))
    task = task_cls(cfg, out)
    if random_weights:
        torch.manual_seed(cfg.run.seed)
        return task, task.build_model().eval(), cfg
    model = task.build_model()
    load_state_dict_strict(model, info.state_dict, str(ckpt))
    model.eval()
    return task, model, cfg


def run_eval(task: DenseTask, model: nn.Module, cfg: Any, device: Optional[torch.device] = None) -> Dict[str, Any]:
    """Evaluate ``model`` on the validation split with the engine's Context (no training)."""
    from ..engine import Context, DistInfo, build_loader, select_device

    device = device or select_device(cfg.run.device, 0)
    ctx = Context(device=device, amp_dtype=None, channels_last=False, dist=DistInfo(), out_dir=task.out_dir)
    val_set = task.make_datasets(task.data_root(), train=False)
    task.record_skips(val=val_set)
    loader, _ = build_loader(val_set, cfg.optim.batch_size, train=False, workers=cfg.run.workers,
                             collate_fn=task.collate_fn, device=device)
    model = model.to(device).eval()
    with torch.no_grad():
        task.evaluate(model, loader, ctx)
    return task.report


def cmd_eval(task_cls: Type[DenseTask], schema: Type[Any], args: argparse.Namespace, extra: Dict[str, Any]) -> int:
    """``eval``: metrics.json of a checkpoint on the validation split."""
    task, model, cfg = load_trained(task_cls, schema, args, extra)
    run_eval(task, model, cfg)
    path = task.write_reports(task.out_dir)
    print(json.dumps(task.report))
    print(f"wrote {path}")
    return 0


def cmd_predict(task_cls: Type[DenseTask], schema: Type[Any], args: argparse.Namespace,
                extra: Dict[str, Any]) -> int:
    """``predict``: PNG visualisations of the images under ``--input``."""
    task, model, _ = load_trained(task_cls, schema, args, extra)
    files = list_images(Path(args.input))
    task.out_dir.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    with torch.no_grad():
        for i in range(0, len(files), 8):
            chunk = [(p, load_rgb(p)) for p in files[i:i + 8]]
            written += task.predict_images(model, chunk, task.out_dir)
    print(f"wrote {len(written)} PNG file(s) to {task.out_dir}")
    return 0


def add_common_args(parser: argparse.ArgumentParser, kind: str, default_model: str) -> None:
    """Flags of ``train`` (kind="train", plus the engine's) or ``eval``/``predict``."""
    g = parser.add_argument_group("data")
    g.add_argument("--data-dir", metavar="DIR", help="data folder in a supported layout (see docs/DENSE.md)")
    g.add_argument("--data", choices=["synthetic"], help="generate scenes into <out>/data instead")
    if kind == "train":
        from ..engine import add_engine_args

        parser.add_argument("--model", help=f"backbone: any zoo model (default {default_model})")
        parser.add_argument("--pretrained", help="'official' or a checkpoint path/URL for the backbone")
        parser.add_argument("--trainable-layers", type=int, help="backbone stages trained from the top "
                                                                  "(torchvision semantics; 5 = all)")
        parser.add_argument("--norm", choices=NORMS, help="backbone norm: BatchNorm or FrozenBatchNorm2d")
        parser.add_argument("--steps", type=positive_int, help="train exactly this many optimizer steps (one epoch)")
        parser.add_argument("--image-size", type=positive_int, help="input size (data.image_size)")
        add_engine_args(parser, default_config="")
    else:
        parser.add_argument("--checkpoint", required=True, help="a train run's best.pt or last.pt")
        parser.add_argument("--out", metavar="DIR", help="output folder (default: the checkpoint's folder)")
        if kind == "predict":
            parser.add_argument("--input", required=True, help="an image file or a folder of images")
        if kind == "eval":
            parser.add_argument("--random-weights", action="store_true",
                                help="evaluate the checkpoint's model configuration with fresh random weights "
                                     "(seed run.seed): the untrained reference for the trained figures "
                                     "(default --out: <checkpoint folder>/random-weights)")
