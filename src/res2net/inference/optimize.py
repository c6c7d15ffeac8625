"""The inference fast path: :func:`optimize` turns any zoo model into an eval-only module computing the same
function faster, on the chosen backend: the fused eager PyTorch path (:mod:`res2net.inference.fused`: BN
folded, the stage block as one grouped convolution, channels_last, bf16), ``torch.compile``, onnxruntime or
OpenVINO, in fp32, bf16 or int8 (:mod:`res2net.inference.backends`), or the fastest of them measured here
(``backend="auto"``, :mod:`res2net.inference.autotune`). Every backend returns one type,
:class:`~res2net.inference.base.OptimizedModel`, which says its ``backend`` and ``dtype``."""

from __future__ import annotations

from typing import Any, Iterable, Optional, Union

import torch
from torch import nn

from ..errors import ConfigError
from ..hardware import default_dtype
from .autotune import choose_backend
from .backends import AUTO, BACKENDS, build_backend, dtype_name
from .base import OptimizedModel
from .fused import fuse

__all__ = ["optimize"]


def optimize(model: nn.Module, dtype: Union[torch.dtype, str] = torch.float32, backend: str = "eager",
             calibration: Optional[Iterable[Any]] = None, compile: bool = False, channels_last: bool = True,
             input_size: Optional[int] = None, verify: Optional[bool] = None) -> OptimizedModel:
    """An eval-only version of ``model`` that computes the same function faster, on the chosen backend.

    Args:
        model: any zoo model (ResNet or DLA trunk, SE, v1b, CIFAR, ``features_only``); it is not modified.
        dtype: ``torch.float32`` (output within 1e-4 of the original), ``torch.bfloat16`` (weights and
            activations in bf16; warns where the device has no native bf16, :func:`res2net.hardware.check_dtype`),
            ``"int8"`` (post-training static quantization calibrated on ``calibration``; onnxruntime or OpenVINO)
            or ``"auto"`` (bf16 where the model's device runs it natively, else fp32:
            :func:`res2net.hardware.default_dtype`).
        backend: ``"eager"`` (default: the fused PyTorch path, :mod:`res2net.inference.fused`), ``"inductor"``
            (the fused path under ``torch.compile`` with freezing), ``"onnxruntime"``, ``"openvino"`` (the
            exported ONNX graph in that runtime), or ``"auto"`` (the fastest installed backend for this model,
            input shape and dtype, timed briefly at build time and cached). Details:
            :mod:`res2net.inference.backends`.
        calibration: an iterable of input batches (or (input, label) pairs) of real images; needed for int8.
        compile: eager backend only: wrap the fused trunk in ``torch.compile``.
        channels_last: eager backend only: NHWC memory format for weights and input.
        input_size: the input side the runtime backends are built for (default: the calibration's, else the
            model card's).
        verify: check the result against eager on a real photo (int8: top-1 agreement on the calibration
            images) at build time; default True for every backend but eager.

    Returns:
        an eval-only :class:`~res2net.inference.base.OptimizedModel` on every backend: its ``backend``
        (``"eager"``, ``"inductor"``, ``"onnxruntime"``, ``"openvino"``; the chosen one for ``"auto"``) and
        ``dtype`` (``torch.float32``, ``torch.bfloat16``, ``torch.int8``; as a name: ``dtype_name``) say what
        runs.

    Every backend returns float32 output (a tensor, or a list for ``features_only``). A backend whose package is
    missing raises :class:`res2net.inference.BackendNotInstalled` naming ``pip install 'res2net[deploy]'``.

    >>> import res2net
    >>> m = res2net.create_model("res2net20_cifar").eval()
    >>> x = torch.randn(2, 3, 32, 32)
    >>> bool((optimize(m)(x) - m(x)).abs().max() < 1e-4)
    True
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be a bool, got {compile!r}")
    if isinstance(model, OptimizedModel):
        raise ConfigError("model is already optimized; pass the original model to optimize()")
    if isinstance(dtype, str) and dtype == AUTO:
        param = next(model.parameters(), None)
        dtype = default_dtype(param.device if param is not None else "cpu")[0]
    name = dtype_name(dtype)
    if backend not in BACKENDS + (AUTO,):
        raise ValueError(f"backend must be one of {', '.join(BACKENDS + (AUTO,))}, got {backend!r}")
    if backend != "eager" and (compile or not channels_last):
        raise ConfigError(f"compile/channels_last apply to backend='eager' only, not {backend!r} "
                          "(backend='inductor' is the compiled fused path)")
    if backend == "eager" and not verify:
        if name == "int8":
            raise ConfigError("dtype 'int8' runs on backend='onnxruntime', 'openvino' or 'auto', not 'eager'")
        return fuse(model, torch.float32 if name == "fp32" else torch.bfloat16, compile, channels_last)
    if backend == AUTO:
        return choose_backend(model, name, calibration, input_size, verify=verify is not False)
    return build_backend(model, backend, name, calibration, input_size, verify=verify is not False,
                         compile=compile, channels_last=channels_last)
