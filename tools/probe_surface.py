#!/usr/bin/env python
"""Hostile-input probe of the ``res2net`` command line (issue 22, "Show it").

Each case is a data row: an id, the class of issue 22 it belongs to, the files it sets up in a fresh temporary
folder, the command, and what a correct answer is. Every case runs in its own folder with a timeout, and gets an
automatic verdict:

``ok``; ``loss`` (a file that must stay untouched changed or vanished, or a temporary was left behind);
``silent`` (exit 0 where a refusal or a warning was due, or a value that does not mean what was typed);
``unclear`` (exit 2 whose line does not name the problem, more than one line, or a valid command refused);
``traceback`` ("Traceback" on stderr, exit 1 "unexpected", or death by a signal); ``hang`` (the timeout).

argparse's own refusals print a ``usage:`` block before their one ``error:`` line; the block is not counted.

Usage::

    .venv/bin/python tools/probe_surface.py --out /tmp/probe.json [--only ID,ID] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
PYTHON = sys.executable
MODEL = "res2net17_slim"
SMALL = ["--train-subset", "64", "--epochs", "1", "--batch-size", "32", "--workers", "0", "--quiet",
         "--set", "data.test_subset=32"]
CKPT = f"run/{MODEL}/best.pt"
VERDICTS = ("ok", "loss", "silent", "unclear", "traceback", "hang")


@dataclasses.dataclass
class Case:
    """One probe case.

    ``setup``: steps run in the fresh folder, each a tuple: ``("fixture", NAME, DEST)`` (copy a shared fixture),
    ``("write", PATH, TEXT)``, ``("bytes", PATH, N)`` (N random bytes), ``("mkdir", PATH)``,
    ``("symlink", TARGET, LINK)``, ``("hardlink", SRC, DST)``, ``("fifo", PATH)``, ``("truncate", PATH, N)``,
    ``("json", PATH, DOTTED_KEY, VALUE)`` (edit a JSON file), ``("lock", FOLDER)`` (a live process holds the
    run lock of FOLDER while the command runs), ``("torch", PATH, EXPR)`` (``torch.save`` of a Python expression
    evaluated with ``torch`` and ``sd``, the fixture state_dict), ``("bomb", PATH)`` (a PNG of 30000 x 30000).

    ``cmd``: ``["res2net", ...]`` runs the CLI; ``["PY", CODE]`` runs Python code where a ValueError or a
    Res2NetError becomes one stderr line and exit 2, as the CLI does.

    ``expect``: ``"refuse"`` (exit 2, one line with every token of ``tokens``), ``"warn"`` (exit 0 with the tokens
    on stderr, or a refusal), ``"ok"`` (exit 0), ``"either"`` (exit 0, or a refusal naming the tokens),
    ``"signal"`` (exit 130/143 and one line after ``signal_after``).
    """

    id: str
    cls: int
    setup: Sequence[Tuple[Any, ...]]
    cmd: Sequence[str]
    expect: str
    tokens: Sequence[str] = ()
    keep: Sequence[str] = ()  # files that must be byte-identical (and present) afterwards
    forbid: Sequence[str] = ()  # text that must not be on stderr
    check: Optional[Tuple[Any, ...]] = None  # ("config", PT, DOTTED, VALUE) | ("mode", PATH, MODE) | ("stdout", TEXT)
    # | ("exists", PATH) | ("absent", PATH)
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    signal_after: Optional[Tuple[int, float]] = None
    timeout: float = 90.0
    note: str = ""


def R(*args: str) -> List[str]:
    """A ``res2net`` command line."""
    return ["res2net", *args]


def refuse(id: str, cls: int, setup: Sequence[Tuple[Any, ...]], cmd: Sequence[str], *tokens: str,
           **kw: Any) -> Case:
    """A case whose correct answer is exit 2 with one line naming every token."""
    return Case(id, cls, setup, cmd, "refuse", tokens, **kw)


IMG = ("fixture", "img.png", "img.png")
SD = ("fixture", "sd.pth", "sd.pth")  # res2net17_slim: loads, but no other layout holds it (convert refuses it)
BIG = ("fixture", "big.pth", "big.pth")  # res2net50_18w_4s: a model convert knows (layouts official, mmpretrain)
CONVERTIBLE = "res2net50_18w_4s"
RUN = ("fixture", "run", "run")
SEG = ("fixture", "seg", "seg")
MINE = [("mkdir", "mine"), ("write", "mine/notes.txt", "my notes\n")]
PRED = R("predict", "--checkpoint", CKPT)
PY_PRED = (f"from res2net import Predictor; import torch; p = Predictor('{CKPT}', device='cpu'); "
           "print(p.predict([{t}]))")


def py_pred(tensor: str) -> List[str]:
    """Python code that hands ``tensor`` to a Predictor of the fixture run."""
    return ["PY", PY_PRED.replace("{t}", tensor)]


CASES: List[Case] = [
    # ---- 1: data loss ----------------------------------------------------------------------------------------
    refuse("convert-dst-dotdot-src", 1, [SD, ("mkdir", "sub")], R("convert", "sd.pth", "sub/../sd.pth", "--to",
           "timm", "--overwrite"), "sd.pth", keep=["sd.pth"]),
    refuse("convert-dst-hardlink-src", 1, [SD, ("hardlink", "sd.pth", "hl.pth")],
           R("convert", "sd.pth", "hl.pth", "--to", "timm", "--overwrite"), "hl.pth", keep=["sd.pth"]),
    refuse("convert-dst-symlink-src", 1, [SD, ("symlink", "sd.pth", "ln.pth")],
           R("convert", "sd.pth", "ln.pth", "--to", "timm", "--overwrite"), "ln.pth", keep=["sd.pth"]),
    Case("convert-overwrite-symlink-keeps-target", 1, [BIG, ("write", "target.txt", "mine\n"),
         ("symlink", "target.txt", "dst.pth")], R("convert", "big.pth", "dst.pth", "--to", "mmpretrain",
                                                    "--overwrite"),
         "ok", keep=["big.pth", "target.txt"]),
    refuse("export-out-is-checkpoint", 1, [RUN], R("export", "--model", MODEL, "--checkpoint", CKPT, "--format",
           "torchscript", "--out", CKPT, "--overwrite"), "best.pt", keep=[CKPT]),
    refuse("export-openvino-bin-exists", 1, [("write", "m.bin", "user's bin\n")],
           R("export", "--model", MODEL, "--format", "openvino", "--out", "m.xml"), "m.bin", keep=["m.bin"],
           timeout=150),
    refuse("export-out-existing", 1, [("write", "m.pt", "mine\n")],
           R("export", "--model", MODEL, "--format", "torchscript", "--out", "m.pt"), "m.pt", keep=["m.pt"]),
    refuse("predict-json-is-image", 1, [RUN, IMG], PRED + ["img.png", "--json", "img.png", "--overwrite"],
           "img.png", keep=["img.png"]),
    refuse("predict-csv-existing", 1, [RUN, IMG, ("write", "r.csv", "mine\n")], PRED + ["img.png", "--csv",
           "r.csv"], "r.csv", keep=["r.csv"]),
    refuse("predict-csv-is-checkpoint", 1, [RUN, IMG], PRED + ["img.png", "--csv", CKPT, "--overwrite"],
           "best.pt", keep=[CKPT]),
    refuse("eval-out-is-checkpoint", 1, [RUN], R("eval", "--checkpoint", CKPT, "--out", CKPT, "--test-subset",
           "32", "--workers", "0"), "best.pt", keep=[CKPT]),
    refuse("eval-out-existing-user-file", 1, [RUN, ("write", "res.json", "{\"mine\": 1}\n")],
           R("eval", "--checkpoint", CKPT, "--out", "res.json", "--test-subset", "32", "--workers", "0"),
           "res.json", keep=["res.json"]),
    refuse("cam-out-user-folder", 1, [*MINE, IMG], R("cam", "--model", MODEL, "img.png", "--out", "mine"), "mine",
           keep=["mine/notes.txt"]),
    refuse("complexity-out-user-folder", 1, MINE, R("complexity", MODEL, "--repeats", "1", "--warmup", "0",
           "--no-memory", "--input-size", "32", "--out", "mine"), "mine", keep=["mine/notes.txt"]),
    refuse("rf-out-user-folder", 1, MINE, R("receptive-field", "--model", MODEL, "--images", "1", "--out", "mine"),
           "mine", keep=["mine/notes.txt"]),
    refuse("bench-out-user-folder", 1, [("mkdir", "mine"), ("write", "mine/bench.json", "{}\n")],
           R("bench", "--models", MODEL, "--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--no-peers",
             "--no-roofline", "--no-memory", "--out", "mine"), "mine", keep=["mine/bench.json"]),
    refuse("ablation-out-user-folder", 1, MINE, R("ablation", "--budget", "quick", "--variants", "s2", "--seeds",
           "1", "--train-subset", "64", "--test-subset", "32", "--out", "mine"), "mine",
           keep=["mine/notes.txt"]),
    refuse("segment-out-user-folder", 1, MINE, R("segment", "train", "--data", "synthetic", "--model",
           "res2net26_lite", "--steps", "1", "--out", "mine"), "mine", keep=["mine/notes.txt"]),
    refuse("train-out-inside-live-run", 1, [("mkdir", "live"), ("lock", "live")],
           R("train", "--model", MODEL, *SMALL, "--out", "live/sub"), "live"),
    Case("train-umask-002", 1, [], ["sh", "-c", "umask 002 && exec \"$0\" \"$@\"", *R("train", "--model", MODEL,
         *SMALL, "--out", "out")], "ok", check=("mode", f"out/{MODEL}/pretrained/model.safetensors", 0o664),
         timeout=150),
    Case("resume-keeps-user-subfolder", 1, [("fixture", "runcos", "run"), ("mkdir", f"run/{MODEL}/pretrained/extra"),
         ("write", f"run/{MODEL}/pretrained/extra/onnx.txt", "mine\n")],
         R("train", "--model", MODEL, *SMALL[:2], "--epochs", "2", *SMALL[4:], "--set", "sched.name=cosine", "--out",
           "run", "--resume"), "ok",
         keep=[f"run/{MODEL}/pretrained/extra/onnx.txt"], timeout=150),

    # ---- 2: values as typed -------------------------------------------------------------------------------
    Case("set-lr-1e-3-is-float", 2, [], R("train", "--model", MODEL, *SMALL, "--out", "out", "--set",
         "optim.lr=1e-3"), "ok", check=("config", f"out/{MODEL}/last.pt", "optim.lr", 0.001), timeout=150),
    refuse("set-quiet-yes", 2, [], R("train", "--model", MODEL, *SMALL, "--out", "out", "--set", "run.quiet=yes"),
           "run.quiet"),
    refuse("set-epochs-float", 2, [], R("train", "--model", MODEL, *SMALL, "--out", "out", "--set",
           "run.epochs=1.5"), "run.epochs"),
    refuse("set-lr-nan", 2, [], R("train", "--model", MODEL, *SMALL, "--out", "out", "--set", "optim.lr=.nan"),
           "optim.lr"),
    refuse("set-momentum-1.5", 2, [], R("train", "--model", MODEL, *SMALL, "--out", "out", "--set",
           "optim.momentum=1.5"), "optim.momentum"),
    refuse("set-milestones-strings", 2, [], R("train", "--model", MODEL, *SMALL, "--out", "out", "--set",
           "sched.milestones=[a, b]"), "sched.milestones"),
    refuse("set-data-section", 2, [], R("train", "--model", MODEL, *SMALL, "--out", "out", "--set", "data=1"),
           "data"),
    refuse("config-dup-section", 2, [("write", "c.yaml", "run:\n  epochs: 1\nrun:\n  epochs: 2\n")],
           R("train", "--model", MODEL, *SMALL, "--out", "out", "--config", "c.yaml"), "run"),
    refuse("config-underscore-int", 2, [("write", "c.yaml", "run:\n  log_every: 1_000\n")],
           R("train", "--model", MODEL, *SMALL, "--out", "out", "--config", "c.yaml"), "run.log_every"),
    Case("test-subset-too-large", 2, [], R("train", "--model", MODEL, *SMALL[:-1], "data.test_subset=999999",
         "--out", "out"), "warn", ("test_subset",), timeout=150),
    refuse("train-subset-zero", 2, [], R("train", "--model", MODEL, *SMALL, "--out", "out", "--train-subset", "0"),
           "train-subset"),
    refuse("workers-negative", 2, [], R("train", "--model", MODEL, *SMALL, "--out", "out", "--workers", "-1"),
           "workers"),
    refuse("complexity-repeats-zero", 2, [], R("complexity", MODEL, "--repeats", "0", "--input-size", "32"),
           "repeats"),
    refuse("complexity-no-match", 2, [], R("complexity", "zzz_nomodel*"), "zzz_nomodel"),
    refuse("rf-images-zero", 2, [], R("receptive-field", "--model", MODEL, "--images", "0"), "images"),
    refuse("export-calibration-images-zero", 2, [], R("export", "--model", MODEL, "--format", "onnx", "--out",
           "m.onnx", "--int8", "--calibration", "fashion-mnist", "--calibration-images", "0"), "calibration-images"),
    refuse("bench-batch-zero", 2, [], R("bench", "--models", MODEL, "--batch-sizes", "0", "--no-peers",
           "--no-roofline", "--no-memory", "--repeats", "1"), "batch"),
    refuse("bench-dtype-fp64", 2, [], R("bench", "--models", MODEL, "--dtypes", "fp64", "--no-peers",
           "--no-roofline", "--no-memory", "--repeats", "1"), "fp64"),
    refuse("bench-models-empty", 2, [], R("bench", "--models", ",", "--no-peers", "--no-roofline"), "models"),
    refuse("ablation-unknown-variant", 2, [], R("ablation", "--variants", "s9", "--out", "abl"), "s9"),
    refuse("detect-score-thresh-1.5", 2, [], R("detect", "train", "--data", "synthetic", "--model",
           "res2net26_lite", "--set", "model.predict_score_thresh=1.5", "--out", "o"), "predict_score_thresh"),
    Case("predict-topk-over-classes", 2, [RUN, IMG], PRED + ["img.png", "--topk", "50"], "warn", ("topk",)),
    Case("train-seed-negative", 2, [], R("train", "--model", MODEL, *SMALL, "--out", "out", "--seed", "-1"),
         "either", ("seed",), timeout=150),

    # ---- 3: integrity of weights and configs -----------------------------------------------------------
    refuse("convert-truncated", 3, [SD, ("truncate", "sd.pth", 5000)], R("convert", "sd.pth", "o.pth", "--to",
           "timm"), "sd.pth"),
    refuse("convert-format-vs-ext", 3, [SD], R("convert", "sd.pth", "o.pth", "--to", "timm", "--format",
           "safetensors"), "o.pth"),
    refuse("convert-int-tensors", 3, [("torch", "int.pth", "{k: v.to(torch.int64) for k, v in big.items()}")],
           R("convert", "int.pth", "o.pth", "--to", "mmpretrain"), "int.pth"),
    refuse("convert-not-a-state-dict", 3, [("torch", "list.pth", "[1, 2, 3]")],
           R("convert", "list.pth", "o.pth", "--to", "timm"), "list.pth"),
    refuse("eval-empty-checkpoint", 3, [("write", "e.pt", "")], R("eval", "--checkpoint", "e.pt"), "e.pt"),
    refuse("predict-nan-weights", 3, [SD, IMG, ("torch", "nan.pth",
           "{k: v.float().fill_(float('nan')) if v.is_floating_point() else v for k, v in sd.items()}")],
           R("predict", "--pretrained", "nan.pth", "--model", MODEL, "img.png"), "nan.pth"),
    refuse("hf-config-mean-2-values", 3, [RUN, IMG, ("json", f"run/{MODEL}/pretrained/config.json",
           "pretrained_cfg.mean", [0.5, 0.5])], R("predict", "--pretrained", f"run/{MODEL}/pretrained", "img.png"),
           "config.json"),
    refuse("hf-config-not-json", 3, [RUN, IMG, ("write", f"run/{MODEL}/pretrained/config.json", "{oops")],
           R("predict", "--pretrained", f"run/{MODEL}/pretrained", "img.png"), "config.json"),
    refuse("hf-config-num-classes-mismatch", 3, [RUN, IMG, ("json", f"run/{MODEL}/pretrained/config.json",
           "num_classes", 7)], R("predict", "--pretrained", f"run/{MODEL}/pretrained", "img.png"), "num_classes"),
    refuse("cached-official-truncated", 3, [IMG, ("mkdir", "cache/official"),
           ("bytes", "cache/official/res2net50_26w_4s-06e79181.pth", 1000)],
           R("predict", "--pretrained", "official", "--model", "res2net50_26w_4s", "img.png"), "res2net50_26w_4s",
           env={"RES2NET_CACHE": "cache", "HF_HUB_OFFLINE": "1"}, timeout=60),
    refuse("export-wrong-arch-checkpoint", 3, [("torch", "other.pth",
           "__import__('res2net').create_model('resnet17_slim').state_dict()")],
           R("export", "--model", MODEL, "--checkpoint", "other.pth", "--format", "torchscript", "--out", "m.pt"),
           "other.pth"),

    # ---- 4: devices ---------------------------------------------------------------------------------------
    refuse("eval-cuda", 4, [RUN], R("eval", "--checkpoint", CKPT, "--device", "cuda"), "device"),
    refuse("complexity-cuda", 4, [], R("complexity", MODEL, "--device", "cuda", "--input-size", "32"), "device"),
    refuse("bench-cuda", 4, [], R("bench", "--models", MODEL, "--device", "cuda", "--no-peers", "--no-roofline",
           "--repeats", "1"), "device"),
    refuse("ablation-cuda", 4, [], R("ablation", "--variants", "s2", "--device", "cuda", "--out", "abl"), "device"),
    refuse("segment-train-cuda", 4, [], R("segment", "train", "--data", "synthetic", "--model", "res2net26_lite",
           "--device", "cuda", "--out", "o"), "device"),
    refuse("predict-cuda-1", 4, [RUN, IMG], PRED + ["img.png", "--device", "cuda:1"], "device"),
    refuse("train-device-tpu", 4, [], R("train", "--model", MODEL, *SMALL, "--out", "out", "--device", "tpu"),
           "device"),
    refuse("predict-backend-cuda", 4, [RUN, IMG], PRED + ["img.png", "--backend", "eager", "--device", "cuda"],
           "device"),

    # ---- 5: prediction inputs (a tensor breaking the convention: skipped, named, warned about) ---------
    Case("tensor-4-channels", 5, [RUN], py_pred("torch.rand(4, 28, 28)"), "warn", ("channel",)),
    Case("tensor-0-255-float", 5, [RUN], py_pred("torch.rand(1, 28, 28) * 255"), "warn", ("[0, 1]",)),
    Case("tensor-bool", 5, [RUN], py_pred("torch.ones(1, 28, 28, dtype=torch.bool)"), "warn", ("bool",)),
    Case("tensor-neg-inf", 5, [RUN], py_pred("torch.full((1, 28, 28), float('-inf'))"), "warn", ("infinite",)),
    Case("tensor-empty-width", 5, [RUN], py_pred("torch.rand(1, 28, 0)"), "warn", ("empty",)),
    Case("tensor-batched-4d", 5, [RUN], py_pred("torch.rand(1, 1, 28, 28)"), "warn", ("shape",)),
    Case("predict-fifo", 5, [RUN, IMG, ("mkdir", "d"), ("fifo", "d/pipe.png"), ("fixture", "img.png", "d/a.png")],
         PRED + ["d"], "warn", ("pipe.png",), timeout=60),
    Case("predict-self-loop-symlink", 5, [RUN, ("mkdir", "d"), ("fixture", "img.png", "d/a.png"),
         ("symlink", ".", "d/loop"), ("symlink", "loop.png", "d/loop.png")], PRED + ["d"], "warn", ("loop.png",),
         timeout=60),
    Case("predict-bomb-png", 5, [RUN, ("mkdir", "d"), ("fixture", "img.png", "d/a.png"), ("bomb", "d/big.png")],
         PRED + ["d"], "warn", ("big.png",), timeout=60),
    Case("predict-text-as-png", 5, [RUN, ("mkdir", "d"), ("fixture", "img.png", "d/a.png"),
         ("write", "d/notes.png", "not an image\n")], PRED + ["d"], "warn", ("notes.png",)),
    refuse("predict-only-bad-file", 5, [RUN, ("write", "x.jpg", "nope")], PRED + ["x.jpg"], "x.jpg"),
    Case("predict-16bit-png", 5, [RUN, ("fixture", "img16.png", "img16.png")], PRED + ["img16.png"], "ok"),
    Case("predict-live-run", 5, [RUN, IMG, ("lock", "run")], PRED + ["img.png"], "warn", ("still training",)),
    refuse("predict-glob-no-match", 5, [RUN], PRED + ["nothing*.jpg"], "nothing*.jpg"),
    Case("predict-empty-list-api", 5, [RUN], ["PY", f"from res2net import Predictor; "
         f"print(Predictor('{CKPT}', device='cpu').predict([]))"], "ok", check=("stdout", "[]")),

    # ---- 6: errors naming the problem ---------------------------------------------------------------------
    refuse("export-seg-checkpoint", 6, [SEG], R("export", "--model", "res2net26_lite", "--checkpoint",
           "seg/best.pt", "--format", "torchscript", "--out", "m.pt"), "segmentation"),
    refuse("cam-seg-checkpoint", 6, [SEG, IMG], R("cam", "--model", "res2net26_lite", "--checkpoint",
           "seg/best.pt", "img.png", "--out", "c"), "segmentation"),
    refuse("detect-eval-classifier-ckpt", 6, [RUN], R("detect", "eval", "--checkpoint", CKPT, "--data",
           "synthetic", "--out", "o"), "classification"),
    refuse("export-parent-is-file", 6, [("write", "afile", "x\n")], R("export", "--model", MODEL, "--format",
           "torchscript", "--out", "afile/m.pt"), "afile", keep=["afile"]),
    refuse("convert-name-too-long", 6, [BIG], R("convert", "big.pth", "x" * 250 + ".pth", "--to", "mmpretrain"),
           "xxxxx",
           forbid=(".tmp",)),
    refuse("config-is-folder", 6, [("mkdir", "conf.d")], R("train", "--model", MODEL, *SMALL, "--out", "out",
           "--config", "conf.d"), "conf.d", forbid=("does not exist",)),
    refuse("info-unknown", 6, [], R("info", "res2net17_slimm"), "res2net17_slimm"),
    refuse("weights-download-unknown", 6, [], R("weights", "download", "nosuchnet"), "nosuchnet"),
    refuse("weights-cache-dir-is-file", 6, [("write", "c", "x\n")], R("weights", "--cache-dir", "c"), "c",
           keep=["c"]),
    refuse("eval-checkpoint-folder", 6, [("mkdir", "ck")], R("eval", "--checkpoint", "ck"), "ck"),
    refuse("hf-hub-offline", 6, [IMG], R("predict", "--pretrained", "hf-hub:nobody/nothing", "img.png"),
           "nobody/nothing", env={"HF_HUB_OFFLINE": "1"}, timeout=60),
    refuse("segment-slim-model-stride", 6, [], R("segment", "train", "--data", "synthetic", "--model",
           "res2net20_cifar", "--steps", "1", "--out", "o"), "res2net20_cifar"),
    refuse("cam-bad-layer", 6, [IMG], R("cam", "--model", MODEL, "--layer", "nosuch", "img.png", "--out", "c"),
           "nosuch"),
    Case("export-sigterm", 6, [], R("export", "--model", "res2net50_26w_4s", "--format", "onnx", "--out",
         "m.onnx"), "signal", signal_after=(signal.SIGTERM, 10.0), timeout=150,
         note="a signal after the work ends meets Python's finalization (SIG_DFL): the command must still be busy"),
    Case("convert-sigint", 6, [BIG], R("convert", "big.pth", "o.safetensors", "--to", "mmpretrain"), "signal",
         signal_after=(signal.SIGINT, 5.0), keep=["big.pth"]),

    # ---- 7: contradicting flags ---------------------------------------------------------------------------
    refuse("train-epochs-vs-set", 7, [], R("train", "--model", MODEL, *SMALL, "--out", "out", "--set",
           "run.epochs=3"), "epochs"),
    refuse("eval-test-subset-vs-set", 7, [RUN], R("eval", "--checkpoint", CKPT, "--test-subset", "16", "--set",
           "data.test_subset=32"), "test"),
    refuse("predict-dtype-without-backend", 7, [RUN, IMG], PRED + ["img.png", "--dtype", "bf16"], "dtype"),
    refuse("export-int8-torchscript", 7, [], R("export", "--model", MODEL, "--format", "torchscript", "--int8",
           "--out", "m.pt"), "int8"),
    refuse("export-calibration-without-int8", 7, [("mkdir", "cal")], R("export", "--model", MODEL, "--format",
           "onnx", "--calibration", "cal", "--out", "m.onnx"), "calibration"),
    refuse("export-opset-torchscript", 7, [], R("export", "--model", MODEL, "--format", "torchscript",
           "--opset", "17", "--out", "m.pt"), "opset"),
    refuse("export-exporter-torchscript-format", 7, [], R("export", "--model", MODEL, "--format", "torchscript",
           "--exporter", "dynamo", "--out", "m.pt"), "exporter"),
    refuse("detect-frozen-vs-trainable", 7, [], R("detect", "train", "--data", "synthetic", "--model",
           "res2net26_lite", "--frozen-stages", "2", "--trainable-layers", "3", "--out", "o"), "trainable"),
    refuse("cam-compare-ckpt-without-compare", 7, [SD, IMG], R("cam", "--model", MODEL, "--compare-checkpoint",
           "sd.pth", "img.png", "--out", "c"), "compare"),
    refuse("linear-probe-without-pretrained", 7, [], R("train", "--model", MODEL, *SMALL, "--out", "out",
           "--linear-probe"), "pretrained"),
    refuse("bench-train-only-runtimes", 7, [], R("bench", "--models", MODEL, "--train-only", "--runtimes",
           "onnxruntime", "--no-peers", "--no-roofline", "--repeats", "1"), "runtimes"),
    refuse("predict-json-equals-csv-spelled", 7, [RUN, IMG], PRED + ["img.png", "--json", "r.out", "--csv",
           "./r.out"], "r.out"),

    # ---- 8: tracebacks --------------------------------------------------------------------------------------
    Case("info-input-size-1", 8, [], R("info", MODEL, "--input-size", "1"), "either", ("input",)),
    Case("complexity-input-size-3", 8, [], R("complexity", MODEL, "--input-size", "3", "--repeats", "1",
         "--warmup", "0", "--no-memory"), "either", ("input",)),
    Case("export-input-size-8", 8, [], R("export", "--model", MODEL, "--format", "torchscript", "--input-size",
         "8", "--out", "m.pt"), "either", ("input",)),
    Case("export-num-classes-0", 8, [], R("export", "--model", MODEL, "--format", "torchscript", "--num-classes",
         "0", "--out", "m.pt"), "either", ("num-classes",)),
    refuse("cam-target-out-of-range", 8, [IMG], R("cam", "--model", MODEL, "--target", "5000", "img.png", "--out",
           "c"), "5000"),
    refuse("cam-text-image", 8, [("write", "x.png", "text")], R("cam", "--model", MODEL, "x.png", "--out", "c"),
           "x.png"),
    Case("rf-input-size-16", 8, [], R("receptive-field", "--model", MODEL, "--input-size", "16", "--images", "1",
         "--out", "rf"), "either", ("input",), timeout=150),
    refuse("convert-from-wrong", 8, [SD], R("convert", "sd.pth", "o.pth", "--to", "mmdet", "--from",
           "detectron2", "--model", MODEL), "detectron2"),
    Case("weights-bad-glob", 8, [], R("weights", "res2net[", "--cache-dir", "cache"), "either", ("res2net[",)),
    refuse("segment-predict-missing-input", 8, [SEG], R("segment", "predict", "--checkpoint", "seg/best.pt",
           "--input", "missing.png", "--out", "o"), "missing.png"),
    refuse("saliency-eval-missing-ckpt", 8, [], R("saliency", "eval", "--checkpoint", "nope.pt", "--data",
           "synthetic", "--out", "o"), "nope.pt"),
    Case("env-json-bad-cache", 8, [("write", "c", "x\n")], R("env", "--json"), "ok", env={"RES2NET_CACHE": "c"}),
    refuse("models-no-match", 8, [], R("models", "zzz*"), "zzz*"),
    refuse("train-model-unknown", 8, [], R("train", "--model", "res2net17_slimm", *SMALL, "--out", "out"),
           "res2net17_slimm"),
]


# ------------------------------------------------------------------------------------------------ fixtures

def build_fixtures(folder: Path) -> None:
    """The shared inputs the cases copy: a trained run, a state_dict, images, a segmentation run."""
    import numpy as np
    import torch
    from PIL import Image

    sys.path.insert(0, str(SRC))
    import res2net

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(folder / "img.png")
    Image.fromarray(rng.integers(0, 65535, (40, 36), dtype=np.uint16)).save(folder / "img16.png")
    for name, model in (("sd.pth", MODEL), ("big.pth", CONVERTIBLE)):
        if not (folder / name).exists():
            torch.save(res2net.create_model(model).state_dict(), folder / name)
    for name, args in (("run", ["train", "--model", MODEL, *SMALL, "--out", "run"]),
                       # onecycle cannot be resumed for more epochs (found by this probe), cosine can
                       ("runcos", ["train", "--model", MODEL, *SMALL, "--set", "sched.name=cosine", "--out", "runcos"]),
                       ("seg", ["segment", "train", "--data", "synthetic", "--model", "res2net26_lite", "--steps",
                                "1", "--input-size", "64", "--batch-size", "2", "--epochs", "1", "--workers", "0",
                                "--quiet", "--out", "seg"])):
        if not (folder / name).exists():
            subprocess.run([PYTHON, "-m", "res2net.cli", *args], cwd=folder, env=_env({}), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)


def _env(extra: Dict[str, str]) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RES2NET_")}
    env.update(PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1", **extra)
    return env


def _set_json(path: Path, dotted: str, value: Any) -> None:
    data = json.loads(path.read_text())
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(json.dumps(data))


def _lock_holder(folder: Path) -> subprocess.Popen:
    """A process holding ``folder``'s run lock (as a run still training does) until it is killed."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); "
            "time.sleep(600)")
    proc = subprocess.Popen([PYTHON, "-c", code, str(folder / ".res2net.lock")], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
    return proc


def run_setup(case: Case, work: Path, fixtures: Path) -> List[subprocess.Popen]:
    """Run ``case.setup`` in ``work``; returns the helper processes to stop afterwards."""
    helpers: List[subprocess.Popen] = []
    for step in case.setup:
        kind, path = step[0], work / step[1] if len(step) > 1 else None
        if kind == "fixture":
            src, dest = fixtures / step[1], work / step[2]
            dest.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest)
        elif kind == "write":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(step[2])
        elif kind == "bytes":
            path.write_bytes(os.urandom(step[2]))
        elif kind == "mkdir":
            path.mkdir(parents=True, exist_ok=True)
        elif kind == "symlink":
            os.symlink(step[1], work / step[2])
        elif kind == "hardlink":
            os.link(path, work / step[2])
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "truncate":
            os.truncate(path, step[2])
        elif kind == "json":
            _set_json(path, step[2], step[3])
        elif kind == "lock":
            helpers.append(_lock_holder(path))
        elif kind == "torch":
            code = (f"import torch, sys; sys.path.insert(0, {str(SRC)!r}); "
                    f"sd = torch.load({str(fixtures / 'sd.pth')!r}); "
                    f"big = torch.load({str(fixtures / 'big.pth')!r}) if 'big' in {step[2]!r} else None; "
                    f"torch.save({step[2]}, {str(path)!r})")
            subprocess.run([PYTHON, "-c", code], check=True, env=_env({}))
        elif kind == "bomb":
            from PIL import Image

            Image.new("1", (30000, 30000)).save(path)
        else:
            raise ValueError(f"{case.id}: unknown setup step {kind!r}")
    return helpers


# ------------------------------------------------------------------------------------------------ running

PY_WRAP = ("import sys\nsys.path.insert(0, {src!r})\nfrom res2net.errors import Res2NetError\ntry:\n"
           "    exec({code!r})\n"
           "except (ValueError, Res2NetError) as exc:\n    print(f'error: {{exc}}', file=sys.stderr)\n"
           "    sys.exit(2)\n")


def command_line(case: Case) -> List[str]:
    """The argv of ``case``: ``res2net`` becomes ``python -m res2net.cli``, ``PY`` a wrapped snippet."""
    cmd = list(case.cmd)
    if cmd[0] == "PY":
        return [PYTHON, "-c", PY_WRAP.format(src=str(SRC), code=cmd[1])]
    i = cmd.index("res2net")
    return cmd[:i] + [PYTHON, "-m", "res2net.cli"] + cmd[i + 1:]


def _digest(path: Path) -> Optional[str]:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _error_lines(stderr: str) -> List[str]:
    """stderr's lines without argparse's usage block and blank lines."""
    lines, in_usage = [], False
    for line in stderr.splitlines():
        if line.startswith("usage:"):
            in_usage = True
            continue
        if in_usage and (line.startswith(" ") or not line.strip()):
            continue
        in_usage = False
        if line.strip():
            lines.append(line)
    return lines


def _leftovers(work: Path) -> List[str]:
    """Temporaries a write left behind (``.NAME.xxxx.tmp*``, ``.NAME.old<pid>``)."""
    return [str(p.relative_to(work)) for p in work.rglob(".*") if ".tmp" in p.name or ".old" in p.name]


def _check(case: Case, work: Path, stdout: str) -> Optional[str]:
    """Why exit 0 was a wrong result (``case.check``), or None."""
    if case.check is None:
        return None
    kind = case.check[0]
    if kind == "config":
        import torch

        path, dotted, want = work / case.check[1], case.check[2], case.check[3]
        node: Any = torch.load(path, map_location="cpu", weights_only=False)["config"]
        for part in dotted.split("."):
            node = node[part]
        return None if node == want and type(node) is type(want) else f"{dotted} = {node!r}, typed {want!r}"
    if kind == "mode":
        mode = (work / case.check[1]).stat().st_mode & 0o777
        return None if mode == case.check[2] else f"mode {oct(mode)}, want {oct(case.check[2])}"
    if kind == "stdout":
        return None if case.check[1] in stdout else f"stdout lacks {case.check[1]!r}"
    raise ValueError(f"{case.id}: unknown check {kind!r}")


def verdict(case: Case, rc: Optional[int], stdout: str, stderr: str, work: Path,
            before: Dict[str, Optional[str]]) -> Tuple[str, str]:
    """The verdict and a one-line reason."""
    last = (_error_lines(stderr) or [""])[-1][:160]
    if rc is None:
        return "hang", f"no exit in {case.timeout:.0f} s"
    if "Traceback" in stderr or (rc == 1 and "unexpected" in stderr) or rc < 0 or rc in (134, 139):
        return "traceback", f"rc {rc}: {last}"
    changed = [p for p, d in before.items() if _digest(work / p) != d]
    left = _leftovers(work)
    if changed or left:
        return "loss", f"changed {changed} left {left} (rc {rc})"
    lines = _error_lines(stderr)
    if case.expect == "signal":
        good = rc in (130, 143) and len(lines) == 1
        return ("ok" if good else "unclear"), f"rc {rc}: {last}"

    def refusal() -> Tuple[str, str]:
        if rc != 2:
            return "unclear", f"rc {rc}: {last}"
        if len(lines) != 1:
            return "unclear", f"{len(lines)} lines: {' | '.join(lines)[:200]}"
        missing = [t for t in case.tokens if t.lower() not in lines[0].lower()]
        bad = [t for t in case.forbid if t in lines[0]]
        if missing or bad:
            return "unclear", f"lacks {missing} has {bad}: {lines[0][:160]}"
        return "ok", lines[0][:160]

    if case.expect == "refuse":
        return refusal() if rc != 0 else ("silent", "exit 0: " + (last or "no message"))
    if rc == 0:
        if case.expect == "warn" and not all(t.lower() in stderr.lower() for t in case.tokens):
            return "silent", f"exit 0 without {list(case.tokens)}"
        why = _check(case, work, stdout)
        return ("silent", why) if why else ("ok", "exit 0" + (f": {last}" if case.expect == "warn" else ""))
    if case.expect == "ok":
        return "unclear", f"a valid command failed, rc {rc}: {last}"
    return refusal()


def run_case(case: Case, fixtures: Path, keep: bool) -> Dict[str, Any]:
    """Run one case in a fresh folder; the record of its verdict."""
    work = Path(tempfile.mkdtemp(prefix=f"probe-{case.id}-"))
    helpers = run_setup(case, work, fixtures)
    before = {p: _digest(work / p) for p in case.keep}
    start = time.monotonic()
    proc = subprocess.Popen(command_line(case), cwd=work, env=_env(case.env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        if case.signal_after:
            try:
                proc.wait(case.signal_after[1])
            except subprocess.TimeoutExpired:
                proc.send_signal(case.signal_after[0])
        stdout, stderr = proc.communicate(timeout=case.timeout)
        rc: Optional[int] = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        rc = None
    finally:
        for h in helpers:
            h.kill()
            h.wait()
    seconds = time.monotonic() - start
    name, why = verdict(case, rc, stdout, stderr, work, before)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return {"id": case.id, "class": case.cls, "verdict": name, "why": why, "rc": rc, "seconds": round(seconds, 1),
            "command": " ".join(case.cmd) if case.cmd[0] != "PY" else case.cmd[1], "expect": case.expect,
            "tokens": list(case.tokens), "stderr_tail": stderr[-600:], "stdout_tail": stdout[-300:], "folder": str(work) if keep else None}


def table(records: Sequence[Dict[str, Any]]) -> str:
    """The Markdown table of the records and the counts."""
    rows = ["| id | class | verdict | s | why |", "|---|---|---|---|---|"]
    for r in records:
        why = r["why"].replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {r['id']} | {r['class']} | {r['verdict']} | {r['seconds']} | {why} |")
    return "\n".join(rows) + "\n\n" + counts_line(records)


def counts_line(records: Sequence[Dict[str, Any]]) -> str:
    """``N cases: a ok, b loss, ...``."""
    counts = {v: sum(r["verdict"] == v for r in records) for v in VERDICTS}
    return f"{len(records)} cases: " + ", ".join(f"{n} {v}" for v, n in counts.items())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the probe; print the table and the counts, write ``--out``."""
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON file of the records")
    parser.add_argument("--only", help="comma-separated case ids (or class numbers)")
    parser.add_argument("--fixtures", type=Path, default=Path(tempfile.gettempdir()) / "res2net-probe-fixtures",
                        help="folder of the shared fixtures (built when missing)")
    parser.add_argument("--keep", action="store_true", help="keep each case's folder")
    args = parser.parse_args(argv)
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    chosen = CASES
    if args.only:
        wanted = set(args.only.split(","))
        chosen = [c for c in CASES if c.id in wanted or str(c.cls) in wanted]
    build_fixtures(args.fixtures)
    records = [run_case(c, args.fixtures, args.keep) for c in tqdm(chosen, desc="probe", unit="case")]
    print(table(records))
    if args.out:
        args.out.write_text(json.dumps({"counts": counts_line(records), "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
