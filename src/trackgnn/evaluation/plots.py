"""Efficiency plots (PNG) drawn with matplotlib's object API on the Agg canvas.

No pyplot: no global figure state, no GUI backend, safe in parallel workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trackgnn.atomic import atomic_path

_LABELS = {"pt": r"particle $p_T$ [GeV]", "eta": r"particle $\eta$"}


def plot_efficiency(table: pd.DataFrame, variable: str, path: str | Path, title: str = "") -> None:
    """Write a two-panel PNG: particle counts per bin and efficiencies with binomial error bars.

    Args:
        table: output of :func:`trackgnn.evaluation.metrics.efficiency_table`.
        variable: ``pt`` (log x axis) or ``eta``.
        path: the PNG to write (atomically).
        title: figure title.
    """
    low = table["bin_low"].to_numpy(np.float64)
    high = table["bin_high"].to_numpy(np.float64)
    centre = np.sqrt(low * high) if variable == "pt" else (low + high) / 2
    half_width = (centre - low, high - centre)
    edges = np.append(low, high[-1])

    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    counts_axes, efficiency_axes = figure.subplots(1, 2)
    for column, label in (
        ("n_selected", "selected"),
        ("n_reconstructable", "reconstructable"),
        ("n_selected_matched", "matched"),
    ):
        counts_axes.stairs(table[column].to_numpy(), edges, label=label)
    counts_axes.set_ylabel("particles")
    counts_axes.legend()

    # Open squares for technical efficiency keep equal physics points visible underneath.
    for kind, marker, face in (("physics", "o", None), ("technical", "s", "none")):
        efficiency = table[f"{kind}_efficiency"].to_numpy(np.float64)
        shown = np.isfinite(efficiency)
        efficiency_axes.errorbar(
            centre[shown],
            efficiency[shown],
            xerr=(half_width[0][shown], half_width[1][shown]),
            yerr=table[f"{kind}_efficiency_error"].to_numpy(np.float64)[shown],
            fmt=marker,
            markersize=4,
            capsize=2,
            markerfacecolor=face,
            label=f"{kind} efficiency",
        )
    efficiency_axes.set_ylabel("efficiency")
    efficiency_axes.set_ylim(0.0, 1.05)
    efficiency_axes.grid(alpha=0.3)
    efficiency_axes.legend(loc="lower right")

    for axes in (counts_axes, efficiency_axes):
        axes.set_xlabel(_LABELS.get(variable, variable))
        if variable == "pt":
            axes.set_xscale("log")
        axes.set_xlim(edges[0], edges[-1])  # same range on both panels, whatever is filled
    if title:
        figure.suptitle(title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
