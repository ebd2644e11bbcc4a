"""``steadysam eval``, ``steadysam eval-prompts`` and ``steadysam report`` subcommands (thin:
parse, call the library).

The top-level CLI calls :func:`add_parsers`; ``python -m steadysam eval ...`` works on
its own as well (handy under ``torchrun -m``). Exit codes: 0 ok, 1 runtime failure, 2 bad
arguments or input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from steadysam.cli_common import add_debug_arg, add_model_args
from steadysam.clicks import RULES
from steadysam.eval.datasets import LOADERS, DatasetError
from steadysam.eval.runner import IGNORE_MODES
from steadysam.modes import MODES

EPILOG_EVAL = """\
datasets: {names} (aliases: DAVIS345, COCO_MVal, voc, ...); see docs/eval.md.
examples:
  steadysam eval --model sam_vit_b --download --dataset GrabCut --data-root data
  steadysam eval --model focsam_vit_h --checkpoint iter_160000.pth --dataset GrabCut
  steadysam eval --checkpoint my.safetensors --dataset davis --clicks 100 --clicker focsam
  torchrun --nproc_per_node 4 -m steadysam eval --model sam_vit_h --dataset sbd
Re-running the same command resumes an interrupted run (same --out).
"""

EPILOG_PROMPTS = """\
prompt settings (--prompts, comma-separated, in order):
  gt-box         the tight box of the GT mask (one draw)
  noisy-box:S    DN-DETR box noise of scale S, 0 < S <= 2 (sam-hq box_noise)
  points:K       K random positive points inside the GT mask, 1 <= K <= 100
datasets: {names}
  (HQ-SAM's sets: dis, thinobject, coift, hrsod in sam-hq's data/ layout, e.g.
  --data-root data finds data/DIS5K/DIS-VD); see docs/eval.md.
examples:
  steadysam eval-prompts --model sam_vit_l --checkpoint sam_vit_l.pth --dataset dis \\
      --data-root data --prompts gt-box,noisy-box:0.4,points:1,points:3
  steadysam eval-prompts --model sam_vit_l --checkpoint sam_vit_l.pth --plugin rts.safetensors \\
      --dataset GrabCut --draws 10 --seed 0
  steadysam report runs/a runs/b --out report/
Same --seed: every model sees the same prompts. Re-running the same command resumes (same --out).
"""


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="dataset name (see below)")
    p.add_argument(
        "--data-root",
        help="dataset folder or a folder holding it (default: $STEADYSAM_DATA or ./data)",
    )


def _run_args(p: argparse.ArgumentParser, items: str) -> None:
    """Options every evaluation run takes (``items``: what a retry evaluates again)."""
    p.add_argument("--limit", type=int, help="evaluate only the first N images (smoke test)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--cache-dir", help="embedding disk cache folder (predictor)")
    p.add_argument(
        "--retry-errors",
        action="store_true",
        help=f"on resume, evaluate again the {items} that failed before",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_arg(p)


def _default_model(args: argparse.Namespace) -> None:
    """No --model and no --checkpoint: the built-in demo model, with its notice."""
    if not args.model and not args.checkpoint and not args.random_init:
        from steadysam.weights.factory import print_demo_notice
        from steadysam.weights.registry import DEFAULT_MODEL

        args.model = DEFAULT_MODEL
        print_demo_notice()


def _refine_at(text: str) -> int | None:
    """``--refine-at``: a 0-based click index, or ``never`` (None: the refiner never runs).
    The range is checked by ``EvalConfig.validate`` (it depends on --clicks)."""
    if text.strip().lower() == "never":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a 0-based click index or never, not {text!r}"
        ) from None


def _eval_parser(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    _dataset_args(p)
    p.add_argument("--clicks", type=int, default=20, help="click budget per object (default 20)")
    p.add_argument(
        "--clicker",
        choices=RULES,
        default="ritm",
        help="click simulator: ritm (deterministic, ignore label) or focsam "
        "(random tie-break, no ignore label); default ritm",
    )
    p.add_argument(
        "--protocol",
        choices=MODES,
        default="focsam",
        help="focsam: single mask + previous logits + refiner once; sam-best: "
        "multimask, keep the best predicted-IoU mask; default focsam",
    )
    p.add_argument("--out", help="run directory (default runs/<model>-<dataset>-...)")
    p.add_argument("--seed", type=int, default=42, help="seed of the focsam tie-break (42)")
    p.add_argument(
        "--inner-k",
        type=float,
        default=1.0,
        help="focsam clicker candidate factor (1.0 at test, 1.7 in training)",
    )
    p.add_argument(
        "--refine-at",
        type=_refine_at,
        default=1,
        metavar="I|never",
        help="0-based click index at which FocSAM's refiner runs, below --clicks (default 1); "
        "never: no refiner",
    )
    p.add_argument(
        "--ignore",
        choices=IGNORE_MODES,
        default="auto",
        help="ignore-label pixels: auto = exclude for ritm, background for focsam",
    )
    _run_args(p, "samples")


def _prompts_parser(p: argparse.ArgumentParser) -> None:
    from steadysam.eval.prompt_runner import DEFAULT_PROMPTS
    from steadysam.eval.prompt_runner import IGNORE_MODES as PROMPT_IGNORE_MODES

    add_model_args(p)
    _dataset_args(p)
    p.add_argument(
        "--prompts",
        default=DEFAULT_PROMPTS,
        help=f"comma-separated prompt settings, in order (default {DEFAULT_PROMPTS})",
    )
    p.add_argument(
        "--draws",
        type=int,
        default=10,
        help="prompts drawn per object for each random setting (default 10; GT box: 1)",
    )
    p.add_argument("--seed", type=int, default=0, help="prompt seed, >= 0 (default 0)")
    p.add_argument(
        "--ignore",
        choices=PROMPT_IGNORE_MODES,
        default="exclude",
        help="ignore-label pixels (GrabCut/Berkeley band): exclude from IoU and boundary IoU "
        "(default) or count as background",
    )
    p.add_argument("--out", help="run directory (default runs/<model>-<dataset>-prompts-s<seed>)")
    _run_args(p, "objects")


def add_parsers(subparsers: Any) -> None:
    """Add the ``eval``, ``eval-prompts`` and ``report`` subcommands to an argparse
    subparsers object."""
    pe = subparsers.add_parser(
        "eval",
        help="NoC / mIoU / SPC / stability evaluation of a model on a dataset",
        description="Click-simulated interactive-segmentation evaluation (full click budget, "
        "resumable, torchrun-shardable). Writes config.json, per-sample JSON lines, "
        "summary.json, results.md and plots into the run directory.",
        epilog=EPILOG_EVAL.format(names=", ".join(sorted(LOADERS))),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _eval_parser(pe)
    pe.set_defaults(func=cmd_eval)
    pp = subparsers.add_parser(
        "eval-prompts",
        help="prompt-robustness evaluation: GT box, noisy boxes, random points (Stable-SAM)",
        description="Evaluates a model with box and point prompts of several quality levels "
        "drawn from each object's GT mask (seeded: every model sees the same prompts). Single "
        "mask output, no previous mask, no refiner. Reports per setting mIoU, mBIoU and "
        "stability (mean pairwise IoU between the masks of repeated draws). Writes config.json, "
        "records.jsonl (resumable), summary.json, summary.md and miou.png into the run "
        "directory.",
        epilog=EPILOG_PROMPTS.format(names=", ".join(sorted(LOADERS))),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _prompts_parser(pp)
    pp.set_defaults(func=cmd_eval_prompts)
    pr = subparsers.add_parser(
        "report",
        help="put finished runs side by side (markdown table + overlaid curves)",
        description="Reads RUN/summary.json of each run; prints a markdown table in the "
        "papers' layout and writes report.md, miou_curves.png and delta_iou_hist.png to --out. "
        "For eval-prompts runs: one row per run, mIoU / mBIoU / stability per prompt setting, "
        "and miou_vs_prompt.png. Click and prompt runs cannot be mixed.",
    )
    pr.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or summary.json)")
    pr.add_argument("--out", default="report", help="output folder (default ./report)")
    add_debug_arg(pr)
    pr.set_defaults(func=cmd_report)


def cmd_eval(args: argparse.Namespace) -> int:
    from steadysam.eval.runner import EvalConfig, RunError, evaluate

    cfg = EvalConfig(
        dataset=args.dataset,
        model=args.model,
        checkpoint=args.checkpoint,
        plugin=args.plugin,
        random_init=args.random_init,
        download=args.download,
        trust_checkpoint=args.trust_checkpoint,
        data_root=args.data_root,
        clicks=args.clicks,
        clicker=args.clicker,
        protocol=args.protocol,
        out=args.out,
        seed=args.seed,
        inner_k=args.inner_k,
        refine_at=args.refine_at,
        ignore=args.ignore,
        limit=args.limit,
        device=args.device,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        retry_errors=args.retry_errors,
        precision=args.precision,
    )
    try:
        cfg.validate()  # before the demo notice and the model: bad options fail fast
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _default_model(args)
    cfg.model = args.model
    try:
        summary = evaluate(cfg)
    except (DatasetError, RunError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary is None or int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 speaks for the run
    noc = summary["noc"]
    print(
        f"{summary['label']} on {summary['dataset']}: {summary['num_samples']} samples, "
        f"NoC@85/90/95 {noc['85']:.2f}/{noc['90']:.2f}/{noc['95']:.2f}, "
        f"NoF@90 {summary['nof']['90']}; run dir {cfg.run_dir()}"
    )
    if summary["num_errors"]:
        print(
            f"warning: {summary['num_errors']} samples failed, listed in summary.json "
            f"'errors': {json.dumps(summary['errors'][:3])}...",
            file=sys.stderr,
        )
    return 0


def cmd_eval_prompts(args: argparse.Namespace) -> int:
    """Bad options and input raise ValueErrors (RunError, DatasetError), which the top-level
    CLI turns into a one-line message and exit code 2."""
    from steadysam.eval.prompt_runner import PromptEvalConfig, evaluate_prompts

    cfg = PromptEvalConfig(
        dataset=args.dataset,
        prompts=args.prompts,
        model=args.model,
        checkpoint=args.checkpoint,
        plugin=args.plugin,
        random_init=args.random_init,
        download=args.download,
        trust_checkpoint=args.trust_checkpoint,
        data_root=args.data_root,
        draws=args.draws,
        seed=args.seed,
        ignore=args.ignore,
        limit=args.limit,
        out=args.out,
        device=args.device,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        retry_errors=args.retry_errors,
        precision=args.precision,
    )
    cfg.validate()  # before the demo notice and the model: bad options fail fast
    _default_model(args)
    cfg.model = args.model
    summary = evaluate_prompts(cfg)
    print(f"{summary['label']} on {summary['dataset']}: {summary['num_samples']} objects")
    for key in summary["setting_order"]:
        m = summary["settings"][key]
        cells = [
            f"{name} {'–' if m[k] is None else f'{100 * m[k]:.2f}'}"
            for name, k in (("mIoU", "miou"), ("mBIoU", "mbiou"), ("ST", "stability"))
        ]
        print(f"  {key:<16} " + "  ".join(cells))
    print(f"run dir {cfg.run_dir()}")
    if cfg.draws == 1:
        print("note: stability (ST) compares the masks of 2+ draws: – with --draws 1")
    if summary["num_errors"]:
        print(
            f"warning: {summary['num_errors']} objects failed, listed in summary.json "
            f"'errors': {json.dumps(summary['errors'][:3])}...",
            file=sys.stderr,
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from steadysam.eval.report import report

    try:
        md = report(args.runs, args.out)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(md)
    return 0


if __name__ == "__main__":  # python -m steadysam.<this>.cli ... == python -m steadysam ...
    from steadysam.cli import main

    sys.exit(main())
