"""bf16 vs fp32 top-1 agreement of res2net.optimize on the real Fashion-MNIST test set (10,000 images).

Trains a small zoo model (default res2net20_cifar, 1 input channel) for a short while with plain torch on the
Fashion-MNIST training set, then classifies the whole test set with the eager model, optimize(fp32) and
optimize(bf16); writes accuracy, agreement and max logit difference as JSON. Usage:

    .venv/bin/python benchmarks/bf16_agreement.py [--model res2net20_cifar] [--steps 150] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

import res2net
from res2net.hardware import bf16_native
from res2net.data.fashion_mnist import find_dir, read_split

MEAN, STD = 0.2860, 0.3530


def _prep(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - MEAN) / STD  # images: (N, 1, 28, 28) uint8


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="res2net20_cifar")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--test-images", type=int, default=10000, help="first N test images (default: all 10,000)")
    p.add_argument("--checkpoint", type=Path, default=None, help="load this state_dict instead of training")
    p.add_argument("--save-checkpoint", type=Path, default=None, help="write the trained state_dict here")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    folder = find_dir(None, download=False)
    train_x, train_y = read_split(folder, "train")
    test_x, test_y = read_split(folder, "test")
    test_x, test_y = test_x[:args.test_images], test_y[:args.test_images]
    model = res2net.create_model(args.model, in_chans=1, num_classes=10)
    t0 = time.time()
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, weights_only=True))
    else:
        model = model.to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps)
        for step in range(args.steps):
            idx = torch.randint(0, len(train_x), (args.batch_size,))
            x = _prep(train_x[idx]).contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(model(x), train_y[idx].long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 25 == 0:
                print(f"step {step} loss {loss.item():.3f}", flush=True)
        if args.save_checkpoint:
            torch.save(model.state_dict(), args.save_checkpoint)
    model.eval()
    train_s = time.time() - t0
    variants = {"eager_fp32": model, "optimized_fp32": res2net.optimize(model),
                "optimized_bf16": res2net.optimize(model, dtype=torch.bfloat16)}
    preds, logits = {}, {}
    with torch.no_grad():
        for key, m in variants.items():
            outs = [m(_prep(test_x[i:i + 500])) for i in range(0, len(test_x), 500)]
            logits[key] = torch.cat(outs)
            preds[key] = logits[key].argmax(1)
    labels = test_y.long()
    report = {
        "model": args.model, "train_steps": args.steps, "batch_size": args.batch_size, "train_seconds": train_s,
        "test_images": len(labels),
        "accuracy": {k: (v == labels).float().mean().item() for k, v in preds.items()},
        "top1_agreement_with_eager_fp32": {k: (v == preds["eager_fp32"]).float().mean().item()
                                           for k, v in preds.items()},
        "max_abs_logit_diff": {k: (v - logits["eager_fp32"]).abs().max().item() for k, v in logits.items()},
        "bf16_native": bf16_native(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bf16_agreement.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
