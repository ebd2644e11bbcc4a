"""Outputs of prompt-robustness runs (``steadysam eval-prompts``): per-setting metrics in
summary.json (atomic), summary.md, the mIoU-vs-setting plot, and the side-by-side report of
several runs (called by :func:`steadysam.eval.report.report` for prompt runs).

Metric definitions (docs/eval.md, "Prompt robustness"), per setting, over the objects:

* ``miou`` - mean over objects of the mean IoU over the object's draws; ``miou_first`` - the
  first draw only; ``miou_std`` - standard deviation over objects of the per-object mean.
* ``mbiou`` / ``mbiou_first`` / ``mbiou_std`` - the same with boundary IoU.
* ``stability`` - mean over objects of the mean pairwise IoU between the draws' predicted masks
  (``stability_std`` over objects); None for a deterministic setting (one draw: the GT box).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steadysam.atomic import atomic_write_text
from steadysam.eval.report import (
    _f,
    _title,
    _warn,
    check_comparable,
    dump_json,
    prepare_report_dir,
    read_jsonl,
    write_report_files,
)
from steadysam.plots import new_figure, save_png
from steadysam.prompts import parse_settings

KIND = "prompts"
RECORDS = "records.jsonl"


def is_prompt_summary(summary: Mapping[str, Any]) -> bool:
    """True for an ``eval-prompts`` summary (click runs have no ``settings``)."""
    return isinstance(summary.get("settings"), dict)


def read_prompt_records(run_dir: Path) -> list[dict[str, Any]]:
    """The run's object records, first line per id, in dataset order."""
    path = Path(run_dir) / RECORDS
    seen: dict[str, dict[str, Any]] = {}
    for rec in read_jsonl(path) if path.exists() else []:
        seen.setdefault(rec["id"], rec)
    return sorted(seen.values(), key=lambda r: tuple(r["order"]))


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, std) or (None, None) for no values; None keeps summary.json strict JSON."""
    if not values:
        return None, None
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std())


def summarize_prompts(records: Sequence[Mapping[str, Any]], settings: Sequence[str]) -> dict:
    """Per-setting metrics from successful object records (see the module docstring)."""
    out: dict[str, dict[str, Any]] = {}
    for key in settings:
        per = [r["settings"][key] for r in records]
        miou, miou_std = _stats([float(np.mean(p["iou"])) for p in per])
        mbiou, mbiou_std = _stats([float(np.mean(p["biou"])) for p in per])
        stab = [p["stability"] for p in per if p["stability"] is not None]
        stability, stability_std = _stats(stab)
        out[key] = {
            "miou": miou,
            "miou_std": miou_std,
            "miou_first": _stats([p["iou"][0] for p in per])[0],
            "mbiou": mbiou,
            "mbiou_std": mbiou_std,
            "mbiou_first": _stats([p["biou"][0] for p in per])[0],
            "stability": stability,
            "stability_std": stability_std,
            "n": len(per),
            "draws": max((len(p["iou"]) for p in per), default=None),
        }
    return out


def prompt_run_label(meta: Mapping[str, Any]) -> str:
    """Method name for tables: the model (or checkpoint stem) [+ plugin stem]."""
    from steadysam.eval.runner import net_name

    return net_name(meta.get("model"), meta.get("checkpoint") or "?", meta.get("plugin"))


def finalize_prompts(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write summary.json (``meta`` + ``settings`` + errors), summary.md and miou.png.
    Idempotent: safe to call again on a finished run."""
    run_dir = Path(run_dir)
    records = read_prompt_records(run_dir)
    ok = [r for r in records if "error" not in r]
    errors = [
        {"id": r["id"], "image": r["image"], "error": r["error"]} for r in records if "error" in r
    ]
    order = [str(s) for s in parse_settings(meta["prompts"])]
    timing = {k: float(sum(r["timing"].get(k, 0.0) for r in ok)) for k in ("decoder", "wall")}
    timing["encoder"] = float(sum({r["image"]: r["timing"]["encoder"] for r in ok}.values()))
    summary = {
        "kind": KIND,
        "label": prompt_run_label(meta),
        **meta,
        "setting_order": order,
        "settings": summarize_prompts(ok, order),
        "num_samples": len(ok),
        "num_errors": len(errors),
        "errors": errors,
        "timing": timing,
    }
    atomic_write_text(run_dir / "summary.json", dump_json(summary))
    text = f"# {summary['label']} on {_title(summary)}: prompt robustness\n\n"
    text += setting_table(summary)
    if errors:
        text += "\n## Errors\n\n" + "".join(f"- `{e['id']}`: {e['error']}\n" for e in errors)
    atomic_write_text(run_dir / "summary.md", text)
    if ok:
        plot_miou_vs_setting([summary], run_dir / "miou.png")
    return summary


def _pct(v: float | None) -> str:
    return _f(None if v is None else 100 * v)


NOTES = (
    "mIoU / mBIoU in %: mean over objects of the mean over draws (1st: first draw only); "
    "boundary width 0.02 x image diagonal. ST (stability): mean pairwise IoU between the "
    "draws' masks, – for the deterministic GT box.\n"
)


def setting_table(summary: Mapping[str, Any]) -> str:
    """One run: a row per setting."""
    lines = [
        "| Setting | draws | #Obj | mIoU | mIoU (1st) | mBIoU | mBIoU (1st) | ST |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in summary["setting_order"]:
        m = summary["settings"][key]
        cells = [
            key,
            _f(m["draws"]),
            str(m["n"]),
            _pct(m["miou"]),
            _pct(m["miou_first"]),
            _pct(m["mbiou"]),
            _pct(m["mbiou_first"]),
            _pct(m["stability"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + NOTES


def _union_order(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    order: list[str] = []
    for s in summaries:
        order += [k for k in s["setting_order"] if k not in order]
    return order


# Prompt runs (docs/eval.md, "Reports"): a different seed or number of draws means other
# prompts drawn from the same distributions, and other settings mean other columns: side by
# side is still meaningful, so these are stated (in the labels, and as warnings); a different
# ignore mode on the same dataset is a different ground truth and is refused.
PROMPT_STATED = ("seed", "draws", "precision")


def comparability_warnings(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    """Differences that make prompt runs not strictly comparable (different prompts drawn)."""
    warnings = []
    for key, what in (("seed", "seeds"), ("draws", "draws"), ("prompts", "prompt settings")):
        values = {str(s.get(key)) for s in summaries}
        if len(values) > 1:
            warnings.append(
                f"runs use different {what} ({', '.join(sorted(values))}): they were not "
                "given the same prompts"
            )
    return warnings


def prompt_report_table(summaries: Sequence[Mapping[str, Any]]) -> str:
    """Several runs: a row per run, a column per setting holding mIoU / mBIoU / ST (%)."""
    order = _union_order(summaries)
    lines = [
        "| Method | Dataset | #Obj | " + " | ".join(order) + " |",
        "|" + "---|" * (len(order) + 3),
    ]
    for s in summaries:
        cells = [s.get("label", "?"), _title(s), str(s.get("num_samples", "?"))]
        for key in order:
            m = s["settings"].get(key)
            cells.append(
                "–"
                if m is None
                else f"{_pct(m['miou'])} / {_pct(m['mbiou'])} / {_pct(m['stability'])}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nCells: mIoU / mBIoU / ST. " + NOTES


def _tick(key: str) -> str:
    """Axis label of a setting: "noisy-box:0.4" -> "noisy box 0.4", "points:1" -> "1 point"."""
    kind, _, value = key.partition(":")
    if kind == "points":
        return f"{value} point" + ("" if value == "1" else "s")
    return kind.replace("-", " ") + (f" {value}" if value else "")


def plot_miou_vs_setting(summaries: Sequence[Mapping[str, Any]], path: Path) -> None:
    """mIoU (%) against the prompt setting (x: the settings in order), one curve per run."""
    order = _union_order(summaries)
    fig, (ax,) = new_figure(max(6.0, 1.2 * len(order)), 4.0)
    for s in summaries:
        y = [
            100 * s["settings"][k]["miou"]
            if k in s["settings"] and s["settings"][k]["miou"] is not None
            else np.nan
            for k in order
        ]
        ax.plot(range(len(order)), y, marker="o", label=f"{s.get('label', '?')} – {_title(s)}")
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([_tick(k) for k in order], fontsize=8)
    ax.set_xlabel("prompt setting")
    ax.set_ylabel("mIoU (%)")
    save_png(fig, path)


def prompt_report(
    summaries: Sequence[Mapping[str, Any]],
    out: str | Path | None = None,
    paths: Sequence[str] | None = None,
) -> str:
    """Side-by-side markdown of prompt runs; with ``out`` also writes report.md and
    miou_vs_prompt.png there. Runs of one dataset with different ignore modes are refused
    (``ReportError``); other differences are stated in the labels and printed to stderr.
    ``paths``: the runs' folders, to tell apart runs with the same label."""
    paths = list(paths) if paths is not None else [f"run {i + 1}" for i in range(len(summaries))]
    summaries = [dict(s) for s in summaries]
    labels, notes = check_comparable(summaries, paths, {}, PROMPT_STATED)
    warnings = comparability_warnings(summaries)
    for w in warnings + notes:
        _warn(w)
    shown = [{**s, "label": lab} for s, lab in zip(summaries, labels, strict=True)]
    md = "# Prompt robustness, runs side by side\n\n" + prompt_report_table(shown)
    if warnings or notes:
        md += "\n" + "".join(f"**Warning:** {w}.\n" for w in warnings)
        md += "".join(f"**Note:** {n}.\n" for n in notes)
    if out is not None:
        o = prepare_report_dir(out)
        write_report_files(o, md, [(plot_miou_vs_setting, "miou_vs_prompt.png")], shown)
    return md
