"""``res2net bench`` (parsing in :mod:`res2net.commands.bench`): our models (as created and after :func:`res2net.optimize`, on each backend: eager,
torch.compile with freezing, onnxruntime, OpenVINO; fp32, bf16 and int8) against timm's same model with the
same weights and torchvision's resnet50, in ONE process, interleaved round by round, with a roofline measured in
the same rounds: dense 3x3 convolutions at the network's own stage shapes (:mod:`res2net.bench.roofline`); the
old large-matmul probe is kept as a column.

Only ratios within one run mean anything on shared machines; absolute times drift with the load.
"""

from .cases import BenchConfig, Result
from .report import derive, format_markdown, machine_info, run_bench, write_report

__all__ = ["BenchConfig", "Result", "derive", "format_markdown", "machine_info", "run_bench", "write_report"]
