"""``res2net env``: what this machine can do and what res2net will use on it, and why (a doctor for bug reports).

Prints the hardware model (:mod:`res2net.hardware`: CPU class, native bf16 and int8, usable cores, GPUs,
runtimes), then the choices it implies for training (device, autocast, threads, DataLoader workers), prediction
(``--backend auto``: the dtype and the backends it times) and export (int8). ``--json`` prints the same as one
JSON object."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any, Dict, List

import torch

from ..hardware import (Hardware, default_amp, default_dtype, default_threads, default_workers, describe, detect,
                        select_device)
from ..inference import available_backends


def plan(hw: Hardware) -> Dict[str, Dict[str, Any]]:
    """The choices :mod:`res2net.hardware` makes here, each with its reason."""
    device = select_device("auto")
    amp, amp_why = default_amp(device, hw)
    dtype, dtype_why = default_dtype(device, hw)
    int8_why = ("int8 dot-product instructions (VNNI/AMX/dotprod): int8 is the fastest CPU precision" if hw.cpu.int8_dot
                else "no int8 dot-product instructions; onnxruntime's int8 kernels still beat fp32 on AVX2 "
                     "(docs/BENCHMARKS.md, CPU classes)")
    return {
        "train": {"device": str(device), "amp": {None: "off (fp32)", torch.bfloat16: "bf16",
                                                  torch.float16: "fp16"}[amp], "amp_why": amp_why,
                  "threads": default_threads(hw), "threads_why": f"usable cores: {hw.cores_why}",
                  "workers_auto": default_workers(hw),
                  "workers_why": "run.workers: null = one per usable core beyond the first (at most 8); the "
                                 "in-memory recipes (fashion_mnist, cifar100) load in the main process (0)"},
        "predict": {"device": "cpu (--device auto: " + str(device) + ")", "dtype_auto": dtype,
                    "dtype_why": dtype_why, "backends_timed_by_auto": available_backends(dtype)},
        "export": {"int8_backends": available_backends("int8"), "int8_why": int8_why,
                   "note": "onnxruntime and OpenVINO choose their own kernels by CPUID: ONEDNN_MAX_CPU_ISA and "
                           "ATEN_CPU_CAPABILITY cap PyTorch only"},
    }


def _plan_lines(p: Dict[str, Dict[str, Any]]) -> List[str]:
    t, pr, ex = p["train"], p["predict"], p["export"]
    return [f"train: device {t['device']}, autocast {t['amp']} ({t['amp_why']}); {t['threads']} threads "
            f"({t['threads_why']}); workers when null: {t['workers_auto']}",
            f"predict --backend auto: dtype {pr['dtype_auto']} ({pr['dtype_why']}); times "
            f"{', '.join(pr['backends_timed_by_auto']) or 'no backend'}",
            f"export --int8: {', '.join(ex['int8_backends']) or 'no runtime installed'} ({ex['int8_why']})",
            f"note: {ex['note']}"]


def _cmd_env(args: argparse.Namespace) -> int:
    hw = detect()
    if args.json:
        report = {"hardware": hw.to_dict(), "plan": plan(hw), "python": sys.version.split()[0],
                  "platform": platform.platform()}
        print(json.dumps(report, indent=1))
        return 0
    for line in describe(hw) + _plan_lines(plan(hw)):
        print(line)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``res2net env``."""
    p = subparsers.add_parser("env", help="what this machine can do and which dtype, backend and threads res2net "
                                          "uses on it (for bug reports: --json)", description=__doc__)
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.set_defaults(func=_cmd_env)
