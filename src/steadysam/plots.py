"""PNG plots: the one figure style and the one atomic save of every plot steadysam writes
(evaluation curves and reports, training loss curves).

matplotlib's object API with the Agg canvas: no pyplot and no global backend switch, so plots
work headless and leave an interactive matplotlib session in the same process alone. matplotlib
is imported when a figure is made, not with this module (the CLI imports it for ``--help``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
LEGEND_FONTSIZE = 7
GRID_ALPHA = 0.3


def new_figure(
    width: float = 6.0, height: float = 4.0, ncols: int = 1
) -> tuple[Figure, list[Axes]]:
    """A figure of ``ncols`` side-by-side plots on an Agg canvas.

    Arguments:
        width, height: the figure's size in inches (at 100 dpi).
        ncols: how many plots, left to right.

    Returns the figure and its axes, left to right.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def save_png(fig: Figure, path: str | os.PathLike) -> None:
    """Give every plot of ``fig`` the shared style (a light grid; a small legend where curves
    are labelled), lay it out and write it to ``path`` as a PNG, atomically (a reader never sees
    a half-written file; a failed save keeps the old one).

    Arguments:
        fig: a figure from :func:`new_figure`.
        path: the PNG file to write.
    """
    for ax in fig.axes:
        ax.grid(True, alpha=GRID_ALPHA)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=LEGEND_FONTSIZE)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=DPI)
