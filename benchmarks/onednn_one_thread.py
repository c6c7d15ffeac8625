"""Experiment (not in res2net.optimize): on ONE thread PyTorch's convolution heuristic sends small-batch 1x1
convolutions to its im2col path (``aten::_slow_conv2d_forward``, with NHWC->NCHW copies) instead of oneDNN; the
profile of the eager fast path at batch 4 showed 33 such calls. This A/B times the fast path as is against a
copy whose every Conv2d calls ``torch.mkldnn_convolution`` directly (interleaved rounds, median; outputs
compared). On the loaded machine of 2026-12-02 it read 0.88x (batch 1), 1.10x (batch 4), 1.03x (batch 16):
inconclusive, so nothing was changed; an idle run decides. Usage:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onednn_one_thread.py
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch import nn

import res2net


class _OneDnnConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                        self.groups)


def main() -> int:
    torch.set_num_threads(1)
    model = res2net.create_model("res2net50_26w_4s").eval()
    plain = res2net.optimize(model)
    forced = res2net.optimize(model)
    for m in forced.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = _OneDnnConv2d
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread")
    for batch in (1, 4, 16):
        x = torch.randn(batch, 3, 224, 224)
        diff = float((plain(x) - forced(x)).abs().max())
        times: dict = {"default heuristic": [], "all convs oneDNN": []}
        for _ in range(9):
            for key, m in (("default heuristic", plain), ("all convs oneDNN", forced)):
                t0 = time.perf_counter()
                m(x)
                times[key].append(time.perf_counter() - t0)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(f"batch {batch}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items())
              + f"; speed-up {med['default heuristic'] / med['all convs oneDNN']:.2f}x; max abs diff {diff:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
