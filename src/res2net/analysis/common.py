"""Report-folder helpers shared by the analyses: matplotlib (Agg), JSON/CSV writers, markdown tables, and the
model (with its preprocessing) an analysis runs on."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..data.preprocessing import Preprocessing
from ..models import create_model
from ..weights import card_preprocessing, model_from_checkpoint


def pyplot() -> Any:
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_image_grid(fig: Any, axes: Any, path: Path) -> None:
    """Hide the axes of an image grid, lay it out, write it as a PNG and free the figure."""
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def out_dir(path: str | Path) -> Path:
    """Create (if needed) and return the report folder ``path``."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON."""
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_csv(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    """Write dict rows as CSV; columns are the union of keys, in first-seen order."""
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    """A markdown table (list of lines); numbers right-aligned."""
    align = ["---:" if rows and isinstance(rows[0][i], (int, float)) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def trained_model(name: str, checkpoint: Optional[str | Path] = None) -> Tuple[nn.Module, Preprocessing]:
    """A named model in eval mode and the preprocessing it expects: from ``checkpoint`` through the package's one
    checkpoint -> model path (input channels, classes and the training run's preprocessing read from the file),
    else random weights and the model card's preprocessing."""
    if checkpoint is None:
        return create_model(name).eval(), card_preprocessing(name)
    loaded = model_from_checkpoint(checkpoint, name)
    return loaded.model, loaded.preprocessing
