"""Soak test (issue 22): one long-lived process builds every inference backend, predicts, exports and runs
Grad-CAM, over and over, the way a server or a notebook session of a user would. A native crash anywhere (a
SIGSEGV in a runtime's thread pool, an abort in a C++ writer) ends that process; the parent process survives it
and names the signal, the cycle and the step it happened in.

Each cycle, in the one child process:
  * ``optimize(model, backend=B)`` for every installed backend and ``"auto"`` (fp32), ``dtype="int8"`` with
    ``backend="auto"`` (calibrated on the sample photos), and bf16 ``auto`` where the CPU runs bf16 natively;
    each result is checked against eager on a real photo (max abs difference; int8: top-1 agreement);
  * ``Predictor(..., backend="auto")`` over a folder of the sample photos;
  * ``export_model`` to ONNX, OpenVINO and TorchScript (each verified by the exporter);
  * ``cam_report`` (Grad-CAM) on the sample photos.

Usage (the results go to --out as JSON, with the CPU, the date and the command):

    .venv/bin/python benchmarks/soak.py --minutes 30                      # res2net50_26w_4s at its card's size
    .venv/bin/python benchmarks/soak.py --cycles 2 --model res2net17_slim --only "optimize eager" \
        --only "optimize onnxruntime" --only "optimize openvino" --only predict --only "export torchscript" \
        --only grad-cam                                                  # the short version tests/ runs

Exit status: 0 when every step of every cycle succeeded and the process was never killed; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch

def _steps(name: str, input_size: int, work: Path) -> Iterator[Tuple[str, Callable[[], Dict[str, Any]]]]:
    """(step name, step) pairs of one cycle; each step returns what it measured."""
    import res2net
    from res2net.analysis.cam import cam_report
    from res2net.data.photos import sample_images
    from res2net.export import export_model
    from res2net.hardware import bf16_native
    from res2net.inference.backends import MIN_INT8_AGREEMENT, available_backends
    from res2net.inference.onnx import top1_agreement, verify_close
    from res2net.predict import Predictor
    from res2net.weights import preprocessing_of

    torch.manual_seed(0)
    model = res2net.create_model(name).eval()
    prep = preprocessing_of(model, name)
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    photos = [torch.nn.functional.interpolate(img[None], size=(input_size, input_size), mode="bilinear",
                                              align_corners=False) for _, img in sample_images()]
    batch = (torch.cat(photos) - mean) / std

    def run_backend(backend: str, dtype: Any) -> Dict[str, Any]:
        """Build, then compare with eager by the library's own bounds (fp32 and bf16: scale-aware max abs
        difference, raising beyond it; int8: top-1 agreement), batched and image by image."""
        fast = res2net.optimize(model, dtype=dtype, backend=backend, input_size=input_size,
                                calibration=[batch] if dtype == "int8" else None)
        one_by_one = lambda x: torch.cat([fast(x[i:i + 1]) for i in range(len(x))])  # noqa: E731
        if dtype == "int8":
            agreement = min(top1_agreement(model, run, [batch]) for run in (fast, one_by_one))
            return {"ok": agreement >= MIN_INT8_AGREEMENT, "backend": fast.backend, "top1_agreement": agreement}
        name = "fp32" if dtype == torch.float32 else "bf16"
        diff = max(verify_close(f"{backend} {name}", model, run, batch, name) for run in (fast, one_by_one))
        return {"ok": True, "backend": fast.backend, "max_abs_diff": diff}

    for backend in available_backends("fp32") + ["auto"]:
        yield f"optimize {backend} fp32", lambda b=backend: run_backend(b, torch.float32)
    yield "optimize auto int8", lambda: run_backend("auto", "int8")
    if bf16_native():
        yield "optimize auto bf16", lambda: run_backend("auto", torch.bfloat16)

    def predict() -> Dict[str, Any]:
        folder = work / "photos"
        if not folder.is_dir():
            from PIL import Image

            folder.mkdir()
            for i, (_, img) in enumerate(sample_images()):
                Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(folder / f"{i}.png")
        records = Predictor(model, name, backend="auto", topk=1).predict(sorted(folder.iterdir()))
        return {"ok": len(records) == len(photos), "images": len(records)}

    yield "predict auto", predict

    def export(fmt: str, suffix: str) -> Dict[str, Any]:
        out = work / f"model.{suffix}"
        diffs = export_model(model, out, fmt, input_size=input_size, mean=prep.mean, std=prep.std,
                             in_chans=batch.shape[1])  # verified by the exporter's own bounds (raises beyond)
        for path in work.glob("model.*"):
            path.unlink()
        return {"ok": True, "max_abs_diff": max(diffs.values())}

    for fmt, suffix in (("onnx", "onnx"), ("openvino", "xml"), ("torchscript", "pt")):
        yield f"export {fmt}", lambda f=fmt, s=suffix: export(f, s)

    def cam() -> Dict[str, Any]:
        report = cam_report([(name, None)], work / "cam", input_size=input_size)
        return {"ok": (report.parent / "cam.png").is_file()}

    yield "grad-cam", cam


def child(args: argparse.Namespace) -> None:
    """The soaked process: cycles of every step until the time or the cycle count is spent; one JSON line per
    step on stdout (a step's Python exception is recorded and the soak goes on: only the process dying is a
    crash)."""
    from res2net.hardware import limit_threads

    limit_threads()
    deadline = time.monotonic() + args.minutes * 60
    cycle = 0
    with tempfile.TemporaryDirectory(prefix="res2net-soak-") as tmp:
        while (args.cycles and cycle < args.cycles) or (not args.cycles and time.monotonic() < deadline):
            cycle += 1
            work = Path(tmp) / f"cycle{cycle}"
            work.mkdir()
            for step, run in _steps(args.model, args.input_size, work):
                if args.only and not any(step.startswith(prefix) for prefix in args.only):
                    continue
                print(json.dumps({"cycle": cycle, "step": step, "started": True}), flush=True)
                if step == args.inject_crash:  # the soak's own test: a native crash must be caught and named
                    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file of an intended crash
                    os.kill(os.getpid(), signal.SIGSEGV)
                start = time.perf_counter()
                try:
                    result = run()
                except Exception as exc:  # recorded, not fatal: the soak looks for crashes of the process
                    result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
                result.update(cycle=cycle, step=step, seconds=round(time.perf_counter() - start, 2))
                print(json.dumps(result), flush=True)


def parent(args: argparse.Namespace) -> int:
    """Run :func:`child` in a process of its own, follow its steps, and write the report."""
    from tqdm import tqdm

    from res2net.hardware import detect
    from res2net.jsonio import write_json

    command = [sys.executable, __file__, "--child", "--model", args.model, "--input-size", str(args.input_size),
               "--minutes", str(args.minutes), "--cycles", str(args.cycles)]
    command += [f"--only={prefix}" for prefix in args.only]
    command += [f"--inject-crash={args.inject_crash}"] if args.inject_crash else []
    start = time.monotonic()
    results: List[Dict[str, Any]] = []
    last_started = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in tqdm(proc.stdout, desc="soak steps", unit="step", disable=args.quiet):
            record = json.loads(line)
            if record.get("started"):
                last_started = record
            else:
                results.append(record)
        code = proc.wait()
    killed = signal.Signals(-code).name if code < 0 else None
    failures = [r for r in results if not r["ok"]]
    report = {
        "cpu": detect().cpu.name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "model": args.model,
        "input_size": args.input_size, "wall_minutes": round((time.monotonic() - start) / 60, 2),
        "cycles": max((r["cycle"] for r in results), default=0), "steps": len(results),
        "steps_per_kind": dict(Counter(r["step"] for r in results)),
        "seconds_per_kind": {k: round(sum(r["seconds"] for r in results if r["step"] == k) / n, 2)
                             for k, n in Counter(r["step"] for r in results).items()},
        "exit": "ok" if code == 0 else (f"killed by {killed}" if killed else f"exit code {code}"),
        "crashed_in": None if code == 0 else last_started, "failures": failures,
        "backends_chosen": sorted({f"{r['step']} -> {r['backend']}" for r in results if "backend" in r}),
    }
    write_json(args.out, report)
    print(f"{report['exit']}: {report['cycles']} cycles, {report['steps']} steps, {len(failures)} failed, "
          f"{report['wall_minutes']} min; {args.out}")
    return 0 if code == 0 and not failures else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="res2net50_26w_4s")
    p.add_argument("--input-size", type=int, default=None, help="default: the model card's")
    p.add_argument("--minutes", type=float, default=30.0, help="how long to soak (ignored with --cycles)")
    p.add_argument("--cycles", type=int, default=0, help="run exactly this many cycles instead")
    p.add_argument("--only", action="append", default=[], metavar="STEP",
                   help="run only the steps whose name starts with STEP (repeatable), e.g. 'optimize openvino'")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"))
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--inject-crash", default=None, metavar="STEP", help="testing the soak itself: the child kills "
                   "itself with SIGSEGV when it starts STEP (a full step name)")
    args = p.parse_args()
    if args.input_size is None:
        from res2net.models import model_card

        args.input_size = int(model_card(args.model, with_complexity=False)["input_size"])
    if args.child:
        child(args)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
