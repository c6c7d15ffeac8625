"""The default's training step per CPU class: fp32 against bf16 autocast, channels_last against NCHW, natively
and under the AVX2 emulation (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2), each class in a process of its
own, the cases of one class interleaved round by round (median ms). Writes benchmarks/results/classes/
train_step.{json,md}. Usage:

    .venv/bin/python benchmarks/train_step_classes.py [--model res2net17_slim] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List

CLASSES = {"native": {}, "avx2 (emulated)": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}
CASES = ("fp32 channels_last", "bf16 channels_last", "fp32 nchw")


def measure(model_name: str, rounds: int, batch: int) -> Dict[str, object]:
    """This process's class: median ms per SGD step of each case (interleaved rounds)."""
    import torch

    import res2net
    from res2net.hardware import detect
    from res2net.allocator import keep_freed_memory

    keep_freed_memory()
    torch.manual_seed(0)
    steps = {}
    for case in CASES:
        cl = "channels_last" in case
        model = res2net.models.build_model(model_name, num_classes=10, in_chans=1)
        fmt = torch.channels_last if cl else torch.contiguous_format
        model = model.to(memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (batch,))
        amp = case.startswith("bf16")

        def step(model=model, opt=opt, x=x, y=y, amp=amp) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[case] = step
    times: Dict[str, List[float]] = {c: [] for c in CASES}
    for step in steps.values():
        for _ in range(3):
            step()
    for _ in range(rounds):
        for case, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[case].append(1e3 * (time.perf_counter() - t0))
    hw = detect()
    return {"cpu": hw.cpu.name, "class": hw.cpu.isa, "emulated": hw.cpu.emulated, "threads": torch.get_num_threads(),
            "ms": {c: statistics.median(t) for c, t in times.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="res2net17_slim")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "classes")
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.rounds, args.batch)))
        return 0
    rows = {}
    for label, env in CLASSES.items():
        out = subprocess.run([sys.executable, __file__, "--child", "--model", args.model, "--rounds",
                              str(args.rounds), "--batch", str(args.batch)], env={**os.environ, **env},
                             capture_output=True, text=True, check=True)
        rows[label] = json.loads(out.stdout.strip().splitlines()[-1])
        print(label, rows[label], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = {"model": args.model, "batch": args.batch, "rounds": args.rounds, "date": stamp, "rows": rows,
              "command": "python benchmarks/train_step_classes.py " + " ".join(sys.argv[1:])}
    (args.out / "train_step.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# Training step per CPU class: {args.model}, batch {args.batch}, 28 px, SGD ({stamp})", "",
             f"Command: `{report['command']}`; CPU: {next(iter(rows.values()))['cpu']}; median of {args.rounds} "
             "interleaved rounds, ms per step.", "",
             "| class | " + " | ".join(CASES) + " | bf16 / fp32 | nchw / channels_last |",
             "|---|" + "---:|" * (len(CASES) + 2)]
    for r in rows.values():
        ms = r["ms"]
        lines.append(f"| {r['class']} ({'emulated' if r['emulated'] else 'native'}) | "
                     + " | ".join(f"{ms[c]:.0f}" for c in CASES)
                     + f" | {ms['bf16 channels_last'] / ms['fp32 channels_last']:.2f}"
                     + f" | {ms['fp32 nchw'] / ms['fp32 channels_last']:.2f} |")
    (args.out / "train_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
