"""The short version of the soak test (benchmarks/soak.py, issue 22): one process builds the eager, onnxruntime
and OpenVINO backends, predicts, exports and runs Grad-CAM twice over; the process must live through it and every
step must compute what eager computes. The long version (``--minutes 30``) is a benchmark (docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["optimize eager", "optimize onnxruntime", "optimize openvino", "predict", "export torchscript", "grad-cam"]


@pytest.mark.slow
def test_short_soak_lives_and_every_step_matches_eager(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--cycles", "2", "--model",
                           "res2net17_slim", "--quiet", "--out", str(out), *[f"--only={s}" for s in STEPS]],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    report = json.loads(out.read_text())
    assert report["exit"] == "ok" and report["crashed_in"] is None, (report, proc.stderr[-3000:])
    assert report["failures"] == [] and proc.returncode == 0, report["failures"]
    assert report["cycles"] == 2 and report["steps_per_kind"] == {k: 2 for k in report["steps_per_kind"]}
    assert sorted(report["steps_per_kind"]) == sorted(["optimize eager fp32", "optimize onnxruntime fp32",
                                                        "optimize openvino fp32", "predict auto",
                                                        "export torchscript", "grad-cam"])


def test_a_native_crash_is_caught_and_named_with_its_step(tmp_path: Path) -> None:
    """The soak's parent outlives a child killed by SIGSEGV and names the signal, the cycle and the step."""
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--cycles", "1", "--model",
                           "res2net17_slim", "--quiet", "--out", str(out), "--only=optimize eager",
                           "--inject-crash=optimize eager fp32"], capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    assert proc.returncode == 1 and report["exit"] == "killed by SIGSEGV", (report, proc.stderr[-2000:])
    assert report["crashed_in"] == {"cycle": 1, "step": "optimize eager fp32", "started": True}
    assert report["steps"] == 0
