"""The run's log: one strict-JSON record per line in ``<out>/log.jsonl`` (rank 0), optionally mirrored to
TensorBoard (``run.tensorboard``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict

from ..errors import Res2NetError
from ..jsonio import jsonl_line


class JsonlLogger:
    """Appends one strict-JSON record per line to ``<out>/log.jsonl`` (rank 0 only); optional TensorBoard."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool = False) -> None:
        self.path, self.enabled = path, enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise Res2NetError("run.tensorboard=true needs the tensorboard package "
                                   "(pip install tensorboard)") from None
            self.tb = SummaryWriter(str(path.parent / "tb"))

    def log(self, kind: str, step: int, **values: Any) -> None:
        """Append one record (non-finite numbers become null, see :mod:`res2net.jsonio`)."""
        if not self.enabled:
            return
        rec = {"type": kind, "step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(jsonl_line(rec) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        """Close the TensorBoard writer (the JSONL file is opened per record)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def echo(record: Dict[str, Any]) -> None:
    """Print an epoch's record as one ``key=value`` line on stderr (through tqdm, above any progress bar)."""
    from tqdm.auto import tqdm

    tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
               file=sys.stderr)
