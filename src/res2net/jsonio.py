"""Strict JSON: what the package writes is always valid JSON (no ``NaN``/``Infinity``), written atomically.

Python's :func:`json.dumps` writes ``NaN`` and ``Infinity`` by default, which no strict JSON reader accepts.
:func:`json_safe` replaces every non-finite float by ``null`` and records where; :func:`write_json` adds that
list as ``"non_finite"`` to a top-level mapping, so a reader sees both that a value is missing and why.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, List, Tuple, Union

from .files import write_text

PathLike = Union[str, os.PathLike]


def json_safe(obj: Any, path: str = "") -> Tuple[Any, List[str]]:
    """``obj`` with non-finite floats replaced by None, numpy/torch scalars turned into Python numbers,
    tuples into lists, and the dotted paths of the replaced values."""
    flagged: List[str] = []

    def walk(value: Any, where: str) -> Any:
        if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            flagged.append(where or "<root>")
            return None
        if isinstance(value, dict):
            return {str(k): walk(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if callable(getattr(value, "item", None)):  # numpy / torch scalars and arrays
            try:
                return walk(value.item(), where)
            except (ValueError, RuntimeError):  # not a one-element array
                return walk(value.tolist(), where)
        raise TypeError(f"{where or '<root>'}: {type(value).__name__} is not JSON serializable")

    return walk(obj, path), flagged


def dumps_strict(obj: Any, indent: int | None = 2) -> str:
    """JSON text of ``obj`` after :func:`json_safe` (non-finite values become null; a top-level mapping
    gets ``"non_finite": [paths]`` naming them)."""
    clean, flagged = json_safe(obj)
    if flagged and isinstance(clean, dict):
        clean["non_finite"] = flagged
    return json.dumps(clean, indent=indent, allow_nan=False)


def write_json(path: PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON (see :func:`dumps_strict`) to ``path`` atomically (temp file, rename);
    an interrupted write leaves no temp file and the previous file intact."""
    return write_text(path, dumps_strict(obj, indent) + "\n")


def jsonl_line(record: Any) -> str:
    """One line of a JSON-lines log: strict JSON without indentation."""
    return dumps_strict(record, indent=None)
