"""Fast inference: :func:`optimize` (the entry point) turns a zoo model into an :class:`OptimizedModel` on one
backend: the fused eager path (:mod:`.fused`), inductor, onnxruntime or OpenVINO (:mod:`.backends`), or the
fastest of them measured here (``backend="auto"``, :mod:`.autotune`); writing and checking ONNX (:mod:`.onnx`).
Calibration images for int8: :func:`res2net.data.calibration.calibration_batches`."""

from .autotune import choose_backend
from .backends import (AUTO, BACKENDS, DTYPES, BackendNotInstalled, available_backends, backend_supports,
                       build_backend, dtype_name)
from .base import OptimizedModel
from .fused import fuse
from .optimize import optimize

__all__ = ["AUTO", "BACKENDS", "DTYPES", "BackendNotInstalled", "OptimizedModel", "available_backends",
           "backend_supports", "build_backend", "choose_backend", "dtype_name", "fuse", "optimize"]
