"""Prompt-robustness evaluation (Stable-SAM protocol): resumable runs over a dataset.

For every object, each prompt setting (``steadysam.prompts``: GT box, noisy boxes, random
points) is drawn ``draws`` times (once for the deterministic GT box) from a generator seeded by
(seed, setting, object id, draw index), so every model evaluated with the same seed sees exactly
the same prompts. The image embedding is computed once per image and reused for every setting
and draw. Each prompt is decoded alone: single-mask output (mask token 0), no previous-mask
input and no FocSAM refiner (the refiner belongs to click sessions), thresholded at 0 at the
original resolution by the predictor's own postprocessing.

A run directory holds::

    config.json    configuration (+ the weights digest of the built model), versions, invocations
    records.jsonl  one JSON line per finished object, appended + fsync'ed: per setting the
                   per-draw IoU and boundary IoU, the prompt stability and the drawn prompts
    summary.json   per-setting mIoU / mBIoU / stability (atomic), summary.md, miou.png

Re-running the same command resumes: objects with a line are skipped (a truncated last line
left by a kill is cut off); a folder holding another configuration, other weights (their
state digest differs) or anything not written by this command is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steadysam.atomic import atomic_write_text
from steadysam.cli_common import PRECISIONS
from steadysam.eval.datasets import Dataset, ObjectGT, SampleError, load_dataset, require_images
from steadysam.eval.metrics import boundary_dilation, iou, mask_boundary, mean_pairwise_iou
from steadysam.eval.prompt_report import finalize_prompts
from steadysam.eval.report import read_jsonl
from steadysam.eval.runner import (
    JsonlAppender,
    RunError,
    RunFolder,
    _eval_item,
    build_predictor,
    check_choice,
    check_device,
    check_int,
    check_run_dir,
    net_name,
    require_results,
    weights_digest,
    write_run_config,
)
from steadysam.prompts import Prompt, PromptSetting, draw_prompt, parse_settings

DEFAULT_PROMPTS = "gt-box,noisy-box:0.4,points:1,points:3"
IGNORE_MODES = ("exclude", "background")
MAX_DRAWS = 1000
# Changing any of these makes old records incomparable, so resume refuses (and so does a
# different weights digest, see runner.write_run_config).
SEMANTIC_KEYS = tuple("dataset model checkpoint plugin prompts draws seed ignore precision".split())
RECORDS = "records.jsonl"


@dataclass
class PromptEvalConfig:
    """Everything that defines a prompt-robustness run.

    Attributes:
        dataset: dataset name (``steadysam.eval.datasets``), e.g. ``GrabCut`` or ``folder``.
        prompts: comma-separated settings (``steadysam.prompts.parse_settings``).
        model / checkpoint / plugin / random_init / download / trust_checkpoint: the network,
            as for ``steadysam.build_model``.
        draws: prompts drawn per object for each random setting (the GT box is drawn once).
        seed: >= 0; with the same seed every model sees the same prompts.
        ignore: ``exclude`` (ignore-label pixels leave IoU and boundary IoU, as RITM) or
            ``background``.
        limit: evaluate only the first N images.
    """

    dataset: str
    prompts: str = DEFAULT_PROMPTS
    model: str | None = None
    checkpoint: str | None = None
    plugin: str | None = None
    random_init: bool = False
    download: bool = False
    trust_checkpoint: bool = False
    data_root: str | None = None
    draws: int = 10
    seed: int = 0
    ignore: str = "exclude"
    limit: int | None = None
    out: str | None = None
    device: str | None = None
    cache_dir: str | None = None
    progress: bool = True
    retry_errors: bool = False
    precision: str = "fp32"

    def settings(self) -> list[PromptSetting]:
        try:
            return parse_settings(self.prompts)
        except ValueError as e:
            raise RunError(f"--prompts: {e}") from None

    def validate(self) -> None:
        """Raise RunError for a bad option, naming it; normalises ``prompts``."""
        self.prompts = ",".join(str(s) for s in self.settings())
        # One draw is a valid single-prompt protocol; stability (agreement between draws)
        # then has no pair to compare and is null for every setting.
        check_int("--draws", self.draws, 1, MAX_DRAWS)
        check_int("--seed", self.seed, 0)
        if self.limit is not None:
            check_int("--limit", self.limit, 1)
        check_choice("--ignore", self.ignore, IGNORE_MODES)
        check_choice("--precision", self.precision, PRECISIONS)
        check_device(self.device)

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        net = net_name(self.model, self.checkpoint, self.plugin)
        name = f"{net}-{self.dataset}-prompts-s{self.seed}"
        return Path("runs") / (name if self.precision == "fp32" else f"{name}-{self.precision}")


def _key(text: str) -> int:
    """A stable 64-bit integer for a string (seed material; Python's hash() is salted)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def prompt_rng(seed: int, setting: PromptSetting, object_id: str, draw: int) -> np.random.Generator:
    """The generator of draw ``draw`` of ``setting`` for object ``object_id``: independent of
    the model, of the other settings, of evaluation order and of resume."""
    return np.random.default_rng([int(seed), _key(str(setting)), _key(object_id), int(draw)])


def object_prompts(
    setting: PromptSetting, gt: np.ndarray, seed: int, object_id: str, draws: int
) -> list[Prompt]:
    """The prompts of one object for one setting: ``draws`` of them (one for the GT box)."""
    n = 1 if setting.deterministic else draws
    return [draw_prompt(setting, gt, prompt_rng(seed, setting, object_id, k)) for k in range(n)]


def _predict(predictor: Any, prompt: Prompt, shape: tuple[int, ...]) -> np.ndarray:
    """One single-mask prediction (no mask input), H x W bool at the original resolution."""
    masks, _, _ = predictor.predict(**prompt.predict_kwargs(), multimask_output=False)
    mask = np.asarray(masks)[0]
    if mask.shape != shape:
        raise SampleError(f"predictor returned a {mask.shape} mask for {shape} GT")
    return mask if mask.dtype == bool else mask > 0


def _eval_object(cfg: PromptEvalConfig, predictor: Any, ob: ObjectGT) -> dict[str, Any]:
    """Every setting and draw on one object; returns the record's result fields."""
    t_start = time.perf_counter()
    ignore = ob.ignore if cfg.ignore == "exclude" else None
    keep = ~ignore if ignore is not None else np.ones(ob.gt.shape, bool)
    # metrics.boundary_iou, with the GT boundary computed once per object.
    d = boundary_dilation(ob.gt.shape)
    gt_boundary = mask_boundary(ob.gt & keep, d)
    decoder = 0.0
    results: dict[str, Any] = {}
    for setting in cfg.settings():
        prompts = object_prompts(setting, ob.gt, cfg.seed, ob.id, cfg.draws)
        masks = []
        for prompt in prompts:
            t0 = time.perf_counter()
            masks.append(_predict(predictor, prompt, ob.gt.shape))
            decoder += time.perf_counter() - t0
        results[str(setting)] = {
            "iou": [iou(m, ob.gt, ignore) for m in masks],
            "biou": [iou(mask_boundary(m & keep, d), gt_boundary) for m in masks],
            # Agreement between the draws' masks; None for a single (deterministic) draw.
            "stability": mean_pairwise_iou(masks),
            "prompts": [p.to_json() for p in prompts],
        }
    return {
        "height": int(ob.gt.shape[0]),
        "width": int(ob.gt.shape[1]),
        "area": int(np.count_nonzero(ob.gt)),
        "ignore_pixels": int(np.count_nonzero(ob.ignore)) if ob.ignore is not None else 0,
        "settings": results,
        "timing": {"decoder": decoder, "wall": time.perf_counter() - t_start},
    }


def _start(cfg: PromptEvalConfig, folder: RunFolder, predictor: Any) -> dict[str, Any]:
    """Write config.json (with the weights digest of the built model, checked against the
    recorded one on resume); drop error lines for ``retry_errors``. Returns the summary meta."""
    now = dataclasses.asdict(cfg)
    digest = write_run_config(folder, now, weights_digest(predictor))
    records = folder.path / RECORDS
    if cfg.retry_errors and records.exists():
        keep = [r for r in read_jsonl(records) if "error" not in r]
        try:
            atomic_write_text(records, "".join(json.dumps(r) + "\n" for r in keep))
        except OSError as e:
            raise RunError(f"cannot write {records}: {e.strerror or e}") from None
    return {**{k: now[k] for k in SEMANTIC_KEYS}, "weights_digest": digest}


def evaluate_prompts(
    config: PromptEvalConfig | None = None,
    *,
    predictor: Any = None,
    predictor_factory: Callable[[PromptEvalConfig], Any] | None = None,
    loaded_dataset: Dataset | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run (or resume) a prompt-robustness evaluation and return the summary.

    Arguments:
        config: the run configuration; alternatively pass its fields as keyword arguments,
            e.g. ``evaluate_prompts(model="sam_vit_l", dataset="folder", data_root="DIS-VD")``.
        predictor: a ready predictor (``set_image`` / ``predict`` of ``steadysam.Predictor``).
        predictor_factory: builds the predictor from the config (default: the runner's
            ``build_predictor``).
        loaded_dataset: an already listed dataset (default: ``load_dataset(cfg.dataset,
            cfg.data_root)``).

    Returns:
        The summary dict written to ``summary.json`` (``settings`` -> per-setting metrics).
    """
    cfg = config if config is not None else PromptEvalConfig(**kwargs)
    cfg.validate()
    if not cfg.model and not cfg.checkpoint and predictor is None and predictor_factory is None:
        raise RunError("give --model NAME or --checkpoint FILE")
    ds = loaded_dataset if loaded_dataset is not None else load_dataset(cfg.dataset, cfg.data_root)
    require_images(ds, cfg.dataset)
    run_dir = cfg.run_dir()
    # The folder is checked before the model is built; config.json is written after, with the
    # weights digest of the built model.
    folder = check_run_dir(
        run_dir, "prompts", dataclasses.asdict(cfg), SEMANTIC_KEYS, ds.root, cfg.data_root
    )
    if predictor is None:
        predictor = (predictor_factory or build_predictor)(cfg)
    meta = _start(cfg, folder, predictor)
    done = (
        {r["id"] for r in read_jsonl(run_dir / RECORDS)} if (run_dir / RECORDS).exists() else set()
    )
    items = list(enumerate(ds.items))[: cfg.limit]
    out = JsonlAppender(run_dir / RECORDS)
    try:
        _loop(cfg, predictor, items, done, out)
    finally:
        out.close()
    meta.update(data_root=str(ds.root), num_images=len(items))
    summary = finalize_prompts(run_dir, meta)
    require_results(summary, run_dir, "objects", f"dataset {cfg.dataset} at {ds.root}")
    return summary


def _loop(
    cfg: PromptEvalConfig, predictor: Any, items: list, done: set[str], out: JsonlAppender
) -> None:
    from tqdm import tqdm

    # Objects are known only once masks are decoded; for one-object-per-file datasets the
    # number of mask files is exact, for instance maps it is a lower bound.
    sources = sum(len(item.masks) for _, item in items)
    first = str(cfg.settings()[0])
    ious: list[float] = []

    def emit(rec: dict[str, Any]) -> None:
        out.write(rec)
        bar.update(1)
        if "settings" in rec:
            ious.append(float(np.mean(rec["settings"][first]["iou"])))
            bar.set_postfix({f"mIoU {first}": f"{np.mean(ious):.3f}"}, refresh=False)

    with tqdm(
        total=sources,
        initial=min(len(done), sources),
        unit="obj",
        disable=not cfg.progress,
        dynamic_ncols=True,
    ) as bar:
        for index, item in items:
            _eval_item(cfg, predictor, item, index, done, emit, eval_object=_eval_object)
