""""Did Res2Net help on my data?": statistics over seeds for ``res2net train --seeds N``.

Each model's top-1 over the seeds (mean, sample standard deviation), and for each Res2Net / same-budget
baseline pair trained in the same run the mean paired difference (seed k of one against seed k of the other:
same data order and initialisation seed) with a two-sided 95% Student-t confidence interval.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

# two-sided 95% critical values of Student's t (the 0.975 quantile) for 1..30 degrees of freedom
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
         2.042)
Z_975 = 1.960  # beyond 30 degrees of freedom


def t_critical(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (>= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T_975[df - 1] if df <= len(T_975) else Z_975


def mean_ci(values: Sequence[float]) -> Tuple[float, Optional[float], Optional[Tuple[float, float]]]:
    """(mean, sample standard deviation, 95% t interval of the mean); no spread for a single value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    sd = statistics.stdev(values)
    half = t_critical(len(values) - 1) * sd / math.sqrt(len(values))
    return mean, sd, (mean - half, mean + half)


def seed_statistics(top1: Mapping[str, Sequence[float]], pairs: Sequence[Tuple[str, str]]) -> Dict[str, Any]:
    """``top1``: each model's top-1 per seed (same seeds, same order); ``pairs``: (model, baseline).
    Returns {"models": {name: {mean, std, seeds}}, "pairs": [{model, baseline, mean_diff, std_diff, ci95,
    excludes_zero, seeds}]} with accuracies as fractions."""
    models = {}
    for name, values in top1.items():
        mean, sd, _ = mean_ci(values)
        models[name] = {"mean": mean, "std": sd, "seeds": list(values)}
    compared: List[Dict[str, Any]] = []
    for model, base in pairs:
        a, b = top1[model], top1[base]
        if len(a) != len(b):
            raise ValueError(f"{model} has {len(a)} seeds, {base} {len(b)}: paired differences need the same seeds")
        diffs = [x - y for x, y in zip(a, b)]
        mean, sd, ci = mean_ci(diffs)
        compared.append({"model": model, "baseline": base, "mean_diff": mean, "std_diff": sd,
                         "ci95": list(ci) if ci else None,
                         "excludes_zero": bool(ci and (ci[0] > 0 or ci[1] < 0)), "seeds": diffs})
    return {"models": models, "pairs": compared}


def seeds_plot(stats: Mapping[str, Any], path: Any) -> None:
    """Per-seed top-1 of each model (points) with the mean and its 95% interval (bar)."""
    from ...reporting import pyplot, save_figure

    plt = pyplot()
    names = list(stats["models"])
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 4))
    for i, name in enumerate(names):
        values = [100 * v for v in stats["models"][name]["seeds"]]
        ax.plot([i] * len(values), values, "o", alpha=0.6)
        mean, _, ci = mean_ci(values)
        if ci:
            ax.errorbar([i + 0.15], [mean], yerr=[[mean - ci[0]], [ci[1] - mean]], fmt="k_", capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    ax.set(ylabel="test top-1 (%)", title="top-1 per seed (bar: mean and 95% t interval)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
