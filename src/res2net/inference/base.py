"""What :func:`res2net.inference.optimize` returns for every backend and dtype: :class:`OptimizedModel`."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import torch
from torch import Tensor, nn

__all__ = ["OptimizedModel"]

# the precision names optimize() takes and reports, and the torch dtype each computes in (int8: quantized weights
# and activations; input and output stay float32)
TORCH_DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


class OptimizedModel(nn.Module):
    """The one type :func:`~res2net.inference.optimize` returns, on every backend and in every dtype: an eval-only
    module taking a float32 ``(N, C, H, W)`` tensor and returning float32 output (a tensor, or a list for
    ``features_only`` models), computed without autograd. It must not be trained (BatchNorm is folded, or the
    model is an exported graph): train the original.

    Attributes:
        model: what runs: the fused trunk (eager; ``torch.compile``'d for inductor or with ``compile=True``), or
            a :class:`~res2net.inference.backends.RuntimeRunner` (onnxruntime, OpenVINO).
        backend: ``"eager"``, ``"inductor"``, ``"onnxruntime"`` or ``"openvino"``.
        dtype: the torch dtype the model computes in: ``torch.float32``, ``torch.bfloat16`` or ``torch.int8``.
        dtype_name: the same as a name: ``"fp32"``, ``"bf16"`` or ``"int8"``.
        cast_input: whether the input is cast to :attr:`dtype` before :attr:`model` (eager, inductor); the
            runtimes read it as float32 themselves.
        channels_last: whether the input is converted to NHWC before :attr:`model`.
        verification: what the build-time check against eager measured (``{"max_abs_diff": d}``, int8
            ``{"top1_agreement": a}``); None when it was not verified.
        backend_choice: ``backend="auto"`` only: ``{"backend", "cached"}`` (and ``"ms"`` per backend timed);
            None otherwise.
    """

    def __init__(self, model: nn.Module, backend: str, dtype_name: str, cast_input: bool = False,
                 channels_last: bool = False) -> None:
        """Wrap ``model`` (see the class attributes of the same names; ``dtype_name``: "fp32", "bf16", "int8")."""
        super().__init__()
        if dtype_name not in TORCH_DTYPES:
            raise ValueError(f"dtype_name must be one of {', '.join(TORCH_DTYPES)}, got {dtype_name!r}")
        self.model = model
        self.backend = backend
        self.dtype_name = dtype_name
        self.dtype = TORCH_DTYPES[dtype_name]
        self.cast_input = cast_input
        self.channels_last = channels_last
        self.verification: Optional[Dict[str, float]] = None
        self.backend_choice: Optional[Dict[str, Any]] = None

    def forward(self, x: Tensor) -> Union[Tensor, List[Tensor]]:
        with torch.no_grad():
            if self.cast_input:
                fmt = torch.channels_last if self.channels_last and x.dim() == 4 else torch.preserve_format
                x = x.to(dtype=self.dtype, memory_format=fmt)
            out = self.model(x)
        if isinstance(out, Tensor):
            return out.float()
        return [o.float() for o in out]

    def train(self, mode: bool = True) -> "OptimizedModel":
        if mode:
            raise RuntimeError(f"an optimized model ({self.backend}, {self.dtype_name}) is inference-only (BatchNorm "
                               "is folded or the model is an exported graph); train the original")
        return super().train(False)

    def extra_repr(self) -> str:
        return f"backend={self.backend}, dtype={self.dtype_name}"
