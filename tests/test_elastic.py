"""Elastic restarts under torchrun (2 CPU processes, gloo): a worker SIGKILLed after the first checkpoint, the
agent restarts the group, the run resumes by itself and ends with the weights of an uninterrupted run; and
forming a process group never hangs (bounded by RES2NET_DIST_INIT_TIMEOUT, one clear line)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import torch

from res2net.data import fashion_mnist as fm

HAVE_FMNIST = all((fm.DEFAULT_DIR / n).is_file() for n in fm.GZ_MD5)
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist not installed")
MODEL = "res2net17_slim"
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
TRAIN = ["-m", "res2net.cli", "train", "--model", MODEL, "--dataset", "fashion-mnist", "--train-subset", "256",
         "--epochs", "2", "--batch-size", "16", "--set", "data.test_subset=64", "--deterministic", "--workers", "0",
         "--quiet", "--checkpoint-every", "2"]


def _torchrun(out: Path, restarts: int = 0) -> List[str]:
    return [TORCHRUN, "--standalone", "--nproc-per-node", "2", "--max-restarts", str(restarts), *TRAIN,
            "--out", str(out)]


def _children(pid: int) -> List[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _rank_of(pid: int) -> int:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")), -1)


ENV = dict(os.environ, OMP_NUM_THREADS="1", RES2NET_DIST_INIT_TIMEOUT="120")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The final weights of an uninterrupted 2-process run."""
    out = tmp_path_factory.mktemp("ref")
    ref = subprocess.run(_torchrun(out), capture_output=True, text=True, env=ENV, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    return torch.load(out / MODEL / "last.pt", weights_only=True)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)


@needs_fmnist
@pytest.mark.slow
def test_worker_killed_then_restarted_group_resumes_to_the_same_weights(tmp_path: Path, reference: dict) -> None:
    env = ENV
    out = tmp_path / "cut"
    proc = subprocess.Popen(_torchrun(out, restarts=2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    last = out / MODEL / "last.pt"
    _wait_for(last, proc)
    workers = {_rank_of(p): p for p in _children(proc.pid)}
    assert 1 in workers, f"no rank-1 worker found: {workers}"
    os.kill(workers[1], signal.SIGKILL)  # one worker dies after the first checkpoint
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    log = (out / MODEL / "log.jsonl").read_text()
    assert '"type": "resume"' in log  # the restarted group continued from last.pt by itself
    a = reference
    b = torch.load(last, weights_only=True)
    assert b["global_step"] == a["global_step"] == 16 and b["sampler"]["world_size"] == 2
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k])
                                                        for k in a["model"])


@needs_fmnist
@pytest.mark.slow
def test_sigterm_to_one_rank_stops_all_at_the_same_step_and_the_rerun_resumes(tmp_path: Path,
                                                                               reference: dict) -> None:
    """SIGTERM reaches only rank 1: the ranks agree at the next step boundary, rank 0 writes last.pt, both exit
    143; the same torchrun command again continues by itself to the uninterrupted run's weights."""
    out = tmp_path / "cut"
    proc = subprocess.Popen(_torchrun(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    _wait_for(out / MODEL / "last.pt", proc)
    workers = {_rank_of(p): p for p in _children(proc.pid)}
    os.kill(workers[1], signal.SIGTERM)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0 and "exitcode  : 143" in output, output[-3000:]
    assert output.count("interrupted at epoch") == 2, output[-3000:]  # (torchrun itself prints a traceback)
    state = torch.load(out / MODEL / "last.pt", weights_only=True)
    assert 0 < state["global_step"] < 16
    rerun = subprocess.run(_torchrun(out), capture_output=True, text=True, env=ENV, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    final = torch.load(out / MODEL / "last.pt", weights_only=True)
    assert all(torch.equal(reference["model"][k], final["model"][k]) for k in reference["model"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_fmnist
def test_process_group_set_up_is_bounded_with_a_message(tmp_path: Path) -> None:
    """Rank 0 of 2 whose peer never comes: it gives up after RES2NET_DIST_INIT_TIMEOUT with one line."""
    env = dict(os.environ, OMP_NUM_THREADS="1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RES2NET_DIST_INIT_TIMEOUT="3")
    start = time.time()
    proc = subprocess.run([sys.executable, *TRAIN, "--out", str(tmp_path / "run")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode != 0 and time.time() - start < 120
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "rank 0 of 2 could not form the gloo process group" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()
