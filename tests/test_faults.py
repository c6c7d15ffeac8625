"""Faults the engine survives: SIGTERM/SIGINT (preemption), a second signal during the checkpoint write,
interrupted writes, a full disk (a real tmpfs), unreadable checkpoints, a locked or read-only run folder,
resumes that would mix runs, and bad config values. Engine-level tests use the tiny ToyTask of
test_engine.py; the CLI-level ones run ``python -m res2net.cli train`` on a tiny Fashion-MNIST config."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from res2net.engine import Trainer, load_checkpoint, save_atomic
from res2net.engine.checkpoint import load_latest, previous_path
from res2net.jsonio import dumps_strict, write_json
from res2net.engine.runfolder import FolderInUse, RunLock
from res2net.engine.signals import Preempted, TrainingDiverged
from res2net.errors import CheckpointError, ConfigError
from test_engine import ToyConfig, ToyTask

from res2net.data import fashion_mnist as fm

HAVE_FMNIST = all((fm.DEFAULT_DIR / n).is_file() for n in fm.GZ_MD5)
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed")
MODEL = "res2net17_slim"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


class NoisyItems(Dataset):
    """Items augmented with torch's global RNG while the batch is loaded (as image-folder transforms are with
    ``run.workers=0``): a stop must be taken before the next batch is loaded, or the resume draws differently."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        x, y = self.base[i]
        return x + 0.05 * torch.randn_like(x), y


class SignalTask(ToyTask):
    """Sends itself ``sig`` during optimizer step ``at_step`` (1-based), or during evaluation ``at_eval``; its
    training items draw from the global RNG while loaded."""

    def __init__(self, sig: int = signal.SIGTERM, at_step: Optional[int] = None, at_eval: Optional[int] = None,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.sig, self.at_step, self.at_eval, self.evals = sig, at_step, at_eval, 0

    def build_datasets(self) -> Tuple[Dataset, Optional[Dataset]]:
        train, val = super().build_datasets()
        return NoisyItems(train), val

    def training_step(self, model: nn.Module, batch: Any, ctx: Any) -> Any:
        if ctx.global_step + 1 == self.at_step:
            os.kill(os.getpid(), self.sig)
        return super().training_step(model, batch, ctx)

    def evaluate(self, model: nn.Module, loader: Any, ctx: Any) -> Dict[str, float]:
        self.evals += 1
        if self.evals == self.at_eval:
            os.kill(os.getpid(), self.sig)
        return super().evaluate(model, loader, ctx)


def _run(out: Path, task: Optional[ToyTask] = None, resume: bool = False, cfg: Any = None, **run: Any):
    cfg = cfg or ToyConfig()
    for k, v in run.items():
        setattr(cfg.run, k, v)
    return Trainer(task or ToyTask(), cfg, out, resume=resume).fit()


def _same(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- preemption (in process) -------------------------------------------------------------------------------
@pytest.mark.parametrize("sig,code,step", [(signal.SIGTERM, 143, 4), (signal.SIGINT, 130, 9),
                                           (signal.SIGTERM, 143, 6)])  # 6: the epoch's last step
def test_signal_stops_at_step_boundary_and_resumes_bit_exact(tmp_path: Path, sig: int, code: int,
                                                             step: int) -> None:
    ref = _run(tmp_path / "ref", task=SignalTask())
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Preempted) as info:
        _run(tmp_path / "cut", task=SignalTask(sig, at_step=step))
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers restored
    assert info.value.exit_code == code
    state = load_checkpoint(tmp_path / "cut" / "last.pt")
    # the signal came during step `step`: that step completes, the loop stops before the next one (after the
    # epoch's last step: at the start of its evaluation, which the resume does first)
    epoch, at = divmod(step, 6) if step % 6 else (step // 6 - 1, 6)
    assert state["global_step"] == step and (state["epoch"], state["step_in_epoch"]) == (epoch, at)
    message = str(info.value)
    assert f"interrupted at epoch {epoch + 1} step {at}; checkpoint {tmp_path / 'cut' / 'last.pt'}" \
        in message and "resume with:" in message and "\n" not in message
    resumed = _run(tmp_path / "cut", resume=True, task=SignalTask())
    assert _same(ref.model.state_dict(), resumed.model.state_dict())
    # the epoch cut by the signal reports the loss of all its steps (sums kept in the checkpoint)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in ref.history]
    assert [h["acc"] for h in resumed.history] == [h["acc"] for h in ref.history]


def test_signal_during_evaluation_keeps_the_trained_epoch(tmp_path: Path) -> None:
    ref = _run(tmp_path / "ref", task=SignalTask())
    with pytest.raises(Preempted):
        _run(tmp_path / "cut", task=SignalTask(at_eval=2))  # during epoch 2's evaluation
    state = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 6, 12)  # evaluation pending
    assert len(state["history"]) == 1
    resumed = _run(tmp_path / "cut", resume=True, task=SignalTask())
    assert _same(ref.model.state_dict(), resumed.model.state_dict())
    assert [h["acc"] for h in resumed.history] == [h["acc"] for h in ref.history]


def test_second_signal_during_checkpoint_write_does_not_cut_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    real_save = torch.save
    calls: List[int] = []

    def save_with_signal(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        calls.append(1)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal arrives mid-write
        real_save(obj, f, *a, **kw)
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Preempted) as info:
        task = SignalTask(at_step=3)
        cfg = ToyConfig()
        trainer = Trainer(task, cfg, tmp_path / "cut")
        monkeypatch.setattr(torch, "save", save_with_signal)
        trainer.fit()
    monkeypatch.setattr(torch, "save", real_save)
    assert calls and info.value.exit_code == 143  # the first signal decides the exit code
    state = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert state["global_step"] == 3
    assert not [p for p in (tmp_path / "cut").iterdir() if ".tmp" in p.name]


def test_handlers_restored_after_a_failed_run(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingDiverged):
        _run(tmp_path / "nan", task=ToyTask(nan_at_step=2))
    assert signal.getsignal(signal.SIGTERM) == before


# ---- interrupted writes, full disk, lost checkpoints -------------------------------------------------------
@pytest.mark.parametrize("failure", [KeyboardInterrupt(), RuntimeError("PytorchStreamWriter failed writing file "
                                                                       "data/0: file write failed"),
                                     OSError(errno.EIO, "Input/output error")])
def test_save_atomic_interrupted_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     failure: BaseException) -> None:
    path = tmp_path / "last.pt"
    save_atomic({"n": 1}, path)
    real_save = torch.save

    def broken(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        f.write(b"partial")
        raise failure

    monkeypatch.setattr(torch, "save", broken)
    expected = KeyboardInterrupt if isinstance(failure, KeyboardInterrupt) else CheckpointError
    with pytest.raises(expected) as info:
        save_atomic({"n": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    message = str(info.value)
    assert str(path) in message and "previous checkpoint is kept" in message and "\n" not in message
    if expected is CheckpointError:
        assert ("file write failed" in message or "Input/output error" in message) and "MiB free" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(path)["n"] == 1


def test_both_checkpoints_unreadable_is_named_and_nothing_overwritten(tmp_path: Path) -> None:
    _run(tmp_path / "run", epochs=2)
    last, prev = tmp_path / "run" / "last.pt", previous_path(tmp_path / "run" / "last.pt")
    last.write_bytes(b"garbage")
    prev.write_bytes(prev.read_bytes()[:64])
    before = {p: p.read_bytes() for p in (last, prev)}
    with pytest.raises(CheckpointError) as info:
        _run(tmp_path / "run", resume=True, epochs=3)
    assert str(last) in str(info.value) and str(prev) in str(info.value) and "\n" not in str(info.value)
    assert {p: p.read_bytes() for p in (last, prev)} == before
    with pytest.raises(CheckpointError):
        load_latest(last)


class FillDiskTask(ToyTask):
    """Fills the output folder's file system after step ``at_step``, leaving ``leave`` bytes free."""

    def __init__(self, out: Path, at_step: int, leave: int) -> None:
        super().__init__()
        self.out, self.at_step, self.leave = out, at_step, leave

    def training_step(self, model: nn.Module, batch: Any, ctx: Any) -> Any:
        if ctx.global_step + 1 == self.at_step:
            free = os.statvfs(self.out).f_bavail * os.statvfs(self.out).f_frsize
            with open(self.out / "filler", "wb") as f:
                f.write(b"\0" * max(0, free - self.leave))
        return super().training_step(model, batch, ctx)


@contextmanager
def mounted_tmpfs(mount: Path, kib: int) -> Iterator[Path]:
    """A tmpfs of ``kib`` KiB mounted at the new folder ``mount`` for the block (skips where mounting needs
    root)."""
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "tmpfs", 4096) as mount:
        yield mount


def test_full_disk_fails_with_one_line_and_keeps_the_previous_checkpoint(small_tmpfs: Path) -> None:
    out = small_tmpfs / "run"
    out.mkdir()
    # epoch 1 ends at step 6 with last.pt + best.pt; the disk is full after step 7, so epoch 2's save fails
    with pytest.raises(CheckpointError) as info:
        _run(out, task=FillDiskTask(out, at_step=7, leave=4096))
    message = str(info.value)
    assert f"could not write checkpoint {out / 'last.pt'}" in message and "No space left on device" in message
    assert "MiB free in" in message and "previous checkpoint is kept" in message and "\n" not in message
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # no half-written file
    state = load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["global_step"]) == (1, 6)
    (out / "filler").unlink()
    resumed = _run(out, resume=True)  # room again: the run continues from the intact checkpoint
    assert len(resumed.history) == 3


# ---- run folders ---------------------------------------------------------------------------------------
def test_locked_folder_is_refused(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run"):
        with pytest.raises(FolderInUse, match=f"output folder {tmp_path / 'run'} is in use by another run "
                                              f"\\(pid {os.getpid()}\\)"):
            _run(tmp_path / "run")
    _run(tmp_path / "run", epochs=1)  # released: the folder is usable again
    lock = RunLock(tmp_path / "run").acquire()  # and the finished run released it
    lock.release()


@dataclass
class DataSection:
    train_subset: int = 48
    root: str = "/data"


@dataclass
class ToyDataConfig(ToyConfig):
    data: DataSection = field(default_factory=DataSection)


class SizedTask(ToyTask):
    """ToyTask whose training set size, model width and task name can change between runs."""

    def __init__(self, n: int = 48, width: int = 4, name: str = "toy") -> None:
        super().__init__()
        self.n, self.width, self.name = n, width, name

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, self.width, 3), nn.BatchNorm2d(self.width), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(self.width, 3))

    def build_datasets(self) -> Tuple[Dataset, Optional[Dataset]]:
        train, val = super().build_datasets()
        x, y = train.tensors  # type: ignore[attr-defined]
        return TensorDataset(x[: self.n], y[: self.n]), val


def test_resume_refuses_what_would_mix_runs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(out, task=SizedTask(), cfg=ToyDataConfig(), epochs=1)
    cases = [
        (SizedTask(), ToyDataConfig(data=DataSection(train_subset=24)),
         ConfigError, r"other settings \(data.train_subset 48 -> 24\)"),
        (SizedTask(n=24), ToyDataConfig(), ConfigError, "6 steps per epoch, this run has 3"),
        (SizedTask(width=8), ToyDataConfig(), CheckpointError, "shape mismatches"),
        (SizedTask(name="segmentation"), ToyDataConfig(), CheckpointError, "holds a toy run, not segmentation"),
    ]
    for task, cfg, error, pattern in cases:
        cfg.run.epochs = 2
        with pytest.raises(error, match=pattern) as info:
            Trainer(task, cfg, out, resume=True).fit()
        assert "\n" not in str(info.value)
    cfg = ToyDataConfig(data=DataSection(root="/elsewhere"))  # where the data lives may change
    cfg.run.epochs, cfg.run.workers = 2, 0
    assert len(Trainer(SizedTask(), cfg, out, resume=True).fit().history) == 2


def test_torchrun_restart_resumes_same_config_and_refuses_another(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _run(tmp_path / "ref", task=SignalTask())
    with pytest.raises(Preempted):
        _run(tmp_path / "cut", task=SignalTask(at_step=8))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")  # what torchrun's agent sets for its workers
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    cfg = ToyConfig()
    cfg.optim.lr = 0.01
    with pytest.raises(ConfigError, match=r"optim.lr .* under torchrun a run folder is only continued with the "
                                          "same settings"):
        _run(tmp_path / "cut", cfg=cfg)
    resumed = _run(tmp_path / "cut", task=SignalTask())  # no resume=True: the restarted group continues by itself
    assert _same(ref.model.state_dict(), resumed.model.state_dict())


# ---- strict JSON -----------------------------------------------------------------------------------------
def test_strict_json_never_writes_nan(tmp_path: Path) -> None:
    path = write_json(tmp_path / "m.json", {"top1": float("nan"), "h": [{"loss": float("inf")}, {"loss": 1.5}]})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert data == {"top1": None, "h": [{"loss": None}, {"loss": 1.5}], "non_finite": ["top1", "h[0].loss"]}
    assert json.loads(dumps_strict([1.0, float("-inf")], None)) == [1.0, None]


def test_training_log_is_strict_json(tmp_path: Path) -> None:
    _run(tmp_path / "run", epochs=1, log_every=1)
    for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))


# ---- the command line ------------------------------------------------------------------------------------
def _cli(tmp_path: Path, *args: str) -> Tuple[int, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "res2net.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    return proc.returncode, proc.stderr


TINY = ["--model", MODEL, "--dataset", "fashion-mnist", "--train-subset", "256", "--epochs", "2", "--batch-size",
        "32", "--set", "data.test_subset=128", "--deterministic", "--workers", "0", "--quiet"]


def test_config_values_are_range_checked_with_one_line(capsys: pytest.CaptureFixture) -> None:
    from res2net.cli import main

    for args, expected in [(["--set", "optim.label_smoothing=2"], "optim.label_smoothing must be in [0, 1)"),
                           (["--device", "cuda:abc"], "run.device must be auto, cpu, cuda, cuda:N or mps"),
                           (["--set", "optim.momentum=-1"], "optim.momentum must be in [0, 1]"),
                           (["--set", "sched.name=step"], "sched.name must be one of"),
                           (["--set", "optim.lr=.inf"], "optim.lr must be a finite number")]:
        assert main(["train", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err


def test_cli_maps_unexpected_errors_to_one_line(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    import PIL.Image

    from res2net import cli

    def fail_with(exc: BaseException) -> Any:
        def func(args: Any) -> None:
            raise exc
        return func

    cases = [(PIL.Image.DecompressionBombError("Image size (1 pixels) exceeds limit\nsecond line"), 2,
              "DecompressionBombError: Image size (1 pixels) exceeds limit second line"),
             (PermissionError(errno.EACCES, "Permission denied", "/x/y"), 2, "Permission denied: /x/y"),
             (ZeroDivisionError("division by zero"), 1, "unexpected ZeroDivisionError: division by zero"),
             (Preempted("interrupted at epoch 1 step 2; checkpoint c; resume with: r", 143), 143,
              "res2net models: interrupted at epoch 1 step 2")]
    parser = cli.build_parser()
    for exc, code, expected in cases:
        args = parser.parse_args(["models"])
        args.func = fail_with(exc)
        monkeypatch.setattr(cli, "build_parser", lambda a=args: type("P", (), {"parse_args": lambda s, v: a})())
        assert cli.main(["models"]) == code
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err


@needs_fmnist
def test_cli_refuses_a_locked_or_read_only_folder_and_a_missing_data_dir(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with RunLock(out / MODEL):
        code, err = _cli(tmp_path, "train", *TINY, "--out", str(out))
    assert code == 2 and f"output folder {out / MODEL} is in use by another run" in err
    assert len(err.strip().splitlines()) == 1, err
    code, err = _cli(tmp_path, "train", *TINY, "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert code == 2 and f"--data-dir {tmp_path / 'nowhere'} does not exist" in err
    assert len(err.strip().splitlines()) == 1, err
    if not IS_ROOT:
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)]).returncode != 0:
        return
    try:
        code, err = _cli(tmp_path, "train", *TINY, "--out", str(ro / "run"))
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert code == 2 and f"cannot create output folder {ro / 'run'}" in err and "Read-only file system" in err
    assert len(err.strip().splitlines()) == 1, err


@needs_fmnist
@pytest.mark.slow
def test_cli_sigterm_and_sigint_at_random_moments_resume_bit_exact(tmp_path: Path) -> None:
    """``res2net train`` stopped by signals at random steps (mid-epoch included) and resumed twice ends with
    the weights of an uninterrupted run, bit for bit (CPU, --deterministic, run.workers=0)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "res2net.cli", "train", *TINY, "--set", "run.log_every=1"]
    subprocess.run([*cmd, "--out", str(tmp_path / "ref")], check=True, capture_output=True, env=env, timeout=600)
    out = tmp_path / "cut"
    log = out / MODEL / "log.jsonl"
    rng = random.Random(os.getpid())
    steps_done = 0
    for attempt, sig in enumerate((signal.SIGTERM, signal.SIGINT)):
        # 8 steps per epoch, 16 in all: stop after a random step of what is left (first stop mid-epoch 1)
        target = rng.randint(2, 6) if attempt == 0 else rng.randint(steps_done + 2, 14)
        proc = subprocess.Popen([*cmd, "--out", str(out), *(["--resume"] if attempt else [])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        while proc.poll() is None:
            lines = log.read_text().splitlines() if log.exists() else []
            if sum('"type": "step"' in line for line in lines) >= target:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.2))  # somewhere inside the next step
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == (143 if sig == signal.SIGTERM else 130), err
        last_line = err.strip().splitlines()[-1]
        assert "interrupted at epoch" in last_line and f"checkpoint {out / MODEL / 'last.pt'}" in last_line
        assert last_line.rstrip().endswith("--resume") and "Traceback" not in err
        state = torch.load(out / MODEL / "last.pt", weights_only=True)
        assert state["global_step"] >= target
        steps_done = state["global_step"]
    subprocess.run([*cmd, "--out", str(out), "--resume"], check=True, capture_output=True, env=env, timeout=600)
    ref = torch.load(tmp_path / "ref" / MODEL / "last.pt", weights_only=True)
    cut = torch.load(out / MODEL / "last.pt", weights_only=True)
    assert _same(ref["model"], cut["model"])
    assert [h["train_loss"] for h in ref["history"]] == [h["train_loss"] for h in cut["history"]]


# ---- reports of a run folder (classification) -------------------------------------------------------------
@needs_fmnist
def test_second_model_joins_the_report_and_another_dataset_is_refused(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    from res2net.cli import main

    out = tmp_path / "run"
    small = ["--dataset", "fashion-mnist", "--train-subset", "64", "--epochs", "1", "--batch-size", "32", "--set",
             "data.test_subset=32", "--workers", "0", "--quiet", "--out", str(out)]
    assert main(["train", "--model", MODEL, *small]) == 0
    assert main(["train", "--model", "resnet17_slim", *small]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {MODEL, "resnet17_slim"}  # the first model's entry is kept
    assert MODEL in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["train", "--model", "resnet17_slim", "--dataset", "cifar100", "--data-dir", str(tmp_path),
                 "--out", str(out), "--quiet"]) == 2
    assert "reports models trained on 'fashion-mnist', this run uses 'cifar100'" in capsys.readouterr().err
    with RunLock(out):  # the whole --out is locked by a running `res2net train`
        assert main(["train", "--model", "resnet17_slim", *small]) == 2
    assert f"output folder {out} is in use by another run" in capsys.readouterr().err


def test_unreadable_validation_images_give_null_metrics_and_exit_2(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    from res2net.cli import main

    root = tmp_path / "data"
    for cls, colour in (("a", (250, 10, 10)), ("b", (10, 10, 250))):
        (root / "train" / cls).mkdir(parents=True)
        (root / "val" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (36, 36), colour).save(root / "train" / cls / f"{i}.png")
        (root / "val" / cls / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "run"
    code = main(["train", "--model", MODEL, "--dataset", "imagefolder", "--data-dir", str(root), "--epochs", "1",
                 "--batch-size", "4", "--set", "data.input_size=32", "--workers", "0", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"no evaluation image could be read for {MODEL}" in err
    text = (out / "metrics.json").read_text()
    assert "NaN" not in text
    metrics = json.loads(text)
    assert metrics["models"][MODEL]["test_top1"] is None and f"models.{MODEL}.test_top1" in metrics["non_finite"]


def test_cam_on_a_file_that_is_not_an_image_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from res2net.cli import main

    fake = tmp_path / "photo.png"
    fake.write_text("not an image")
    assert main(["cam", "--model", MODEL, str(fake), "--out", str(tmp_path / "cam")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot decode image {fake}" in err and len(err.splitlines()) == 1, err


@needs_fmnist
@pytest.mark.slow
def test_cli_full_tmpfs_as_out_stops_with_one_line_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    """``--out`` on a tmpfs with room for the first epoch's checkpoints but not the second's."""
    small = ["--epochs", "1", "--train-subset", "64", "--set", "data.test_subset=32", "--batch-size", "32",
             "--workers", "0", "--quiet", "--model", MODEL, "--dataset", "fashion-mnist"]
    code, err = _cli(tmp_path, "train", *small, "--out", str(tmp_path / "probe"))
    assert code == 0, err
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "probe" / MODEL).iterdir() if p.suffix == ".pt"}
    room = sizes["last.pt"] + sizes["best.pt"] + sizes["last.pt"] // 2 + 256 * 1024  # + logs and rounding
    with mounted_tmpfs(tmp_path / "small", room // 1024) as mount:
        out = mount / "run"
        code, err = _cli(tmp_path, "train", *small, "--epochs", "2", "--out", str(out))
        last = out / MODEL / "last.pt"
        assert code == 2 and "Traceback" not in err, err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"res2net train: error: could not write checkpoint {last}: No space left on device")
        assert "MiB free in" in line and "the previous checkpoint is kept" in line
        assert not [p for p in (out / MODEL).iterdir() if ".tmp" in p.name]  # no half-written file
        state = torch.load(last, weights_only=True)
        assert state["epoch"] == 1 and state["step_in_epoch"] == 0


def test_every_writer_on_a_full_disk_names_the_users_path_and_leaves_nothing(tmp_path: Path) -> None:
    """export (every format), convert (every format) and save_pretrained on a full disk: exit 2 with one line
    naming the path the user gave (never a temporary), and nothing left behind. TorchScript used to abort the
    process inside torch's C++ zip writer (SIGABRT, a temporary folder left) and convert exited 1."""
    from res2net import save_pretrained
    from res2net.models import build_model

    weights = tmp_path / "sd.pth"
    torch.save(build_model("res2net50_26w_4s").state_dict(), weights)
    with mounted_tmpfs(tmp_path / "small", 128) as mount:
        cases = [(["export", "--model", MODEL, "--format", fmt], f"m.{ext}")
                 for fmt, ext in (("torchscript", "pt"), ("onnx", "onnx"), ("openvino", "xml"))]
        cases += [(["convert", str(weights), "--model", "res2net50_26w_4s", "--to", "timm", "--format", fmt], f"c.{fmt}")
                  for fmt in ("pth", "safetensors", "pkl")]
        for args, name in cases:
            out = mount / name
            args = args + ["--out", str(out)] if args[0] == "export" else args[:2] + [str(out)] + args[2:]
            code, err = _cli(tmp_path, *args)
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1, (args, err[-2000:])
            assert lines[0].endswith(f"No space left on device: {out}"), lines
            assert not list(mount.iterdir()), (args, list(mount.iterdir()))
        with pytest.raises(OSError, match=f"No space left on device: '{mount / 'hf'}'"):
            save_pretrained(build_model(MODEL), mount / "hf")
        assert not list(mount.iterdir())


def test_resume_that_would_stretch_a_one_cycle_schedule_is_refused_with_one_line(tmp_path: Path) -> None:
    """A finished 2-step run (no one-cycle: too short) resumed for 2 epochs (a 4-step one-cycle schedule): one line
    naming the checkpoint and why; torch failed mid-epoch with a bare KeyError 'max_lr'."""
    args = ["--model", MODEL, "--dataset", "fashion-mnist", "--train-subset", "64", "--batch-size", "32",
            "--set", "data.test_subset=32", "--workers", "0", "--quiet", "--out", str(tmp_path / "run")]
    code, err = _cli(tmp_path, "train", *args, "--epochs", "1")
    assert code == 0, err
    code, err = _cli(tmp_path, "train", *args, "--epochs", "2", "--resume")
    line = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err, err
    assert line.startswith(f"res2net train: error: {tmp_path / 'run' / MODEL / 'last.pt'}: it holds no one-cycle "
                           "schedule and this run needs a one-cycle schedule of 4 steps"), line
