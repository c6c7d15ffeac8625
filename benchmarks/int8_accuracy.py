"""int8 against fp32 top-1 on the full Fashion-MNIST test set (10,000 images) with trained checkpoints.

Each checkpoint is quantized post-training (static, calibrated on a seeded random sample of the TRAINING split,
so the test images are never seen) by onnxruntime's ``quantize_static`` (QDQ, per-channel) and run by each int8
backend of ``res2net.optimize`` (onnxruntime and OpenVINO run the same quantized file). Usage (the default run's
checkpoints):

    .venv/bin/res2net train --out /work/runs/default          # once: res2net17_slim and resnet17_slim
    .venv/bin/python benchmarks/int8_accuracy.py --runs /work/runs/default --out benchmarks/results/int8

writes ``int8_accuracy.json`` and ``int8_accuracy.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
from tqdm import tqdm

from res2net.data import load_fashion_mnist, normalize, resize_batch
from res2net.export import model_for_export
from res2net.data.calibration import calibration_batches
from res2net.inference import available_backends, build_backend


def evaluate(model: Any, images: torch.Tensor, labels: torch.Tensor, mean: Any, std: Any, size: int,
             batch_size: int, desc: str) -> torch.Tensor:
    """Top-1 predictions over the whole set."""
    preds = []
    with torch.no_grad():
        for i in tqdm(range(0, images.shape[0], batch_size), desc=desc, leave=False):
            x = normalize(resize_batch(images[i:i + batch_size].float() / 255.0, size), mean, std)
            preds.append(model(x).argmax(1))
    return torch.cat(preds)


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("/work/runs/default"), help="folder with <model>/best.pt")
    p.add_argument("--models", default="res2net17_slim,resnet17_slim")
    p.add_argument("--backends", default="onnxruntime,openvino")
    p.add_argument("--calibration-images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--limit", type=int, default=None, help="first N test images only (smoke runs)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "int8")
    args = p.parse_args(argv)
    test = load_fashion_mnist(download=False)["test"]
    images, labels = test.images, test.labels
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    rows: List[Dict[str, Any]] = []
    for name in [m for m in args.models.split(",") if m]:
        ckpt = args.runs / name / "best.pt"
        model, size, mean, std = model_for_export(name, str(ckpt))
        in_chans = int(next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels)
        calib = calibration_batches("fashion-mnist", size, mean, std, in_chans, args.calibration_images)
        ref = evaluate(model, images, labels, mean, std, size, args.batch_size, f"{name} fp32")
        fp32_acc = float((ref == labels).float().mean())
        rows.append(dict(model=name, checkpoint=str(ckpt), backend="eager", dtype="fp32", top1=fp32_acc,
                         agreement=1.0, delta_points=0.0, build_s=0.0))
        print(f"{name}: eager fp32 top-1 {100 * fp32_acc:.2f}%", flush=True)
        for backend in [b for b in args.backends.split(",") if b]:
            if backend not in available_backends("int8"):
                print(f"{name}: {backend} int8 skipped: not installed (pip install 'res2net[deploy]')")
                continue
            t0 = time.perf_counter()
            q = build_backend(model, backend, "int8", calibration=calib, input_size=size,
                              preprocessing=(mean, std))
            built = time.perf_counter() - t0
            pred = evaluate(q, images, labels, mean, std, size, args.batch_size, f"{name} {backend} int8")
            acc = float((pred == labels).float().mean())
            rows.append(dict(model=name, checkpoint=str(ckpt), backend=backend, dtype="int8", top1=acc,
                             agreement=float((pred == ref).float().mean()), delta_points=100 * (acc - fp32_acc),
                             build_s=built))
            print(f"{name}: {backend} int8 top-1 {100 * acc:.2f}% ({100 * (acc - fp32_acc):+.2f} points), "
                  f"agreement with fp32 {100 * rows[-1]['agreement']:.2f}%", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"command": "benchmarks/int8_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "test_images": int(images.shape[0]), "calibration_images": args.calibration_images,
              "threads": torch.get_num_threads(), "rows": rows}
    (args.out / "int8_accuracy.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    lines = [f"Fashion-MNIST test set ({images.shape[0]} images), int8 calibrated on {args.calibration_images} "
             "training images", "", "| model | backend | dtype | top-1 | vs fp32 (points) | top-1 agreement |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['backend']} | {r['dtype']} | {100 * r['top1']:.2f}% | {r['delta_points']:+.2f} | "
              f"{100 * r['agreement']:.2f}% |" for r in rows]
    (args.out / "int8_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
