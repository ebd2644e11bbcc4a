"""Resumable, shardable NoC evaluation runs.

A run directory holds::

    config.json          exact configuration, versions, invocations (resume checks it)
    parts/rank-NNN.jsonl one JSON line per finished sample, appended + fsync'ed per sample
    samples.jsonl        merged per-sample results in dataset order (written at the end)
    summary.json         run metrics (atomic write), results.md, miou_curve.png, delta_iou_hist.png

Every sample runs the full click budget. Restarting the same command after a crash (even
SIGKILL) skips every sample that has a line, tolerating a truncated last line. Under
``torchrun`` each rank takes every WORLD_SIZE-th image and writes its own part file; rank 0
merges. Per-sample results do not depend on sharding (the FocSAM tie-break generator is seeded
per sample id), so the merged result equals a single-process run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steadysam.atomic import atomic_write_text
from steadysam.clicks import Clicker
from steadysam.eval.datasets import (
    Dataset,
    DatasetError,
    ImageItem,
    ObjectGT,
    SampleError,
    load_dataset,
)
from steadysam.eval.metrics import iou, sample_metrics
from steadysam.eval.report import finalize, read_jsonl, read_records

PROTOCOLS = ("focsam", "sam-best")
CLICKERS = ("ritm", "focsam")
IGNORE_MODES = ("auto", "exclude", "background")
# Changing any of these makes old results incomparable, so resume refuses.
SEMANTIC_KEYS = tuple(
    "dataset model checkpoint plugin clicks clicker protocol seed inner_k refine_at ignore".split()
)


class RunError(ValueError):
    """The run cannot start (bad configuration, run directory of another configuration)."""


@dataclass
class EvalConfig:
    """Everything that defines a run. ``model`` and/or ``checkpoint`` pick the network;
    ``plugin`` is an optional Stable-SAM plugin file put on top of it."""

    dataset: str
    model: str | None = None
    checkpoint: str | None = None
    plugin: str | None = None
    data_root: str | None = None
    clicks: int = 20
    clicker: str = "ritm"
    protocol: str = "focsam"
    out: str | None = None
    seed: int = 42
    inner_k: float = 1.0
    refine_at: int = 1
    ignore: str = "auto"
    limit: int | None = None
    device: str | None = None
    cache_dir: str | None = None
    progress: bool = True
    retry_errors: bool = False

    def validate(self) -> None:
        if self.clicks < 1:
            raise RunError("--clicks must be >= 1")
        if self.clicker not in CLICKERS:
            raise RunError(f"--clicker must be one of {CLICKERS}")
        if self.protocol not in PROTOCOLS:
            raise RunError(f"--protocol must be one of {PROTOCOLS}")
        if self.ignore not in IGNORE_MODES:
            raise RunError(f"--ignore must be one of {IGNORE_MODES}")
        if not (self.inner_k >= 1.0 or self.inner_k < 0):
            raise RunError("--inner-k must be >= 1 (or < 0 for the whole error region)")

    def ignore_mode(self) -> str:
        """RITM excludes ignore pixels; FocSAM has no ignore label (ignore = background)."""
        if self.ignore != "auto":
            return self.ignore
        return "exclude" if self.clicker == "ritm" else "background"

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        net = net_name(self.model, self.checkpoint, self.plugin)
        return Path("runs") / f"{net}-{self.dataset}-{self.protocol}-{self.clicker}-{self.clicks}c"


def net_name(model: str | None, checkpoint: str | None, plugin: str | None = None) -> str:
    """Short network name for run folders and tables: the model name (else the checkpoint's
    file stem), plus ``+<plugin stem>`` with a Stable-SAM plugin."""
    net = model or Path(checkpoint or "model").stem
    return f"{net}+{Path(plugin).stem}" if plugin else net


def versions() -> dict[str, str]:
    import platform

    import cv2

    out = {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__}
    for mod in ("torch", "steadysam"):
        try:
            from importlib.metadata import version

            out[mod] = version(mod)
        except Exception:
            out[mod] = "unknown"
    return out


# ------------------------------------------------------------------------------- file helpers


class JsonlAppender:
    """Append-only JSON lines, each fsync'ed, after cutting a partial last line left by a kill."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


# ------------------------------------------------------------------------------ distributed


class _Dist:
    """Minimal torch.distributed wrapper; a no-op (and torch-free) for single-process runs."""

    def __init__(self, device: str | None) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.created = False
        self.dist = None
        if self.world <= 1:
            self.world, self.rank = 1, 0
            return
        import datetime

        import torch
        import torch.distributed as dist

        self.dist = dist
        if not dist.is_initialized():
            use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
            if use_cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            # Ranks wait for the slowest one at the end: a generous timeout, not gloo's 30 min.
            dist.init_process_group(
                "nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=24)
            )
            self.created = True
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def bcast(self, obj: Any) -> Any:
        if self.dist is None:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.created and self.dist is not None:
            self.dist.destroy_process_group()


# ---------------------------------------------------------------------------------- the run


def build_predictor(cfg: Any) -> Any:
    """Build ``steadysam.predictor.Predictor`` for a config's ``model`` / ``checkpoint`` /
    ``plugin`` (``EvalConfig`` or ``PromptEvalConfig``), on ``device`` with ``cache_dir``."""
    import steadysam
    from steadysam.predictor import Predictor

    kwargs: dict[str, Any] = {"checkpoint": cfg.checkpoint}
    if getattr(cfg, "plugin", None) is not None:
        kwargs["plugin"] = cfg.plugin  # only when given: build_model gained it late
    if cfg.model:
        model = steadysam.build_model(cfg.model, **kwargs)
    else:
        model = steadysam.build_model(**kwargs)
    device = cfg.device
    if device is None or device == "cuda":
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if device:
        model = model.to(device)
    model.eval()
    return Predictor(model, cache_dir=cfg.cache_dir)


def prepare_run_dir(
    run_dir: Path, now: dict[str, Any], semantic_keys: tuple[str, ...], world: int = 1
) -> None:
    """Create ``run_dir/config.json`` for the configuration ``now``, or check that the one
    there agrees with it on ``semantic_keys`` (RunError naming the differences) and append this
    invocation to it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    invocation = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv, "world": world}
    path = run_dir / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = {
            k: (old["config"].get(k), now.get(k))
            for k in semantic_keys
            if old["config"].get(k) != now.get(k)
        }
        if diff:
            raise RunError(
                f"{run_dir} holds a run with a different configuration {diff}; "
                "use another --out (or delete the directory)"
            )
        old["invocations"].append(invocation)
        old["config"] = now
        atomic_write_text(path, json.dumps(old, indent=2))
    else:
        doc = {"config": now, "versions": versions(), "invocations": [invocation]}
        atomic_write_text(path, json.dumps(doc, indent=2))


def _prepare_run_dir(cfg: EvalConfig, run_dir: Path, world: int) -> None:
    """Rank 0: create the directory or check that it holds the same configuration."""
    prepare_run_dir(run_dir, dataclasses.asdict(cfg), SEMANTIC_KEYS, world)
    (run_dir / "parts").mkdir(exist_ok=True)
    if cfg.retry_errors:
        for part in (run_dir / "parts").glob("rank-*.jsonl"):
            keep = [r for r in read_jsonl(part) if "error" not in r]
            atomic_write_text(part, "".join(json.dumps(r) + "\n" for r in keep))


def _error(oid: str, item: ImageItem, order: list[int], exc: BaseException) -> dict[str, Any]:
    msg = str(exc) if isinstance(exc, SampleError) else f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, SampleError):
        print(f"error on sample {oid}:\n{traceback.format_exc()}", file=sys.stderr)
    return {"id": oid, "image": item.key, "order": order, "error": msg}


def _eval_object(cfg: EvalConfig, predictor: Any, ob: ObjectGT) -> dict[str, Any]:
    """Run the full click budget on one object; returns the record's result fields."""
    exclude = cfg.ignore_mode() == "exclude" and ob.ignore is not None
    ignore = ob.ignore if exclude else None
    # Seeded by sample id, so the draw does not depend on sharding or resume order.
    rng = np.random.default_rng([cfg.seed, zlib.crc32(ob.id.encode())])
    clicker = Clicker(ob.gt, rule=cfg.clicker, ignore=ignore, inner_k=cfg.inner_k, rng=rng)
    session = predictor.new_object(mode=cfg.protocol, refine_at=cfg.refine_at)
    pred = np.zeros_like(ob.gt)
    ious: list[float] = []
    no_click: list[int] = []
    harness = 0.0
    t_start = time.perf_counter()
    for step in range(cfg.clicks):
        t0 = time.perf_counter()
        click = clicker.make_next_click(pred)
        harness += time.perf_counter() - t0
        if click is None:
            no_click.append(step)  # FocSAM re-uses its prompts: keep the previous prediction
        else:
            mask = np.asarray(session.click(click.x, click.y, positive=click.positive))
            if mask.shape != ob.gt.shape:
                raise SampleError(f"predictor returned a {mask.shape} mask for {ob.gt.shape} GT")
            pred = mask if mask.dtype == bool else mask > 0
        t0 = time.perf_counter()
        ious.append(iou(pred, ob.gt, ignore))
        harness += time.perf_counter() - t0
    wall = time.perf_counter() - t_start
    tm = getattr(session, "timings", {}) or {}
    return {
        "ious": ious,
        "clicks": [[c.x, c.y, int(c.positive)] for c in clicker.clicks],
        "num_clicks": len(clicker.clicks),
        "no_click_steps": no_click,
        "height": int(ob.gt.shape[0]),
        "width": int(ob.gt.shape[1]),
        "area": int(np.count_nonzero(ob.gt)),
        "ignore_pixels": int(np.count_nonzero(ob.ignore)) if ob.ignore is not None else 0,
        **sample_metrics(ious),
        "timing": {
            "decoder": float(tm.get("decoder", 0.0)),
            "refiner": float(tm.get("refiner", 0.0)),
            "harness": harness,
            "wall": wall,
        },
    }


def _eval_item(
    cfg: Any,
    predictor: Any,
    item: ImageItem,
    index: int,
    done: set[str],
    emit: Callable,
    eval_object: Callable[[Any, Any, ObjectGT], dict[str, Any]] = _eval_object,
) -> None:
    """Evaluate the not-yet-done objects of one image, emitting one record per sample.

    The image is encoded once; ``eval_object(cfg, predictor, ob)`` returns each record's result
    fields (with a ``timing`` dict, which gets the image's ``encoder`` seconds)."""
    todo: list[tuple[list[int], ObjectGT]] = []
    for si, src in enumerate(item.masks):
        if src.id in done:
            continue
        try:
            objs = src.load()
        except DatasetError:
            raise
        except Exception as e:  # unreadable/missing/empty mask: record it, go on
            emit(_error(src.id, item, [index, si, 0], e))
            continue
        todo += [([index, si, oi], ob) for oi, ob in enumerate(objs) if ob.id not in done]
    if not todo:
        return
    try:
        image = item.load_image()
        for _, ob in todo:
            if ob.gt.shape != image.shape[:2]:
                raise SampleError(
                    f"mask size {ob.gt.shape[1]}x{ob.gt.shape[0]} does not match image size "
                    f"{image.shape[1]}x{image.shape[0]} ({item.image_path})"
                )
        t0 = time.perf_counter()
        predictor.set_image(image)
        enc = getattr(predictor, "last_encoder_seconds", None)
        enc = float(time.perf_counter() - t0 if enc is None else enc)
    except Exception as e:
        for order, ob in todo:
            emit(_error(ob.id, item, order, e))
        return
    for order, ob in todo:
        try:
            rec = {"id": ob.id, "image": item.key, "order": order}
            rec.update(eval_object(cfg, predictor, ob))
            rec["timing"]["encoder"] = enc
        except Exception as e:  # one bad sample must not cost the others their results
            rec = _error(ob.id, item, order, e)
        emit(rec)


def evaluate(
    config: EvalConfig | None = None,
    *,
    predictor: Any = None,
    predictor_factory: Callable[[EvalConfig], Any] | None = None,
    loaded_dataset: Dataset | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run (or resume) an evaluation and return the summary (on every rank).

    Args:
        config: the run configuration; alternatively pass its fields as keyword arguments,
            e.g. ``evaluate(model="focsam_tiny", dataset="GrabCut", clicks=20)``.
        predictor: a ready predictor (set_image / new_object / click interface).
        predictor_factory: builds the predictor from the config (default: :func:`build_predictor`).
        loaded_dataset: an already listed dataset (default: ``load_dataset(cfg.dataset,
            cfg.data_root)``).
    """
    cfg = config if config is not None else EvalConfig(**kwargs)
    cfg.validate()
    if not cfg.model and not cfg.checkpoint and predictor is None and predictor_factory is None:
        raise RunError("give --model NAME or --checkpoint FILE")
    ds = loaded_dataset if loaded_dataset is not None else load_dataset(cfg.dataset, cfg.data_root)
    run_dir = cfg.run_dir()
    dist = _Dist(cfg.device)
    try:
        err = None
        if dist.rank == 0:
            try:
                _prepare_run_dir(cfg, run_dir, dist.world)
            except RunError as e:
                err = str(e)
        err = dist.bcast(err)
        if err:
            raise RunError(err)
        done = {r["id"] for r in read_records(run_dir)}
        items = list(enumerate(ds.items))[: cfg.limit]
        mine = items[dist.rank :: dist.world]
        if predictor is None:
            predictor = (predictor_factory or build_predictor)(cfg)
        out = JsonlAppender(run_dir / "parts" / f"rank-{dist.rank:03d}.jsonl")
        try:
            _loop(cfg, predictor, mine, done, out, show=cfg.progress and dist.rank == 0)
        finally:
            out.close()
        dist.barrier()
        summary = None
        if dist.rank == 0:
            meta = {k: getattr(cfg, k) for k in SEMANTIC_KEYS}
            meta.update(ignore=cfg.ignore_mode(), data_root=str(ds.root), num_images=len(items))
            summary = finalize(run_dir, meta, cfg.clicks)
        return dist.bcast(summary)
    finally:
        dist.close()


def _loop(
    cfg: EvalConfig, predictor: Any, mine: list, done: set[str], out: JsonlAppender, show: bool
) -> None:
    from tqdm import tqdm

    nocs: list[int] = []

    def emit(rec: dict[str, Any]) -> None:
        out.write(rec)
        if "noc" in rec:
            nocs.append(rec["noc"]["90"])

    with tqdm(total=len(mine), unit="img", disable=not show, dynamic_ncols=True) as bar:
        for index, item in mine:
            _eval_item(cfg, predictor, item, index, done, emit)
            bar.update(1)
            if nocs:
                bar.set_postfix(samples=len(nocs), noc90=f"{np.mean(nocs):.2f}", refresh=False)
