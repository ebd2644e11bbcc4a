"""Run outputs: reading the per-sample JSON lines, summary.json (atomic), markdown tables in the
papers' layout and PNG plots, for one run or several runs side by side.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so
they work headless and do not disturb an interactive session in the same process.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steadysam.atomic import atomic_path, atomic_write_text
from steadysam.eval.metrics import summarize

DATASET_ORDER = (
    "grabcut",
    "berkeley",
    "sbd",
    "davis",
    "mvtec",
    "cod10k",
    "coco_mval",
    "pascal_voc",
    "dis",
    "thinobject",
    "coift",
    "hrsod",
    "folder",
)
DATASET_TITLES = {
    "grabcut": "GrabCut",
    "berkeley": "Berkeley",
    "sbd": "SBD",
    "davis": "DAVIS",
    "mvtec": "MVTec",
    "cod10k": "COD10K",
    "coco_mval": "COCO-MVal",
    "pascal_voc": "PascalVOC",
    "dis": "DIS-VD",
    "thinobject": "ThinObject5K-TE",
    "coift": "COIFT",
    "hrsod": "HRSOD",
    "folder": "folder",
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse a JSON-lines file, dropping an unterminated/corrupt line left by a killed writer."""
    out = []
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"warning: skipping truncated line in {path}", file=sys.stderr)
    return out


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """All per-sample records of a run (parts/*.jsonl), first line per id, in dataset order."""
    seen: dict[str, dict[str, Any]] = {}
    for part in sorted((run_dir / "parts").glob("rank-*.jsonl")):
        for rec in read_jsonl(part):
            seen.setdefault(rec["id"], rec)
    return sorted(seen.values(), key=lambda r: tuple(r["order"]))


def finalize(run_dir: Path, meta: dict[str, Any], clicks: int) -> dict[str, Any]:
    """Merge the part files into samples.jsonl, write summary.json (``meta`` + metrics +
    ``errors``), results.md and the plots. Idempotent: safe to call again on a finished run."""
    records = read_records(run_dir)
    ok = [r for r in records if "error" not in r]
    errors = [
        {"id": r["id"], "image": r["image"], "error": r["error"]} for r in records if "error" in r
    ]
    summary = {"label": run_label(meta), **meta, **summarize(ok, clicks)}
    summary["num_errors"] = len(errors)
    summary["errors"] = errors
    atomic_write_text(run_dir / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    write_run_report(run_dir, summary)
    return summary


def run_label(cfg: dict[str, Any]) -> str:
    """Method name for tables: model (or checkpoint file name) + protocol/clicker."""
    from steadysam.eval.runner import net_name

    net = net_name(cfg.get("model"), cfg.get("checkpoint") or "?", cfg.get("plugin"))
    return f"{net} [{cfg.get('protocol')}/{cfg.get('clicker')}]"


def _f(v: Any, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _spc(s: dict[str, Any]) -> str:
    t = s.get("timing") or {}
    if "spc" not in t:
        return "–"
    return f"{t['spc']:.3f} ({t['spc_decoder']:.3f})"


def _title(s: dict[str, Any]) -> str:
    from steadysam.eval.datasets import DatasetError, canonical_name

    try:
        return DATASET_TITLES[canonical_name(s["dataset"])]
    except DatasetError:
        return str(s["dataset"])


def run_table(summaries: Sequence[dict[str, Any]]) -> str:
    """One row per run: NoC, both NoF conventions, mIoU@k, SPC (paper: total (decoder-only))."""
    budgets = {s["clicks"] for s in summaries}
    n = str(budgets.pop()) if len(budgets) == 1 else "N"  # N: each run's own budget
    # mIoU after clicks 1 and 5, unless that is already the last column (a budget of 1 or 5).
    early = [k for k in (1, 5) if n == "N" or k < int(n)]
    head = (
        f"| Method | Dataset | #Obj | NoC@85 | NoC@90 | NoC@95 | NoF@85 | NoF@90 | NoF@95 "
        f"| ≥{n}@85 | ≥{n}@90 | "
        + "".join(f"mIoU@{k} | " for k in early)
        + f"mIoU@{n} | SPC s (dec.) | errors |"
    )
    lines = [head, "|" + "---|" * (14 + len(early))]
    for s in summaries:
        noc, nof, nr, mi = s["noc"], s["nof"], s["nof_ritm"], s["miou"]
        cells = [
            s.get("label", "?"),
            _title(s),
            str(s["num_samples"]),
            _f(noc.get("85")),
            _f(noc.get("90")),
            _f(noc.get("95")),
            _f(nof.get("85")),
            _f(nof.get("90")),
            _f(nof.get("95")),
            _f(nr.get("85")),
            _f(nr.get("90")),
            *(_f(100 * mi[k - 1] if len(mi) >= k else None) for k in early),
            _f(100 * mi[-1] if mi else None),
            _spc(s),
            str(s.get("num_errors", 0)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        f"NoF@t: objects never reaching IoU t within the budget {n}; ≥{n}@t: RITM's count of "
        f"NoC == {n} (also counts objects first reaching t on the last click). mIoU in %; "
        f"mIoU@{n} after the last click. "
        "SPC: (encoder + decoder + refiner) / clicks, encoder charged to every object as in "
        "the FocSAM paper; decoder-only SPC in parentheses.",
    ]
    return "\n".join(lines + notes) + "\n"


def paper_table(summaries: Sequence[dict[str, Any]], metric: str = "90") -> str:
    """FocSAM Table 1 layout: rows = methods, columns = datasets (NoC@metric) + mean + SPC."""
    methods: dict[str, dict[str, dict[str, Any]]] = {}
    for s in summaries:
        methods.setdefault(s.get("label", "?"), {})[_title(s)] = s
    titles = [DATASET_TITLES[k] for k in DATASET_ORDER]
    present = [t for t in titles if any(t in m for m in methods.values())]
    present += sorted({t for m in methods.values() for t in m} - set(present))
    lines = [
        f"| Method | SPC s (dec.) | {' | '.join(present)} | mean |",
        "|" + "---|" * (len(present) + 3),
    ]
    for label, by_ds in methods.items():
        vals = [by_ds[t]["noc"].get(metric) if t in by_ds else None for t in present]
        known = [v for v in vals if v is not None]
        mean = sum(known) / len(known) if known and len(known) == len(present) else None
        spc = next((_spc(s) for s in by_ds.values() if _spc(s) != "–"), "–")
        lines.append(f"| {label} | {spc} | " + " | ".join(_f(v) for v in vals) + f" | {_f(mean)} |")
    return f"NoC@{metric}\n\n" + "\n".join(lines) + "\n"


def _canvas(w: float = 6.0, h: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _finish(fig, ax, path: Path) -> None:
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)


def plot_miou(summaries: Sequence[dict[str, Any]], path: Path) -> None:
    """mIoU (%) after each click, one curve per run."""
    fig, ax = _canvas()
    for s in summaries:
        y = [100 * v for v in s["miou"]]
        ax.plot(
            range(1, len(y) + 1),
            y,
            marker="." if len(y) <= 30 else None,
            label=f"{s.get('label', '?')} – {_title(s)}",
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mIoU (%)")
    _finish(fig, ax, path)


def plot_delta_hist(summaries: Sequence[dict[str, Any]], path: Path) -> None:
    """Distribution of ΔIoU drops worse than -1 % (FocSAM Figure 4), one step curve per run."""
    fig, ax = _canvas()
    for s in summaries:
        h = s["stability"]["histogram"]
        edges = [100 * e for e in h["edges"]]
        ax.stairs(h["counts"], edges, label=f"{s.get('label', '?')} – {_title(s)}")
    ax.set_xlabel("ΔIoU between consecutive clicks (%), drops < -1 % only")
    ax.set_ylabel("count")
    ax.set_yscale("symlog")
    _finish(fig, ax, path)


def write_run_report(run_dir: Path, summary: dict[str, Any]) -> None:
    """results.md + miou_curve.png + delta_iou_hist.png for one finished run."""
    st = summary["stability"]
    text = (
        f"# {summary.get('label')} on {_title(summary)}\n\n"
        + run_table([summary])
        + "\nmIoU@k (%): "
        + ", ".join(f"{k}: {100 * v:.2f}" for k, v in summary["miou_at"].items())
        + f"\n\nStability: {st['num_drops']} drops < -1 % in {st['num_deltas']} click "
        f"transitions ({st['samples_with_drop']} of {summary['num_samples']} samples); "
        f"mean drop {100 * st['mean_drop']:.2f} %, mean worst drop per sample "
        f"{100 * st['worst_drop_mean']:.2f} %.\n"
    )
    if summary.get("errors"):
        text += "\n## Errors\n\n" + "".join(
            f"- `{e['id']}`: {e['error']}\n" for e in summary["errors"]
        )
    atomic_write_text(run_dir / "results.md", text)
    if summary["num_samples"]:
        plot_miou([summary], run_dir / "miou_curve.png")
        plot_delta_hist([summary], run_dir / "delta_iou_hist.png")


def load_summary(run: str | Path) -> dict[str, Any]:
    p = Path(run)
    p = p / "summary.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"no summary.json in {run} (is the run finished?)")
    return json.loads(p.read_text())


def report(runs: Sequence[str | Path], out: str | Path | None = None) -> str:
    """Side-by-side markdown of several runs; with ``out`` also writes report.md and
    miou_curves.png / delta_iou_hist.png there. Returns the markdown.

    Prompt-robustness runs (``steadysam eval-prompts``) get their own layout
    (:func:`steadysam.eval.prompt_report.prompt_report`); click and prompt runs do not mix."""
    from steadysam.eval.prompt_report import is_prompt_summary, prompt_report

    summaries = [load_summary(r) for r in runs]
    kinds = [is_prompt_summary(s) for s in summaries]
    if any(kinds) and not all(kinds):
        prompt_runs = [str(r) for r, k in zip(runs, kinds, strict=True) if k]
        raise ValueError(
            "cannot mix click runs (steadysam eval) and prompt runs (steadysam eval-prompts) "
            f"in one report; prompt runs: {', '.join(prompt_runs)}"
        )
    if all(kinds):
        return prompt_report(summaries, out)
    md = "# Runs side by side\n\n" + paper_table(summaries) + "\n" + run_table(summaries)
    if out is not None:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        atomic_write_text(o / "report.md", md)
        plot_miou(summaries, o / "miou_curves.png")
        plot_delta_hist(summaries, o / "delta_iou_hist.png")
    return md
