"""The engine Task base of the dense tasks (detection, segmentation, saliency): the backbone factory, the explicit
data step (:meth:`DenseTask.prepare_data`), ``--steps``, reports, and the checkpoint -> trained task path."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.scenes import GENERATOR_VERSION, generate_scenes
from ..engine import Task
from ..engine.distributed import barrier, dist_info_from_env
from ..files import claim_folder
from ..jsonio import write_json
from ..errors import CheckpointError, ConfigError, DataError
from ..models import get_spec
from ..weights import create_model
from .dense_config import NORMS, DenseModelConfig


def frozen_stages_for(cfg: DenseModelConfig, n_stages: int) -> int:
    """``model.frozen_stages`` (stem and stages 1..N frozen; -1: nothing), or the older
    ``model.trainable_layers`` in torchvision's semantics (K top stages trained; ``n_stages + 1``: the stem too)
    turned into it, with a note naming the new key."""
    if cfg.trainable_layers is None:
        if cfg.frozen_stages > n_stages:
            raise ConfigError(f"model.frozen_stages must be in [-1, {n_stages}] for this backbone, "
                              f"got {cfg.frozen_stages}")
        return cfg.frozen_stages
    if cfg.frozen_stages != -1:
        raise ConfigError("model.trainable_layers and model.frozen_stages name the same setting; keep "
                          "model.frozen_stages")
    if not 0 <= cfg.trainable_layers <= n_stages + 1:
        raise ConfigError(f"model.trainable_layers must be in [0, {n_stages + 1}] for this backbone, "
                          f"got {cfg.trainable_layers}")
    frozen = n_stages - cfg.trainable_layers
    warnings.warn(f"model.trainable_layers={cfg.trainable_layers} is now model.frozen_stages={frozen} (the old "
                  f"key still works)", FutureWarning, stacklevel=2)
    return frozen


def build_backbone(cfg: DenseModelConfig, out_indices: Sequence[int], output_stride: Optional[int] = None
                   ) -> nn.Module:
    """A features-only zoo model: ``cfg.norm == "frozen"`` uses FrozenBatchNorm2d, the bottom stages are
    frozen per ``cfg.frozen_stages``, ``cfg.pretrained`` loads weights."""
    from torchvision.ops import FrozenBatchNorm2d

    if cfg.norm not in NORMS:
        raise ConfigError(f"model.norm must be one of {NORMS}, got {cfg.norm!r}")
    try:
        model = create_model(cfg.name, pretrained=cfg.pretrained, features_only=True,
                             out_indices=tuple(out_indices), output_stride=output_stride,
                             norm_layer=FrozenBatchNorm2d if cfg.norm == "frozen" else None)
    except ValueError as exc:  # e.g. an output stride the model cannot give: the message names the backbone
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"model.name={cfg.name!r} cannot be this task's backbone: {exc}") from None
    n_stages = len(model.stage_modules())  # 4 for ResNet-style trunks, 5 for DLA (level1..level5)
    model.configure_backbone(frozen_stages=frozen_stages_for(cfg, n_stages))
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
        self.root: Optional[Path] = None  # set by prepare_data()

    # ---- data ---------------------------------------------------------------------------------------
    def prepare_data(self) -> Path:
        """The explicit data step, before training or evaluation: find the data folder (generating the synthetic
        scenes first when ``data.synthetic``; under torchrun rank 0 writes them while the others wait), record
        it in ``cfg.data.root`` (saved with the checkpoints, so eval/predict find the same scenes) and the data's
        class list in ``cfg.model.classes`` (a model's classes must equal its data's). Returns the folder."""
        self.root = self._data_root()
        found = self.read_classes(self.root)
        if found is not None:
            self.cfg.model.classes = check_classes(self.cfg.model.classes, found, self.root)
        return self.root

    def read_classes(self, root: Path) -> Optional[List[str]]:
        """The class names of the data in ``root`` (None: the task has no class list)."""
        return None

    def _data_root(self) -> Path:
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
        wanted = {"n_train": d.synthetic_train, "n_val": d.synthetic_val, "size": d.input_size,
                  "seed": d.synthetic_seed, "generator": GENERATOR_VERSION}  # else (re)generated
        meta = base / "scenes.json"
        if self.dist.is_main:  # under torchrun rank 0 writes the scenes while the others wait
            have = json.loads(meta.read_text()) if meta.is_file() else {}
            if any(have.get(k) != v for k, v in wanted.items()) or not (base / self.data_format).is_dir():
                generate_scenes(base, d.synthetic_train, d.synthetic_val, size=d.input_size,
                                seed=d.synthetic_seed)
        barrier(self.dist)
        return base / self.data_format

    def make_datasets(self, root: Path, train: bool) -> Dataset:
        """The ``train_split`` (train=True, with augmentation) or ``val_split`` data set of ``root``."""
        raise NotImplementedError

    def data_folder(self) -> Path:
        """The folder :meth:`prepare_data` found (an error before it ran)."""
        if self.root is None:
            raise RuntimeError(f"{type(self).__name__}.prepare_data() must run before the data sets are built")
        return self.root

    def build_datasets(self) -> Tuple[Dataset, Optional[Dataset]]:
        root = self.data_folder()
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
        write_json(out_dir / "data_report.json", self.data_report)
        path = out_dir / "metrics.json"
        write_json(path, self.report)
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


def load_trained(task_cls: Type[DenseTask], schema: Type[Any], checkpoint: Path, out: Optional[Path] = None,
                 data_root: Optional[str] = None, synthetic: Optional[bool] = None,
                 overrides: Optional[Dict[str, Any]] = None, random_weights: bool = False
                 ) -> Tuple[DenseTask, nn.Module, Any]:
    """Rebuild a trained task model from ``checkpoint`` with its saved config (read through the package's one
    checkpoint reader, loaded strictly with every mismatching key named). ``data_root``/``synthetic`` replace the
    data, ``overrides`` (dotted keys) other settings; ``random_weights`` keeps the model's configuration with
    fresh weights (seed ``run.seed``): the untrained reference. Returns (task, model in eval mode, config)."""
    from ..engine.config import from_dict
    from ..weights import describe_checkpoint, load_state_dict_strict

    ckpt = Path(checkpoint)
    info = describe_checkpoint(ckpt)
    if info.config is None or info.task not in (None, task_cls.name):
        raise CheckpointError(f"{ckpt}: not a {task_cls.name} checkpoint (task {info.task!r})")
    cfg = from_dict(schema, info.config)
    if synthetic is not None or data_root:
        cfg.data.synthetic = bool(synthetic)
        cfg.data.root = data_root or ""
    for key, value in (overrides or {}).items():
        if value is not None:
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
    cfg.model.pretrained = ""  # the checkpoint holds every weight; fetch no backbone file
    # the untrained reference never overwrites the trained run's metrics.json
    task = task_cls(cfg, Path(out or (ckpt.parent / "random-weights" if random_weights else ckpt.parent)))
    if random_weights:
        torch.manual_seed(cfg.run.seed)
        return task, task.build_model().eval(), cfg
    model = task.build_model()
    load_state_dict_strict(model, info.state_dict, str(ckpt))
    return task, model.eval(), cfg


def run_eval(task: DenseTask, model: nn.Module, cfg: Any, device: Optional[torch.device] = None) -> Dict[str, Any]:
    """Evaluate ``model`` on the validation split with the engine's Context (no training)."""
    from ..engine import Context, DistInfo, build_loader, select_device

    device = device or select_device(cfg.run.device, 0)
    ctx = Context(device=device, amp_dtype=None, channels_last=False, dist=DistInfo(), out_dir=task.out_dir)
    val_set = task.make_datasets(task.prepare_data(), train=False)
    task.record_skips(val=val_set)
    loader, _ = build_loader(val_set, cfg.optim.batch_size, train=False, workers=cfg.run.workers,
                             collate_fn=task.collate_fn, device=device)
    model = model.to(device).eval()
    with torch.no_grad():
        task.evaluate(model, loader, ctx)
    return task.report


def train_dense(task_cls: Type[DenseTask], cfg: Any, out: Path, resume: Any = None
                ) -> Optional[Tuple[Dict[str, Any], Path]]:
    """``res2net detect|segment|saliency train``: fit ``cfg`` on the engine in ``out``, then evaluate the final
    weights. Returns the final metrics and the path of ``metrics.json`` (None on the ranks of a torchrun job
    other than the first, which alone evaluates and writes)."""
    from ..engine import Trainer

    task = task_cls(cfg, out)
    trainer = Trainer(task, cfg, out, resume=resume)
    task.dist = trainer.dist
    if trainer.dist.is_main:
        claim_folder(out)  # before the synthetic scenes go into <out>/data: never a folder of the user's
    task.prepare_data()
    result = trainer.fit()
    if not trainer.dist.is_main:
        return None
    if not task.report:  # resumed after the last epoch: evaluate the final weights
        run_eval(task, result.model, cfg, next(result.model.parameters()).device)
    return task.report, task.write_reports(out)


def predict_dense(task: DenseTask, model: nn.Module, images: Path, batch: int = 8) -> List[Path]:
    """PNG visualisations of the images under ``images`` (a file or a folder) in ``task.out_dir`` (an output
    folder of res2net's: :func:`res2net.files.claim_folder`)."""
    from ..data.dense import load_rgb
    from ..data.photos import list_images

    files = list_images(images)
    claim_folder(task.out_dir)
    written: List[Path] = []
    with torch.no_grad():
        for i in range(0, len(files), batch):
            written += task.predict_images(model, [(p, load_rgb(p)) for p in files[i:i + batch]], task.out_dir)
    return written
