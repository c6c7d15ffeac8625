"""Report-folder helpers used by every command that writes a report: matplotlib (Agg), CSV, markdown tables
(strict JSON: :mod:`res2net.jsonio`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Sequence

from .files import atomic_write, claim_folder, write_text


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
    save_figure(fig, path, dpi=100)


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as a PNG at ``path`` atomically (:mod:`res2net.files`) and free it."""
    try:
        with atomic_write(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        pyplot().close(fig)
    return Path(path)


def out_dir(path: str | Path) -> Path:
    """Create (if needed) and return the report folder ``path`` (:func:`res2net.files.claim_folder`: a folder of
    the user's own with files in it is refused)."""
    return claim_folder(path)


def write_csv(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    """Write dict rows as CSV; columns are the union of keys, in first-seen order."""
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    """A markdown table (list of lines); numbers right-aligned."""
    align = ["---:" if rows and isinstance(rows[0][i], (int, float)) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines
