"""The task-agnostic engine: config, sampler, checkpoints, NaN stop, in-process exact resume."""

from __future__ import annotations

import errno
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from res2net.engine import (Context, OptimConfig, ResumableBatchSampler, RunConfig, SchedConfig, Task,
                            TrainingDiverged, load_checkpoint, load_config, load_latest, save_atomic)
from res2net.engine.checkpoint import previous_path
from res2net.engine.config import from_dict, recipe_names
from res2net.errors import CheckpointError, ConfigError, Res2NetError


@dataclass
class ToyConfig:
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(batch_size=8, lr=0.05, lr_batch=8))
    sched: SchedConfig = field(default_factory=lambda: SchedConfig(name="cosine", warmup_epochs=0.5))
    run: RunConfig = field(default_factory=lambda: RunConfig(epochs=3, workers=0, quiet=True,
                                                             deterministic=True))


class Crash(Exception):
    """Stands for a process killed in the middle of a step."""


class ToyTask(Task):
    """A tiny conv net on random data with a random augmentation (uses the global RNG) and dropout."""

    name, primary_metric, higher_is_better = "toy", "acc", True

    def __init__(self, nan_at_step: Optional[int] = None, crash_at_step: Optional[int] = None) -> None:
        self.nan_at_step, self.crash_at_step = nan_at_step, crash_at_step

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Dropout(0.2), nn.Linear(4, 3))

    def build_datasets(self) -> Tuple[Dataset, Optional[Dataset]]:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
        return TensorDataset(x, y), TensorDataset(x[:16], y[:16])

    def prepare_batch(self, batch: Any, ctx: Context, train: bool) -> Any:
        x, y = ctx.to_device(batch)
        if train:
            x = x + 0.1 * torch.randn_like(x)
        return x, y

    def training_step(self, model: nn.Module, batch: Any, ctx: Context) -> Tuple[Tensor, Dict[str, float]]:
        x, y = batch
        if ctx.global_step + 1 == self.crash_at_step:
            raise Crash
        loss = nn.functional.cross_entropy(model(x), y)
        if self.nan_at_step is not None and ctx.global_step + 1 >= self.nan_at_step:
            loss = loss * float("nan")
        return loss, {}

    def evaluate(self, model: nn.Module, loader: Iterable[Any], ctx: Context) -> Dict[str, float]:
        right = total = 0
        for batch in loader:
            x, y = self.prepare_batch(batch, ctx, train=False)
            right += int((model(x).argmax(1) == y).sum())
            total += len(y)
        return {"acc": right / total}


def _fit(out: Path, resume: bool = False, task: Optional[Task] = None, **run: Any):
    from res2net.engine import Trainer

    cfg = ToyConfig()
    for k, v in run.items():
        setattr(cfg.run, k, v)
    return Trainer(task or ToyTask(), cfg, out, resume=resume).fit()


# ---- config ---------------------------------------------------------------------------------------------
def test_recipes_validate() -> None:
    from res2net.tasks.classification import ClassificationConfig

    assert {"imagenet", "cifar100", "fashion_mnist"} <= set(recipe_names())
    for name in recipe_names():
        load_config(ClassificationConfig, name)
    imagenet = load_config(ClassificationConfig, "imagenet")
    assert (imagenet.optim.lr, imagenet.optim.batch_size, imagenet.optim.weight_decay) == (0.1, 256, 1e-4)
    assert imagenet.sched.milestones == [30, 60, 90] and imagenet.run.epochs == 100
    cifar = load_config(ClassificationConfig, "cifar100")
    assert cifar.optim.nesterov and cifar.sched.milestones == [150, 225] and cifar.run.epochs == 300


def test_overrides_and_errors(tmp_path: Path) -> None:
    cfg = load_config(ToyConfig, None, ["optim.lr=0.5", "sched.milestones=[1, 2]", "optim.clip_grad_norm=null",
                                        "run.epochs=7"], {"run.seed": 3, "run.epochs": 2})
    assert (cfg.optim.lr, cfg.sched.milestones, cfg.run.seed, cfg.run.epochs) == (0.5, [1, 2], 3, 7)
    assert load_config(ToyConfig, None, ["optim.lr=1"]).optim.lr == 1.0  # int accepted for a float
    assert load_config(ToyConfig, None, ["sched.milestones=5"]).sched.milestones == [5]  # one value: a list of one
    cases = {"optim.lrr=1": "optim.lr,", "optimx.lr=1": "allowed: optim, sched, run",
             "optim.lr=fast": "must be float", "run.epochs=2.5": "must be int",
             "run.deterministic=3": "must be bool", "sched.milestones=fast": "list of int", "optim.lr": "KEY=VALUE",
             "run.epochs=0": "run.epochs must be >= 1, got 0", "optim.batch_size=-2": "optim.batch_size must be >= 1",
             "run.workers=-1": "run.workers must be >= 0", "optim.weight_decay=-0.1": "must be >= 0"}
    for override, expected in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(ToyConfig, None, [override])
        message = str(info.value)
        assert expected in message and "\n" not in message, message
    bounds_inclusive = load_config(ToyConfig, None, ["run.workers=0", "run.checkpoint_every=0"])
    assert bounds_inclusive.run.workers == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  momentun: 0.9\n")
    with pytest.raises(ConfigError, match="optim.momentun"):
        load_config(ToyConfig, str(bad))
    with pytest.raises(ConfigError, match="packaged recipes"):
        load_config(ToyConfig, "no_such_recipe")


# ---- sampler ----------------------------------------------------------------------------------------------
def test_sampler_shards_and_resumes() -> None:
    ranks = [ResumableBatchSampler(12, 3, seed=1, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    seen = [i for s in ranks for b in s for i in b]
    assert sorted(seen) == list(range(12)) and len(ranks[0]) == 2
    full = list(ranks[0])
    ranks[0].set_epoch(3, start_batch=1)
    assert list(ranks[0]) == full[1:]
    ranks[0].set_epoch(4)
    assert list(ranks[0]) != full
    state = torch.get_rng_state()
    list(ranks[0])
    assert torch.equal(state, torch.get_rng_state())  # the sampler never touches the global RNG


# ---- checkpoints ----------------------------------------------------------------------------------------------
def test_atomic_checkpoint_and_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.zeros(2)}, "n": 1}, path)
    save_atomic({"model": {"w": torch.ones(2)}, "n": 2}, path)
    assert load_checkpoint(path)["n"] == 2 and load_checkpoint(previous_path(path))["n"] == 1
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="last.pt' cannot be read.*using the previous one"):
        assert load_latest(path)["n"] == 1
    with pytest.raises(CheckpointError, match="last.pt"):
        load_checkpoint(path)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    good = tmp_path / "good.pt"
    save_atomic({"n": 3}, good)
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="good.pt: No space left on device; .* MiB free in .*; the previous checkpoint is kept"):
        save_atomic({"n": 4}, good)
    assert load_checkpoint(good)["n"] == 3
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_checkpoint_is_weights_only_and_complete(tmp_path: Path) -> None:
    result = _fit(tmp_path / "run")
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "step_in_epoch", "global_step", "rng",
                "sampler", "config", "history"):
        assert key in state
    assert state["epoch"] == 3 and state["step_in_epoch"] == 0 and len(result.history) == 3
    assert (tmp_path / "run" / "log.jsonl").is_file()
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)  # weights for evaluation, no resume state
    assert not set(best) & {"optimizer", "scheduler", "scaler", "rng", "sampler"}
    assert {"model", "config", "history", "epoch", "best"} <= set(best)
    assert best["model"].keys() == state["model"].keys()
    assert (tmp_path / "run" / "best.pt").stat().st_size < (tmp_path / "run" / "last.pt").stat().st_size
    with pytest.raises(Res2NetError, match="--resume"):
        _fit(tmp_path / "run")


def test_resume_mid_epoch_is_exact(tmp_path: Path) -> None:
    reference = _fit(tmp_path / "ref").model.state_dict()
    with pytest.raises(Crash):  # 6 steps/epoch: checkpoints at steps 4 (mid-epoch), 6, 8, 12; dies in step 11
        _fit(tmp_path / "cut", checkpoint_every=4, task=ToyTask(crash_at_step=11))
    state = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 2, 8)
    resumed = _fit(tmp_path / "cut", resume=True).model.state_dict()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match="loss is nan at epoch 2"):
        _fit(tmp_path / "nan", task=ToyTask(nan_at_step=9))  # 6 steps/epoch
    state = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values()
                                       if v.is_floating_point())


def test_lr_linear_scaling_rule() -> None:
    from res2net.engine.optim import scaled_lr

    assert math.isclose(scaled_lr(OptimConfig(lr=0.1, lr_batch=256), 512), 0.2)


def test_ema_smoothing_clipping_and_changed_resume(tmp_path: Path) -> None:
    from res2net.engine import Trainer

    cfg = ToyConfig()
    cfg.optim.ema_decay, cfg.optim.label_smoothing, cfg.optim.clip_grad_norm = 0.9, 0.1, 1.0
    cfg.run.epochs = 1
    result = Trainer(ToyTask(), cfg, tmp_path / "ema").fit()
    state = load_checkpoint(tmp_path / "ema" / "last.pt")
    assert state["ema"] is not None and "acc" in result.metrics
    assert not all(torch.equal(v, state["model"][k]) for k, v in result.model.state_dict().items())  # EMA copy
    cfg.run.epochs, cfg.optim.lr = 2, 0.01
    with pytest.warns(UserWarning, match="changed settings optim.lr, run.epochs"):
        Trainer(ToyTask(), cfg, tmp_path / "ema", resume=True).fit()


def test_section_defaults_declared_by_a_task_survive_overrides():
    """Setting one key of a section keeps the other defaults the task's schema declares for that section."""
    import dataclasses

    from res2net.engine.config import OptimConfig, RunConfig, SchedConfig, load_config

    @dataclasses.dataclass
    class Schema:
        optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(name="adamw", lr=1e-3))
        sched: SchedConfig = dataclasses.field(default_factory=SchedConfig)
        run: RunConfig = dataclasses.field(default_factory=RunConfig)

    cfg = load_config(Schema, None, ["optim.batch_size=8"])
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.batch_size) == ("adamw", 1e-3, 8)


def test_renamed_config_keys_are_still_read_with_a_note_and_never_both() -> None:
    """Old key names (``data.data_dir``, ``model.freeze_stages``, ``data.image_size``) mean their new key, say
    so in one line, and are refused beside the new name; a checkpoint's old config compares under new names."""
    from res2net.engine.config import current_key_names
    from res2net.tasks.classification.config import ClassificationConfig
    from res2net.tasks.segmentation import SegmentationConfig

    with pytest.warns(FutureWarning, match="'data.data_dir' is now 'data.root'"):
        cfg = load_config(ClassificationConfig, "fashion_mnist", ["data.data_dir=/x", "model.freeze_stages=2"])
    assert (cfg.data.root, cfg.model.frozen_stages) == ("/x", 2)
    cfg = load_config(ClassificationConfig, None, ["data.data_dir=/old", "data.root=/new"])
    assert cfg.data.root == "/new"  # the later setting wins, whichever name the earlier one used
    with pytest.raises(ConfigError, match="name the same setting"):
        from_dict(ClassificationConfig, {"data": {"data_dir": "/a", "root": "/b"}})
    with pytest.warns(FutureWarning, match="'data.image_size' is now 'data.input_size'"):
        assert load_config(SegmentationConfig, None, ["data.image_size=64"]).data.input_size == 64
    assert current_key_names(ClassificationConfig, {"data": {"data_dir": "/a"}, "x": 1}) == {"data": {"root": "/a"},
                                                                                             "x": 1}


def test_values_mean_what_was_typed_yaml_1_2(tmp_path: Path) -> None:
    """``off`` stays the string off (YAML 1.1 made it False), ``1e-3`` is a float, ``010`` is ten; a key given
    twice, a section set to a value and a subset larger than its split are refused in one line."""
    from res2net.tasks.classification.config import ClassificationConfig

    cfg = load_config(ClassificationConfig, "fashion_mnist", ["run.amp=off", "optim.lr=1e-3", "run.epochs=010"])
    assert (cfg.run.amp, cfg.optim.lr, cfg.run.epochs) == ("off", 0.001, 10)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("run:\n  amp: off\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="'epochs' is given twice \\(line 4\\)"):
        load_config(ClassificationConfig, str(recipe))
    recipe.write_text("run:\n  amp: off\noptim:\n")  # an empty section keeps its defaults
    assert load_config(ClassificationConfig, str(recipe)).run.amp == "off"
    with pytest.raises(ConfigError, match="'optim' is a section, not a value; set one of its keys"):
        load_config(ClassificationConfig, "fashion_mnist", ["optim=0"])
    with pytest.raises(ConfigError, match="config section 'optim' must be a mapping, got 0"):
        from_dict(ClassificationConfig, {"optim": 0})


def test_a_subset_larger_than_its_split_is_refused(tmp_path: Path) -> None:
    from res2net.data import TensorImageDataset
    from res2net.tasks.classification import data as cdata
    from res2net.tasks.classification.config import DataSection

    sets = {"train": TensorImageDataset(torch.zeros(6, 1, 28, 28, dtype=torch.uint8), torch.arange(6) % 2, ["a", "b"]),
            "test": TensorImageDataset(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.arange(4) % 2, ["a", "b"])}
    original = cdata._tensor_sets
    cdata._tensor_sets = lambda *a: sets  # type: ignore[assignment]
    try:
        assert len(cdata.load_data(DataSection(dataset="fashion-mnist", train_subset=6), "res2net17_slim").train) == 6
        with pytest.raises(ConfigError, match=r"data.train_subset \(--train-subset\) = 7 is more than the 6 images"):
            cdata.load_data(DataSection(dataset="fashion-mnist", train_subset=7), "res2net17_slim")
        with pytest.raises(ConfigError, match="data.test_subset .* = 5 is more than the 4 images of the evaluation"):
            cdata.load_data(DataSection(dataset="fashion-mnist", test_subset=5), "res2net17_slim")
    finally:
        cdata._tensor_sets = original  # type: ignore[assignment]


def test_contradicting_settings_are_refused() -> None:
    from res2net.tasks.classification.config import ClassificationConfig

    with pytest.raises(ConfigError, match="linear_probe .* freezes every stage; model.frozen_stages=1"):
        load_config(ClassificationConfig, "fashion_mnist", ["model.linear_probe=true", "model.frozen_stages=1"])
    assert load_config(ClassificationConfig, "fashion_mnist",
                       ["model.linear_probe=true", "model.pretrained=w.pth"]).model.linear_probe
    with pytest.raises(ConfigError, match="linear_probe .* give model.pretrained"):
        load_config(ClassificationConfig, "fashion_mnist", ["model.linear_probe=true"])
    with pytest.raises(ConfigError, match="model.name is an empty list"):
        load_config(ClassificationConfig, "fashion_mnist", ["model.name=[]"])


def test_onecycle_pct_start_is_used_as_given_or_adjusted_with_a_warning() -> None:
    """sched.pct_start=0.9 was silently cut to 0.5; now the peak is where the user put it, and only a run too
    short for a phase moves it, with a warning naming the value."""
    from res2net.engine.optim import build_scheduler

    def peak(pct: float, steps: int) -> int:
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        sched = build_scheduler(opt, SchedConfig(name="onecycle", pct_start=pct), steps, 1)
        lrs = []
        for _ in range(steps - 1):
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        return max(range(len(lrs)), key=lambda i: lrs[i]) + 1

    import warnings as w

    with w.catch_warnings():
        w.simplefilter("error")
        assert peak(0.9, 100) == 89 and peak(0.25, 100) == 24
    with pytest.warns(UserWarning, match=r"sched.pct_start=1.0 leaves a phase .* 10 steps; using 0.8"):
        assert peak(1.0, 10) == 7


def test_model_name_is_one_key_for_one_model_or_several() -> None:
    from res2net.tasks.classification.config import ClassificationConfig

    assert load_config(ClassificationConfig, None, ["model.name=res2net17_slim"]).model.name == ["res2net17_slim"]
    both = load_config(ClassificationConfig, None, ["model.name=[res2net17_slim, resnet17_slim]"]).model.name
    assert both == ["res2net17_slim", "resnet17_slim"]
    with pytest.warns(FutureWarning, match="'model.names' is now 'model.name'"):
        assert load_config(ClassificationConfig, None, ["model.names=[a]"]).model.name == ["a"]
    assert load_config(ClassificationConfig, "fashion_mnist").model.name == ["res2net17_slim", "resnet17_slim"]


def test_resume_with_another_seed_layout_is_refused(tmp_path: Path) -> None:
    """--seeds 2 --resume on a one-seed run (or --resume without --seeds on a multi-seed run) would have started
    the runs anew beside the old ones; it is refused before any training."""
    from res2net.tasks.classification.run import _check_seed_layout

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "last.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="holds a run of one seed"):
        _check_seed_layout(tmp_path, ["m"], 2)
    _check_seed_layout(tmp_path, ["m"], 1)
    (tmp_path / "m" / "last.pt").unlink()
    for s in (0, 1):
        (tmp_path / "m" / f"seed{s}").mkdir()
        (tmp_path / "m" / f"seed{s}" / "last.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"several seeds \(seed0, seed1\); give --seeds 2"):
        _check_seed_layout(tmp_path, ["m"], 1)
    _check_seed_layout(tmp_path, ["m"], 2)


def test_a_config_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    """Issue 22 probe: ``--config conf.d`` (a folder) was reported as a file that "does not exist"."""
    from res2net.engine.config import read_recipe

    (tmp_path / "conf.d").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        read_recipe(str(tmp_path / "conf.d"))
