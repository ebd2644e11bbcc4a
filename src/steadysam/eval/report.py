"""Run outputs: reading the per-sample JSON lines, summary.json (atomic), markdown tables in the
papers' layout and PNG plots, for one run or several runs side by side.

Plots are made with ``steadysam.plots`` (headless, no pyplot; one style and atomic PNG saves).
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from steadysam.atomic import atomic_write_text
from steadysam.eval.metrics import summarize
from steadysam.plots import new_figure, save_png

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


class ReportError(ValueError):
    """A run's files cannot be read or the runs cannot be reported together."""


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The sample records of a JSON-lines file, in file order.

    Lines that cannot be used are dropped with a warning naming the file and the line: the last
    line when it has no terminating newline (a writer killed mid-line: even if its bytes happen
    to parse, the appender cuts it off on resume, so it must not count as done), lines that are
    not JSON (or not UTF-8), and JSON values that are not sample records (an object with a
    string ``id`` and a list ``order``)."""
    lines = Path(path).read_bytes().split(b"\n")
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if number == len(lines):  # no newline after it
            _warn(f"{path}:{number}: dropping the incomplete last line (a run killed mid-write)")
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # JSONDecodeError, or UnicodeDecodeError for non-UTF-8 bytes
            _warn(f"{path}:{number}: dropping a line that is not valid JSON")
            continue
        if not (
            isinstance(rec, dict)
            and isinstance(rec.get("id"), str)
            and isinstance(rec.get("order"), list)
        ):
            _warn(f"{path}:{number}: dropping a line that is not a sample record")
            continue
        out.append(rec)
    return out


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN / infinite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dump_json(obj: Any) -> str:
    """Strict JSON text (``allow_nan=False``: a non-finite float becomes null, never ``NaN``,
    which ``json.dumps`` writes by default and strict parsers reject)."""
    return json.dumps(_finite(obj), indent=2, allow_nan=False)


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
    atomic_write_text(run_dir / "summary.json", dump_json(summary))
    write_run_report(run_dir, summary)
    return summary


def run_label(cfg: dict[str, Any]) -> str:
    """Method name for tables: model (or checkpoint file name) + protocol/clicker."""
    from steadysam.eval.runner import net_name

    net = net_name(cfg.get("model"), cfg.get("checkpoint") or "?", cfg.get("plugin"))
    return f"{net} [{cfg.get('protocol')}/{cfg.get('clicker')}]"


def _f(v: Any, nd: int = 2) -> str:
    """A table cell: "–" for a missing or non-finite value."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _pct(v: float | None) -> str:
    """A fraction as a percentage cell ("–" without a value)."""
    return _f(None if v is None else 100 * v)


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
            *(_pct(mi[k - 1] if len(mi) >= k else None) for k in early),
            _pct(mi[-1] if mi else None),
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


def plot_miou(summaries: Sequence[dict[str, Any]], path: Path) -> None:
    """mIoU (%) after each click, one curve per run."""
    fig, (ax,) = new_figure()
    for s in summaries:
        y = [math.nan if v is None else 100 * v for v in s["miou"]]
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
    save_png(fig, path)


def plot_delta_hist(summaries: Sequence[dict[str, Any]], path: Path) -> None:
    """Distribution of ΔIoU drops worse than -1 % (FocSAM Figure 4), one step curve per run."""
    fig, (ax,) = new_figure()
    for s in summaries:
        h = s["stability"]["histogram"]
        edges = [100 * e for e in h["edges"]]
        ax.stairs(h["counts"], edges, label=f"{s.get('label', '?')} – {_title(s)}")
    ax.set_xlabel("ΔIoU between consecutive clicks (%), drops < -1 % only")
    ax.set_ylabel("count")
    ax.set_yscale("symlog")
    save_png(fig, path)


def write_run_report(run_dir: Path, summary: dict[str, Any]) -> None:
    """results.md + miou_curve.png + delta_iou_hist.png for one finished run."""
    st = summary["stability"]
    text = (
        f"# {summary.get('label')} on {_title(summary)}\n\n"
        + run_table([summary])
        + "\nmIoU@k (%): "
        + ", ".join(f"{k}: {_pct(v)}" for k, v in summary["miou_at"].items())
        + f"\n\nStability: {st['num_drops']} drops < -1 % in {st['num_deltas']} click "
        f"transitions ({st['samples_with_drop']} of {summary['num_samples']} samples); "
        f"mean drop {_pct(st['mean_drop'])} %, mean worst drop per sample "
        f"{_pct(st['worst_drop_mean'])} %.\n"
    )
    if summary.get("errors"):
        text += "\n## Errors\n\n" + "".join(
            f"- `{e['id']}`: {e['error']}\n" for e in summary["errors"]
        )
    atomic_write_text(run_dir / "results.md", text)
    if summary["num_samples"]:
        plot_miou([summary], run_dir / "miou_curve.png")
        plot_delta_hist([summary], run_dir / "delta_iou_hist.png")


# Keys every summary.json of its kind has (anything else is not a steadysam run summary).
CLICK_SUMMARY_KEYS = ("dataset", "clicks", "num_samples", "noc", "nof", "nof_ritm", "miou")
PROMPT_SUMMARY_KEYS = ("dataset", "num_samples", "setting_order", "settings")


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def load_summary(run: str | Path) -> dict[str, Any]:
    """Read ``run/summary.json`` (or a summary file). ``FileNotFoundError`` when it does not
    exist; :class:`ReportError` naming the file when it cannot be read, is not JSON (say
    truncated) or is not the summary of a ``steadysam eval`` / ``eval-prompts`` run. A ``NaN``
    written by an older version reads as None."""
    p = Path(run)
    if not p.exists():
        raise FileNotFoundError(f"{run} does not exist")
    p = p / "summary.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"no summary.json in {run} (is the run finished?)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"cannot read {p}: {_reason(e)}") from None
    try:
        summary = json.loads(text, parse_constant=lambda _: None)
    except json.JSONDecodeError as e:
        raise ReportError(
            f"{p} is not valid JSON ({e.msg}: line {e.lineno} column {e.colno}): "
            "truncated, damaged or not a run summary"
        ) from None
    if isinstance(summary, dict):
        keys = PROMPT_SUMMARY_KEYS if "settings" in summary else CLICK_SUMMARY_KEYS
        missing = [k for k in keys if k not in summary]
        table = "settings" if "settings" in summary else "noc"
        if not missing and isinstance(summary[table], dict):
            return summary
        what = f"it lacks {', '.join(missing)}" if missing else "its metrics are malformed"
    else:
        what = f"it holds a JSON {type(summary).__name__}, not an object"
    raise ReportError(
        f"{p} is not the summary.json of a steadysam eval or eval-prompts run ({what})"
    )


def _show(v: Any) -> str:
    return "none" if v is None else str(v)


def _by_run(paths: Sequence[str], summaries: Sequence[dict[str, Any]], key: str) -> str:
    return ", ".join(f"{p}: {_show(s.get(key))}" for p, s in zip(paths, summaries, strict=True))


# Comparability of click runs (docs/eval.md, "Reports"). Refused: the benchmark itself differs,
# so no number of one run is comparable with the other's. Stated: a method setting; the runs
# are shown side by side with the setting in the method name.
CLICK_REFUSED = {
    "clicks": "NoC and NoF are capped at the click budget and mIoU@N is taken at its last click",
    "clicker": "the click simulator decides every click: these are different benchmarks",
    "inner_k": "the focsam clicker's candidate region differs: these are different benchmarks",
}
# The protocol is part of every label already. bf16 next to fp32 of one model is the point of
# measuring precision, so it is stated, not refused.
CLICK_STATED = ("refine_at", "seed", "precision")
IGNORE_REASON = "the ignore-label pixels count differently (a different ground truth)"


def check_comparable(
    summaries: Sequence[dict[str, Any]],
    paths: Sequence[str],
    refused: dict[str, str],
    stated: Sequence[str],
) -> tuple[list[str], list[str]]:
    """Check that runs can share a report; returns (row labels, notes).

    A field of ``refused`` that differs between runs, or an ``ignore`` mode that differs
    between runs on the same dataset, raises :class:`ReportError` listing each run's value. A
    field of ``stated`` that differs is added to every run's label, e.g. ``sam (seed=1)``. Runs
    left with the same label on the same dataset get their folder appended (``@ runs/a``), so
    none hides another. Notes: the stated differences and datasets whose runs evaluated
    different numbers of samples or had failed samples."""
    problems = [
        f"{key} ({_by_run(paths, summaries, key)}): {why}"
        for key, why in refused.items()
        if len({_show(s.get(key)) for s in summaries}) > 1
    ]
    by_dataset: dict[str, list[int]] = {}
    for i, s in enumerate(summaries):
        by_dataset.setdefault(_title(s), []).append(i)
    for title, idx in by_dataset.items():
        if len({_show(summaries[i].get("ignore")) for i in idx}) > 1:
            sub = [paths[i] for i in idx], [summaries[i] for i in idx]
            problems.append(f"ignore on {title} ({_by_run(*sub, 'ignore')}): {IGNORE_REASON}")
    if problems:
        raise ReportError(
            "these runs cannot be reported together; they differ in " + "; ".join(problems)
        )
    from .runner import SEMANTIC_DEFAULTS  # (runner imports this module)

    def value(s: dict[str, Any], key: str) -> str:  # runs older than a key have its default
        return _show(s.get(key, SEMANTIC_DEFAULTS.get(key)))

    differ = [k for k in stated if len({value(s, k) for s in summaries}) > 1]
    labels = []
    for s in summaries:
        extra = ", ".join(f"{k}={value(s, k)}" for k in differ)
        labels.append(f"{s.get('label', '?')} ({extra})" if extra else str(s.get("label", "?")))
    clash = Counter((lab, _title(s)) for lab, s in zip(labels, summaries, strict=True))
    labels = [
        f"{lab} @ {p}" if clash[(lab, _title(s))] > 1 else lab
        for lab, s, p in zip(labels, summaries, paths, strict=True)
    ]
    notes = []
    if differ:
        notes.append(f"the runs differ in {', '.join(differ)}, stated in the method names")
    for title, idx in by_dataset.items():
        counts = {_show(summaries[i].get("num_samples")) for i in idx}
        if len(idx) > 1 and len(counts) > 1:
            sub = [paths[i] for i in idx], [summaries[i] for i in idx]
            notes.append(
                f"the runs on {title} evaluated different numbers of samples "
                f"({_by_run(*sub, 'num_samples')}): their means are over different objects"
            )
    for p, s in zip(paths, summaries, strict=True):
        if s.get("num_errors"):
            notes.append(f"{p} has {s['num_errors']} failed samples, left out of its numbers")
        if not s.get("num_samples"):
            notes.append(f"{p} has no successful sample: its metrics are –")
    return labels, notes


def _unique_paths(runs: Sequence[str | Path]) -> list[str]:
    seen: dict[Path, str] = {}
    for r in runs:
        p = Path(r)
        key = (p.parent if p.is_file() else p).resolve()
        if key in seen:
            also = "" if seen[key] == str(r) else f" (as {seen[key]})"
            raise ReportError(f"{r} is given twice{also}")
        seen[key] = str(r)
    return [str(r) for r in runs]


def check_report_dir(out: str | Path) -> Path:
    """:class:`ReportError` naming ``out`` when it cannot take a report: a file, a path under a
    file, a run folder (its plots would be overwritten). Creates nothing."""
    o = Path(out)
    for parent in [o, *o.parents]:
        if parent.exists():
            if not parent.is_dir():
                where = "is" if parent == o else f"cannot be created: {parent} is"
                raise ReportError(f"--out {o} {where} a file, not a folder")
            break
    if (o / "config.json").exists() or (o / "summary.json").exists():
        raise ReportError(
            f"--out {o} is a run folder (it holds config.json or summary.json); its files "
            "would be overwritten: write the report elsewhere"
        )
    return o


def prepare_report_dir(out: str | Path) -> Path:
    """Check (:func:`check_report_dir`) and create the report folder; :class:`ReportError`
    naming it when that fails (permission denied)."""
    o = check_report_dir(out)
    try:
        o.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create the report folder {o}: {_reason(e)}") from None
    return o


def write_report_files(o: Path, md: str, plots: Sequence[tuple[Callable, str]], shown) -> None:
    """report.md and the plots into ``o``; :class:`ReportError` naming the file on failure."""
    try:
        atomic_write_text(o / "report.md", md)
        for plot, name in plots:
            plot(shown, o / name)
    except OSError as e:
        raise ReportError(
            f"cannot write the report into {o}: {_reason(e)} ({getattr(e, 'filename', '')})"
        ) from None


def report(runs: Sequence[str | Path], out: str | Path | None = None) -> str:
    """Side-by-side markdown of several runs; with ``out`` also writes report.md and
    miou_curves.png / delta_iou_hist.png there. Returns the markdown.

    Runs that are not comparable are refused (:class:`ReportError`, a ``ValueError``, naming
    the differing fields per run); method settings that differ are stated in the method names
    (:func:`check_comparable`, docs/eval.md "Reports"). Prompt-robustness runs
    (``steadysam eval-prompts``) get their own layout
    (:func:`steadysam.eval.prompt_report.prompt_report`); click and prompt runs do not mix."""
    from steadysam.eval.prompt_report import is_prompt_summary, prompt_report

    if out is not None:
        check_report_dir(out)  # before any work or warning
    paths = _unique_paths(runs)
    summaries = [load_summary(r) for r in runs]
    kinds = [is_prompt_summary(s) for s in summaries]
    if any(kinds) and not all(kinds):
        prompt_runs = [p for p, k in zip(paths, kinds, strict=True) if k]
        raise ReportError(
            "cannot mix click runs (steadysam eval) and prompt runs (steadysam eval-prompts) "
            f"in one report; prompt runs: {', '.join(prompt_runs)}"
        )
    if all(kinds):
        return prompt_report(summaries, out, paths=paths)
    stated = [k for k in CLICK_STATED if k != "seed" or summaries[0].get("clicker") == "focsam"]
    labels, notes = check_comparable(summaries, paths, CLICK_REFUSED, stated)
    for note in notes:
        _warn(note)
    shown = [{**s, "label": lab} for s, lab in zip(summaries, labels, strict=True)]
    md = "# Runs side by side\n\n" + paper_table(shown) + "\n" + run_table(shown)
    if notes:
        md += "\n" + "".join(f"**Note:** {n}.\n" for n in notes)
    if out is not None:
        o = prepare_report_dir(out)
        plots = [(plot_miou, "miou_curves.png"), (plot_delta_hist, "delta_iou_hist.png")]
        write_report_files(o, md, plots, shown)
    return md
