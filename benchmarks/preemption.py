"""Issue 16's figures: how long SIGTERM takes to produce a checkpoint for the default model, and what the
periodic checkpoint costs. Run on an idle machine (`uptime`: load average < 1):

    .venv/bin/python benchmarks/preemption.py --out benchmarks/results/preemption

1. SIGTERM -> checkpoint: ``res2net train --model res2net17_slim`` (the Fashion-MNIST recipe) is started, and
   after N step records in its log (N random in 3..15) it gets SIGTERM at a random moment of the next step;
   timed: until ``last.pt`` exists (its mtime) and until the process has exited (it must exit 143). At 16 px
   (the default's first epoch) and at 28 px (``data.train_scales=null``), ``--trials`` times each.
2. Checkpoint cost: one process trains two steps, then writes the same state 20 times (``Trainer.save``:
   temp file, fsync, rename); overhead at ``--checkpoint-every K`` = write / (K x step), the step time being
   the median interval between the trials' step records (``run.log_every=1``) at each input size.

Writes ``preemption.json`` and ``preemption.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from tqdm import tqdm

MODEL = "res2net17_slim"
SIZES = {"16 px": [], "28 px": ["--set", "data.train_scales=null"]}


def _step_records(log: Path) -> List[Dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if '"type": "step"' in line]


def _steps(log: Path) -> int:
    return len(_step_records(log))


def sigterm_trial(extra: List[str], rng: random.Random) -> Dict[str, Any]:
    """One SIGTERM at a random moment of a random early step: seconds to last.pt and to exit."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "res2net.cli", "train", "--model", MODEL, "--quiet", "--out", str(out),
               "--set", "run.log_every=1", *extra]
        log, last = out / MODEL / "log.jsonl", out / MODEL / "last.pt"
        target = rng.randint(3, 15)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None and _steps(log) < target:
            time.sleep(0.005)
        step_start = time.time()
        while proc.poll() is None and _steps(log) < target + 1 and time.time() - step_start < 0.5 * rng.random():
            time.sleep(0.001)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        saved: Optional[float] = None
        while proc.poll() is None or (saved is None and last.exists()):
            if saved is None and last.exists():
                saved = os.stat(last).st_mtime - sent
            time.sleep(0.002)
        exited = time.time() - sent
        err = proc.stderr.read() if proc.stderr else ""
        if proc.returncode != 143 or saved is None:
            raise RuntimeError(f"trial did not stop with a checkpoint (exit {proc.returncode}): {err[-500:]}")
        times = [r["time"] for r in _step_records(log)][1:]  # the first step includes the warm-up
        step = statistics.median(b - a for a, b in zip(times, times[1:]))
        return {"after_step": target, "to_checkpoint_s": saved, "to_exit_s": exited, "step_s": step}


def checkpoint_cost() -> Dict[str, float]:
    """20 writes of the default model's training state (after two steps; its size does not depend on the
    input size)."""
    from res2net.engine import Trainer, load_config
    from res2net.tasks.classification import ClassificationConfig, ClassificationTask, load_data

    overrides = [f"model.name=[{MODEL}]", "run.workers=0", "run.quiet=true", "data.train_subset=256",
                 "run.epochs=1"]
    cfg = load_config(ClassificationConfig, "fashion_mnist", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(ClassificationTask(MODEL, cfg, load_data(cfg.data, MODEL, 0)), cfg, Path(tmp) / "run")
        trainer.set_up()
        trainer.train_epoch(0, 0)
        writes = []
        for i in range(20):
            t = time.perf_counter()
            trainer.save(0, i + 1)
            writes.append(time.perf_counter() - t)
        size = (Path(tmp) / "run" / "last.pt").stat().st_size
    return {"write_median_s": statistics.median(writes), "write_min_s": min(writes),
            "write_max_s": max(writes), "checkpoint_mib": size / 2 ** 20}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=5, help="SIGTERM trials per input size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "preemption")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    report: Dict[str, Any] = {"command": "benchmarks/preemption.py " + " ".join(argv or sys.argv[1:]),
                              "cpu": _cpu(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "sizes": {}}
    cost = checkpoint_cost()
    report["checkpoint"] = cost
    for name, extra in SIZES.items():
        trials = [sigterm_trial(extra, rng) for _ in tqdm(range(args.trials), desc=f"SIGTERM trials, {name}")]
        report["sizes"][name] = {"trials": trials, "step_s": statistics.median(t["step_s"] for t in trials)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preemption.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    lines = [f"{report['date']}, {report['cpu']}, `{report['command']}`", "",
             "| | " + " | ".join(report["sizes"]) + " |", "|---|" + "---:|" * len(report["sizes"])]

    def row(label: str, fn: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(fn(v) for v in report["sizes"].values()) + " |")

    row("training step (median interval of the trials' step records)", lambda v: f"{1000 * v['step_s']:.0f} ms")
    row(f"SIGTERM -> last.pt written, {args.trials} trials: median (max)", lambda v: "{:.2f} s ({:.2f} s)".format(
        statistics.median(t["to_checkpoint_s"] for t in v["trials"]), max(t["to_checkpoint_s"] for t in v["trials"])))
    row("SIGTERM -> process exited (143), median", lambda v: "{:.2f} s".format(
        statistics.median(t["to_exit_s"] for t in v["trials"])))
    row("one checkpoint write (temp file, fsync, rename), median of 20 (min-max)",
        lambda v: "{:.0f} ms ({:.0f}-{:.0f}), {:.2f} MiB".format(1000 * cost["write_median_s"],
                                                                1000 * cost["write_min_s"],
                                                                1000 * cost["write_max_s"], cost["checkpoint_mib"]))
    row("periodic checkpoint overhead at --checkpoint-every 10 / 100 / 500", lambda v: " / ".join(
        f"{100 * cost['write_median_s'] / (k * v['step_s']):.2f} %" for k in (10, 100, 500)))
    (args.out / "preemption.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
        family = next(line.split(":", 1)[1].strip() for line in info if line.startswith("cpu family"))
        model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model\t"))
        return f"{name} (family {family} model {model}), {os.cpu_count()} cores"
    except (OSError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
