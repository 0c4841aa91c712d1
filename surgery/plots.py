"""The plots of a training run: loss/accuracy curves with phase boundaries, and the confusion
matrix. matplotlib `Figure` objects with the Agg canvas: no global pyplot state, no GUI backend;
files are written atomically (`graft.atomic`)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from graft.atomic import atomic_path

__all__ = ["finite_values", "plot_confusion", "plot_curves"]

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _save_figure(fig: Figure, path: PathLike, dpi: int = 100) -> Path:
    """Render `fig` to PNG at `path` atomically."""
    FigureCanvasAgg(fig)
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return target


def _phase_boundaries(phases: Sequence[Mapping[str, Any]] | None) -> list[tuple[float, str]]:
    """Cumulative epoch counts at which each phase after the first starts, with its name."""
    out: list[tuple[float, str]] = []
    total = 0
    for i, phase in enumerate(phases or []):
        if i > 0:
            out.append((total + 0.5, str(phase.get("name", f"phase {i + 1}"))))
        total += int(phase.get("epochs", 0) or 0)
    return out


def finite_values(values: Sequence[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        out.append(f)
    return out


def plot_curves(
    history: Mapping[str, Sequence[Any]],
    path: PathLike,
    phases: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Plot loss and accuracy (train and validation) against epoch, in two panels.

    Args:
        history: per-epoch values, e.g. `{"loss": [...], "val_loss": [...], "accuracy": [...],
            "val_accuracy": [...]}` (Keras `History.history`, concatenated over phases). Other
            keys (such as `phase` or `lr`) are ignored. Missing series are simply not drawn.
        path: PNG file to write.
        phases: training phases in order, each `{"name": str, "epochs": int}` (the epochs the
            phase actually ran); a dashed vertical line, labelled with the phase name, marks where
            each phase after the first starts: half-way between epoch `c` and `c + 1`, where `c`
            is the cumulative epoch count of the phases before it.

    Returns:
        The written path.
    """
    fig = Figure(figsize=(10, 4), layout="constrained")
    boundaries = _phase_boundaries(phases)
    panels = (
        ("Loss", ["loss", "val_loss"]),
        ("Accuracy", ["accuracy", "val_accuracy", "acc", "val_acc"]),
    )
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        drawn = 0
        for key in keys:
            if key not in history or not len(history[key]):
                continue
            ys = finite_values(history[key])
            xs = list(range(1, len(ys) + 1))
            label = "validation" if key.startswith("val_") else "train"
            ax.plot(xs, ys, marker="o", markersize=3, label=f"{label} ({key})")
            drawn += 1
        ymin, ymax = ax.get_ylim()
        for x, name in boundaries:
            ax.axvline(x, color="grey", linestyle="--", linewidth=1)
            ax.annotate(
                name,
                xy=(x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize=8,
                color="grey",
            )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=8, loc="best")
            ax.xaxis.get_major_locator().set_params(integer=True)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return _save_figure(fig, path)


def plot_confusion(
    matrix: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: PathLike,
) -> Path:
    """Draw a confusion matrix as a heat map.

    Colours are normalized by row (the fraction of each true class predicted as each class), so
    rare classes are as visible as common ones; cells show raw counts. Fonts shrink with the
    number of classes, and counts are hidden above 30 classes.

    Args:
        matrix: square counts, rows = true class, columns = predicted class.
        class_names: one name per row/column.
        path: PNG file to write.

    Returns:
        The written path.
    """
    cm = np.asarray(matrix, dtype=np.int64)
    n = cm.shape[0] if cm.ndim == 2 else 0
    if cm.ndim != 2 or cm.shape[1] != n:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    names = [str(c) for c in class_names]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for a {n}x{n} confusion matrix")
    row_sums = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=np.float64), where=row_sums > 0)

    side = min(max(4.0, 0.45 * n + 2.5), 18.0)
    fig = Figure(figsize=(side + 1.0, side), layout="compressed")
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of true class")

    tick_font = 10 if n <= 10 else 8 if n <= 20 else 6 if n <= 40 else 4
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(
        names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center", fontsize=tick_font
    )
    ax.set_yticklabels(names, fontsize=tick_font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")

    if 0 < n <= 30:
        cell_font = 10 if n <= 10 else 7 if n <= 20 else 5
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(int(cm[i, j])),
                    ha="center",
                    va="center",
                    fontsize=cell_font,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    return _save_figure(fig, path)
