"""The per-layer figure of learned mixing ratios (as in the SN paper); needs matplotlib, imported on first use."""
from __future__ import annotations

import os
from pathlib import Path

COLOURS = {"IN": "#4C72B0", "LN": "#DD8452", "BN": "#55A868"}


def plot_importance_ratios(ratios: dict[str, dict[str, dict[str, float]]], path: str | os.PathLike,
                           title: str = "Learned importance ratios") -> Path:
    """Write a PNG of ``dynnorm.importance_ratios(model)``: for every layer, a horizontal stacked bar per kind
    (SN: mean and variance; EN: the batch-averaged ratio) split into IN/LN/BN. Layers without IN/LN/BN
    ratios (DN gates) are left out. Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{layer} [{kind}]", values) for layer, kinds in ratios.items() for kind, values in kinds.items()
            if set(values) <= set(COLOURS)]
    if not rows:
        raise ValueError("no IN/LN/BN ratios to plot (the model has no SN, SSN or EN layer)")
    height = max(2.0, 0.28 * len(rows) + 1.0)
    figure, axes = plt.subplots(figsize=(8, height))
    for y, (_, values) in enumerate(rows):
        left = 0.0
        for normalizer, colour in COLOURS.items():
            width = values.get(normalizer, 0.0)
            axes.barh(y, width, left=left, color=colour, label=normalizer if y == 0 else None)
            left += width
    axes.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=6)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("ratio")
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
