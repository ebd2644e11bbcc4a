"""Resumable, shardable NoC evaluation runs.

A run directory holds::

    config.json          exact configuration + weights digest, versions, invocations (resume
                         checks both; a folder not written by this runner is never used)
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
import datetime
import json
import math
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
from steadysam.cli_common import PRECISIONS
from steadysam.clicks import RULES, Clicker
from steadysam.distributed import init_distributed, torchrun_env
from steadysam.eval.datasets import (
    IMAGE_EXTS,
    Dataset,
    DatasetError,
    ImageItem,
    ObjectGT,
    SampleError,
    load_dataset,
    require_images,
)
from steadysam.eval.metrics import iou, sample_metrics
from steadysam.eval.report import finalize, read_jsonl, read_records
from steadysam.modes import MODES

IGNORE_MODES = ("auto", "exclude", "background")
# Changing any of these makes old results incomparable, so resume refuses.
SEMANTIC_KEYS = tuple(
    "dataset model checkpoint plugin clicks clicker protocol seed inner_k refine_at ignore "
    "precision".split()
)
# The value of a semantic key in a config.json written before the key existed.
SEMANTIC_DEFAULTS = {"precision": "fp32"}


class RunError(ValueError):
    """The run cannot start (bad configuration, run directory of another configuration)."""


class NoResultsError(RuntimeError):
    """The run ended without a single successfully evaluated sample (every one failed).
    ``summary`` is what was written to summary.json (metrics null, ``errors`` listed)."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


# ------------------------------------------------------------------------ option checks


def check_int(option: str, value: Any, low: int, high: int | None = None) -> None:
    """RunError naming ``option`` unless ``value`` is an integer in [low, high]."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and value >= low and (high is None or value <= high):
        return
    allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    raise RunError(f"{option} must be {allowed}, not {value!r}")


def check_choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RunError(f"{option} must be one of {', '.join(choices)}, not {value!r}")


DEVICES = "cpu, cuda, cuda:N or mps"


def check_device(device: Any) -> None:
    """RunError naming the value unless ``device`` (None: automatic) is a torch device that
    exists on this machine: ``cpu``, ``cuda`` / ``cuda:N`` with a GPU N visible, ``mps``."""
    if device is None:
        return
    if not isinstance(device, str):
        raise RunError(f"--device must be one of {DEVICES}, not {device!r}")
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise RunError(f"--device {device!r} is not a device name; use {DEVICES}") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU visible"
            raise RunError(
                f"--device {device!r}: CUDA is not available on this machine ({why}); "
                "use --device cpu"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise RunError(
                f"--device {device!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}"
            )
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise RunError(f"--device {device!r}: MPS is not available on this machine")
        return
    raise RunError(f"--device {device!r}: unsupported device type {dev.type!r}; use {DEVICES}")


@dataclass
class EvalConfig:
    """Everything that defines a run. ``model`` and/or ``checkpoint`` pick the network;
    ``plugin`` is an optional Stable-SAM plugin file put on top of it."""

    dataset: str
    model: str | None = None
    checkpoint: str | None = None
    plugin: str | None = None
    random_init: bool = False
    download: bool = False
    trust_checkpoint: bool = False
    data_root: str | None = None
    clicks: int = 20
    clicker: str = "ritm"
    protocol: str = "focsam"
    out: str | None = None
    seed: int = 42
    inner_k: float = 1.0
    refine_at: int | None = 1
    ignore: str = "auto"
    limit: int | None = None
    device: str | None = None
    cache_dir: str | None = None
    progress: bool = True
    retry_errors: bool = False
    precision: str = "fp32"

    def validate(self) -> None:
        """Raise RunError for a bad option, naming it, its value and what is allowed."""
        check_int("--clicks", self.clicks, 1)
        check_choice("--precision", self.precision, PRECISIONS)
        check_choice("--clicker", self.clicker, RULES)
        check_choice("--protocol", self.protocol, MODES)
        check_choice("--ignore", self.ignore, IGNORE_MODES)
        check_int("--seed", self.seed, 0)
        if self.limit is not None:
            check_int("--limit", self.limit, 1)
        k = self.inner_k
        number = isinstance(k, (int, float, np.number)) and not isinstance(k, bool)
        if not (number and math.isfinite(k) and (k >= 1.0 or k < 0)):
            raise RunError(
                "--inner-k must be a number >= 1 (1.0 at test, 1.7 in training; or < 0 for the "
                f"whole error region), not {k!r}"
            )
        if self.refine_at is not None:
            # The refiner runs at 0-based click refine_at: at or after the budget it would
            # silently never run. The default 1 is accepted with a 1-click budget (FocSAM
            # refines at the 2nd click, which such a run never reaches).
            r = self.refine_at
            if not (isinstance(r, (int, np.integer)) and not isinstance(r, bool)) or not (
                0 <= r < max(self.clicks, 2)
            ):
                raise RunError(
                    f"--refine-at must be a 0-based click index from 0 to --clicks - 1 = "
                    f"{self.clicks - 1}, or never (no refiner), not {r!r}"
                )
        check_device(self.device)

    def ignore_mode(self) -> str:
        """RITM excludes ignore pixels; FocSAM has no ignore label (ignore = background)."""
        if self.ignore != "auto":
            return self.ignore
        return "exclude" if self.clicker == "ritm" else "background"

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        net = net_name(self.model, self.checkpoint, self.plugin)
        name = f"{net}-{self.dataset}-{self.protocol}-{self.clicker}-{self.clicks}c"
        return Path("runs") / (name if self.precision == "fp32" else f"{name}-{self.precision}")


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


# ---------------------------------------------------------------------------------- the run


def build_predictor(cfg: Any) -> Any:
    """Build ``steadysam.predictor.Predictor`` for a config's ``model`` / ``checkpoint`` /
    ``plugin`` (``EvalConfig`` or ``PromptEvalConfig``), on ``device`` with ``cache_dir``."""
    import steadysam
    from steadysam.predictor import Predictor

    model = steadysam.build_model(
        cfg.model,
        cfg.checkpoint,
        random_init=cfg.random_init,
        download=cfg.download,
        trusted=cfg.trust_checkpoint,
        plugin=cfg.plugin,
    )
    device = cfg.device
    if device is None or device == "cuda":
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{torchrun_env()[2]}"
    if device:
        model = model.to(device)
    model.eval()
    return Predictor(model, cache_dir=cfg.cache_dir, precision=getattr(cfg, "precision", "fp32"))


# ------------------------------------------------------------------------------ run folders
#
# --out must be a new or empty folder, or a run folder of the same run (its config.json equal
# in every field of SEMANTIC_KEYS, and the same weights digest) to resume. Anything else is
# refused with a RunError naming the folder and what was found there; nothing in a folder that
# is not ours is ever written, moved or deleted.

KINDS = {"eval": "steadysam eval", "prompts": "steadysam eval-prompts"}
# The files of result lines (eval: parts/rank-NNN.jsonl; eval-prompts: records.jsonl). A run
# folder without a line has nothing to stay consistent with (summary.json and samples.jsonl are
# derived from the lines and rewritten), so its configuration may still change: a corrected
# command after, say, a model that failed to load.
RESULT_FILES = ("records.jsonl",)
# Folder names of dataset layouts (datasets.py), for the message about a dataset as --out.
DATASET_DIRS = (
    "images", "masks", "img", "gt", "im", "data_GT", "boundary_GT", "JPEGImages",
    "SegmentationObject", "Imgs", "GT", "images_test", "masks_test", "inst",
)  # fmt: skip


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _inside(path: Path, folder: Path) -> bool:
    p, f = path.resolve(), folder.resolve()
    return p == f or f in p.parents


@dataclass
class RunFolder:
    """What :func:`check_run_dir` found: ``doc`` is the folder's config.json document (None
    for a new or empty folder); ``has_results`` whether any result line or summary exists."""

    path: Path
    kind: str
    doc: dict[str, Any] | None
    has_results: bool


def has_results(run_dir: Path) -> bool:
    """True when the folder holds any result line (a non-empty part or records file)."""
    files = [run_dir / n for n in RESULT_FILES]
    parts = run_dir / "parts"
    if parts.is_dir():
        files += list(parts.glob("rank-*.jsonl"))
    return any(f.is_file() and f.stat().st_size > 0 for f in files)


def _config_kind(doc: Any) -> str | None:
    """``eval`` / ``prompts`` for a steadysam run configuration document, else None."""
    if not (
        isinstance(doc, dict)
        and isinstance(doc.get("config"), dict)
        and isinstance(doc.get("invocations"), list)
    ):
        return None
    if doc.get("kind") in KINDS:
        return doc["kind"]
    conf = doc["config"]  # written before "kind" was recorded
    return "prompts" if "prompts" in conf else "eval" if "clicks" in conf else None


def read_run_config(run_dir: Path, kind: str) -> dict[str, Any]:
    """The folder's config.json document; RunError naming the file when it cannot be read, is
    not JSON, is not a steadysam run configuration, or is one of the other command's runs."""
    path = run_dir / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = _reason(e) if isinstance(e, OSError) else f"not UTF-8 text ({e.reason})"
        raise RunError(f"cannot read {path}: {why}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunError(
            f"{path} is not valid JSON ({e.msg}: line {e.lineno} column {e.colno}): a damaged "
            "file, or not a steadysam run folder; use another --out (nothing was changed)"
        ) from None
    found = _config_kind(doc)
    if found is None:
        raise RunError(
            f"{path} is not a steadysam run configuration, so {run_dir} is not a steadysam run "
            "folder; use another --out (nothing was changed)"
        )
    if found != kind:
        raise RunError(
            f"{run_dir} holds a `{KINDS[found]}` run, not a `{KINDS[kind]}` run; use another --out"
        )
    return doc


def _foreign(run_dir: Path, names: list[str]) -> RunError:
    """The error for a non-empty folder without config.json, saying what is in it."""
    shown = ", ".join(names[:6]) + (f", ... ({len(names)} entries)" if len(names) > 6 else "")
    dirs = [n for n in names if n in DATASET_DIRS and (run_dir / n).is_dir()]
    images = [n for n in names if Path(n).suffix.lower() in IMAGE_EXTS]
    if dirs or images:
        what = f"it looks like a dataset ({', '.join(dirs + images[:3])})"
    elif "summary.json" in names or "parts" in names or "records.jsonl" in names:
        what = "it holds run results but no config.json (not written by this version, or edited)"
    else:
        what = "it is not a steadysam run folder (no config.json)"
    return RunError(
        f"--out {run_dir} is not empty and {what}: found {shown}. --out must be a new or empty "
        "folder, or the folder of the same run to resume it; nothing was changed"
    )


def _make_dir(run_dir: Path) -> None:
    """Create the folder (and its parents); RunError naming the path when that fails."""
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                where = "is" if parent == run_dir else f"cannot be created: {parent} is"
                raise RunError(f"run folder {run_dir} {where} a file, not a folder")
            break
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create run folder {run_dir}: {_reason(e)}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunError(f"cannot write into run folder {run_dir}: permission denied")


def check_run_dir(
    run_dir: Path,
    kind: str,
    now: dict[str, Any],
    semantic_keys: tuple[str, ...],
    dataset_root: Path | None = None,
    data_root: str | os.PathLike | None = None,
) -> RunFolder:
    """Check that ``run_dir`` may take the run ``now`` of ``kind`` (``eval`` / ``prompts``) and
    create it. Refused (RunError naming the folder): a folder inside the dataset folder
    ``dataset_root`` or inside the ``data_root`` holding it (unless the working directory is
    inside ``data_root`` too: then relative outputs land there on purpose), a file, a non-empty
    folder without config.json (another tool's output, a dataset), a damaged or foreign
    config.json, the other command's run, and a run with results whose configuration differs
    in ``semantic_keys`` (each differing field with both values). Writes nothing but the
    folder itself: :func:`write_run_config` does, once the model is built."""
    roots = [dataset_root]
    if data_root is not None and not _inside(Path.cwd(), Path(data_root)):
        roots.append(Path(data_root))
    for root in roots:
        if root is not None and _inside(run_dir, root):
            raise RunError(
                f"--out {run_dir} is inside the dataset folder {root}: runs must not be written "
                "into the data; use another --out"
            )
    doc, results = None, False
    if run_dir.is_dir():
        try:
            names = sorted(p.name for p in run_dir.iterdir())
        except OSError as e:
            raise RunError(f"cannot read run folder {run_dir}: {_reason(e)}") from None
        if "config.json" in names:
            doc = read_run_config(run_dir, kind)
            results = has_results(run_dir)
            old = {**SEMANTIC_DEFAULTS, **doc["config"]}
            diff = [k for k in semantic_keys if old.get(k) != now.get(k)]
            if diff and results:
                fields = "; ".join(f"{k}: {old.get(k)!r} there, {now.get(k)!r} now" for k in diff)
                raise RunError(
                    f"{run_dir} holds a run with a different configuration ({fields}); use "
                    "another --out, or the same options to resume that run"
                )
        elif any(not n.startswith(".") for n in names):  # hidden files (.gitkeep) are no run
            raise _foreign(run_dir, [n for n in names if not n.startswith(".")])
    _make_dir(run_dir)
    return RunFolder(run_dir, kind, doc, results)


def weights_digest(predictor: Any) -> str | None:
    """``steadysam.weights.digest.state_digest`` of the predictor's model (``predictor.model``),
    or None for a predictor without a torch model (a test fake, a remote service): the weights
    of such a run are unknown and not checked on resume."""
    model = getattr(predictor, "model", None)
    if model is None:
        return None
    import torch

    if not isinstance(model, torch.nn.Module):
        return None
    from steadysam.weights.digest import state_digest

    return state_digest(model)


def _weights_source(now: dict[str, Any]) -> str:
    parts = [f"checkpoint {now['checkpoint']}" if now.get("checkpoint") else None]
    parts.append(f"model {now['model']}" if now.get("model") else None)
    parts.append(f"plugin {now['plugin']}" if now.get("plugin") else None)
    text = ", ".join(p for p in parts if p) or "the given predictor"
    if now.get("random_init"):
        text += "; --random-init draws new weights on every build"
    return text


def write_run_config(
    folder: RunFolder, now: dict[str, Any], digest: str | None, world: int = 1
) -> str | None:
    """Write config.json for the run ``now`` (with ``weights_digest``) into a folder checked by
    :func:`check_run_dir`, appending this invocation. On resume (results present) the weights
    digest must equal the recorded one: RunError naming both digests and the weights' source
    (a file replaced behind the same checkpoint path). A digest recorded as None (a predictor
    without a torch model) or by an older version without digests is not checked. Returns the
    digest recorded (the folder's known one when the predictor has none)."""
    run_dir, doc = folder.path, folder.doc
    path = run_dir / "config.json"
    now = {**now, "weights_digest": digest}
    if doc is not None and folder.has_results:
        old = doc["config"].get("weights_digest")
        if old is not None and digest is not None and old != digest:
            raise RunError(
                f"{run_dir} holds results of other weights: weights digest {old} there, "
                f"{digest} now ({_weights_source(now)}). The weights behind the same name or "
                "path have changed; use another --out for these weights"
            )
        if digest is None:
            now["weights_digest"] = old  # keep what is known
        elif "weights_digest" not in doc["config"]:
            print(
                f"warning: {path} predates weights digests: cannot check that its results come "
                f"from the same weights; recording {digest} from now on",
                file=sys.stderr,
            )
    invocation = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv, "world": world}
    if doc is None:
        doc = {"kind": folder.kind, "config": now, "versions": versions(), "invocations": []}
    doc["kind"] = folder.kind
    doc["config"] = now
    doc["invocations"].append(invocation)
    try:
        atomic_write_text(path, json.dumps(doc, indent=2))
    except OSError as e:
        raise RunError(f"cannot write {path}: {_reason(e)}") from None
    return now["weights_digest"]


def _start_parts(cfg: EvalConfig, run_dir: Path) -> None:
    """Rank 0, after config.json: the parts folder; with ``retry_errors`` the error lines go."""
    try:
        (run_dir / "parts").mkdir(exist_ok=True)
        if cfg.retry_errors:
            for part in (run_dir / "parts").glob("rank-*.jsonl"):
                keep = [r for r in read_jsonl(part) if "error" not in r]
                atomic_write_text(part, "".join(json.dumps(r) + "\n" for r in keep))
    except OSError as e:
        raise RunError(f"cannot write into run folder {run_dir}: {_reason(e)}") from None


def require_results(summary: dict[str, Any], run_dir: Path, what: str, data: str) -> None:
    """NoResultsError (exit 1) when no sample was evaluated successfully because all failed;
    RunError (exit 2) when there was nothing to evaluate (no object in the images' masks)."""
    if summary.get("num_samples"):
        return
    errors = summary.get("errors") or []
    if not errors:
        raise RunError(f"{data}: the masks of the images evaluated hold no object ({what})")
    first = errors[0]
    raise NoResultsError(
        f"all {len(errors)} {what} failed; first error: {first['id']}: {first['error']} "
        f"(all listed in {run_dir / 'summary.json'})",
        summary,
    )


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
            e.g. ``evaluate(model="demo_focsam", dataset="GrabCut", clicks=20)``.
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
    require_images(ds, cfg.dataset)
    run_dir = cfg.run_dir()
    now = dataclasses.asdict(cfg)
    # Ranks wait for the slowest one at the end: a generous timeout, not gloo's 30 min.
    dist = init_distributed(cfg.device, timeout=datetime.timedelta(hours=24))
    try:
        # Rank 0 checks the folder before any model is built, and writes config.json (with
        # the weights digest) once the model is; every rank raises the same RunError.
        err, folder, digest = None, None, None
        if dist.rank == 0:
            try:
                folder = check_run_dir(run_dir, "eval", now, SEMANTIC_KEYS, ds.root, cfg.data_root)
            except RunError as e:
                err = str(e)
        err = dist.broadcast(err)
        if err:
            raise RunError(err)
        if predictor is None:
            predictor = (predictor_factory or build_predictor)(cfg)
        if dist.rank == 0:
            try:
                digest = write_run_config(folder, now, weights_digest(predictor), dist.world)
                _start_parts(cfg, run_dir)
            except RunError as e:
                err = str(e)
        err = dist.broadcast(err)
        if err:
            raise RunError(err)
        done = {r["id"] for r in read_records(run_dir)}
        items = list(enumerate(ds.items))[: cfg.limit]
        mine = items[dist.rank :: dist.world]
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
            meta["weights_digest"] = digest
            summary = finalize(run_dir, meta, cfg.clicks)
        summary = dist.broadcast(summary)
    finally:
        dist.close()
    require_results(summary, run_dir, "samples", f"dataset {cfg.dataset} at {ds.root}")
    return summary


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
