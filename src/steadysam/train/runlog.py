"""Run log: a CSV of per-interval averages and a loss plot (PNG, ``steadysam.plots``)."""

from __future__ import annotations

import csv
from pathlib import Path

from ..plots import new_figure, save_png

COLUMNS = (
    "iter", "loss", "nfl", "ptl", "bce", "dice", "iou", "iou_coarse", "lr", "it_per_s",
    "samples_per_s",
)  # fmt: skip
TERMS = ("nfl", "ptl", "bce", "dice")  # loss terms; the total is "loss"


class CsvLog:
    """``log.csv`` in the run folder. On resume, rows past the checkpoint's iteration (written
    after it, before the kill) are dropped so the resumed run's rows replace them."""

    def __init__(self, path: Path, resume_iter: int = 0) -> None:
        self.path = path
        rows: list[dict[str, str]] = []
        if resume_iter > 0 and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iter"]) <= resume_iter]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, float]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow({k: row.get(k, "") for k in COLUMNS})

    def read(self) -> list[dict[str, float]]:
        with self.path.open(newline="") as f:
            return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def plot_losses(log: CsvLog, out: Path, title: str = "") -> None:
    """Loss curves (the total and its terms when there are several) and IoU vs iteration,
    written atomically."""
    rows = log.read()
    if not rows:
        return
    it = [r["iter"] for r in rows]
    fig, (ax1, ax2) = new_figure(10, 3.6, ncols=2)
    terms = [k for k in TERMS if any(r.get(k) is not None for r in rows)]
    for key in ["loss", *terms] if len(terms) > 1 else ["loss"]:  # one term: it is the loss
        ys = [r.get(key, float("nan")) for r in rows]
        ax1.plot(it, ys, label=key)
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("loss")
    for key in ("iou", "iou_coarse"):
        ys = [r.get(key, float("nan")) for r in rows]
        if any(y == y for y in ys):
            ax2.plot(it, ys, label=key)
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("training IoU")
    fig.suptitle(title)
    save_png(fig, out)
