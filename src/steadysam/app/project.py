"""One annotation project at work: the store (what is saved), IMAGES_DIR (what is served) and the
engine (the model). The HTTP layer (``server.py``) only translates requests into these calls.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .store import NotFound, Prompt, Store, StoreError


def cache_dir_for(db_path: str | os.PathLike) -> Path:
    """The embedding cache beside the project file: ``project.sqlite`` ->
    ``project.steadysam-cache/``."""
    p = Path(db_path)
    return p.with_name(p.stem + ".steadysam-cache")


class Project:
    """Arguments:
        store: the open project.
        images_dir: the folder the project's file names are relative to.
        engine: the model engine (None: a read-only browser of the labels; prompts fail).
        model_name: shown in the UI.
    """

    def __init__(self, store: Store, images_dir: str | os.PathLike, engine=None,
                 model_name: str = "") -> None:  # fmt: skip
        self.store = store
        self.root = Path(images_dir).resolve()
        self.engine = engine
        self.model_name = model_name
        self._encoded: OrderedDict[int, bytes] = OrderedDict()
        self._encoded_lock = threading.Lock()

    # -- files --------------------------------------------------------------------------
    def image_path(self, image_id: int) -> Path:
        """The file of an image id, checked to lie inside IMAGES_DIR (even when the database
        was edited by hand or a link was swapped since the scan)."""
        name = self.store.image(image_id)["file_name"]
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root):
            raise PermissionError(f"image {image_id} is outside IMAGES_DIR: refused")
        if not path.is_file():
            raise NotFound(f"the file of image {image_id} ({name!r}) is missing from IMAGES_DIR")
        return path

    def image_bytes(self, image_id: int) -> bytes:
        """The image as a JPEG (quality 95) of the pixels the model sees (OpenCV decode, EXIF
        orientation applied), so the browser's pixels and click coordinates match the model's
        whatever the file format. A few are kept in memory."""
        import cv2

        from ..datafiles import read_image

        with self._encoded_lock:
            if image_id in self._encoded:
                self._encoded.move_to_end(image_id)
                return self._encoded[image_id]
        rgb = read_image(self.image_path(image_id))
        ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise RuntimeError(f"could not encode image {image_id} for the browser")
        data = buf.tobytes()
        with self._encoded_lock:
            self._encoded[image_id] = data
            while len(self._encoded) > 8:
                self._encoded.popitem(last=False)
        return data

    # -- model actions ------------------------------------------------------------------
    def _require_engine(self):
        if self.engine is None:
            raise StoreError("this server runs without a model: prompts are not available")
        return self.engine

    def open_image(self, image_id: int) -> dict[str, Any]:
        """Prepare the image's embedding (foreground); the worker continues after it."""
        engine = self._require_engine()
        path = self.image_path(image_id)
        start = time.perf_counter()
        encoder = engine.prepare(image_id, path)
        return {
            "image_id": image_id,
            "encoder_ms": round(encoder * 1000, 2),
            "ms": round((time.perf_counter() - start) * 1000, 2),
        }

    def add_prompt(
        self, object_id: int, prompt: Prompt, expected_version: int | None = None
    ) -> dict[str, Any]:
        """Run a click / box on an object and store it: returns the object (with its new mask),
        ``change`` (``stability.click_change``) and the model time."""
        from .masks import decode_rle
        from .stability import click_change

        engine = self._require_engine()
        obj = self.store.object(object_id)
        self.store.check_version(object_id, expected_version)
        image = self.store.image(obj["image_id"])
        _check_prompt(prompt, image)
        path = self.image_path(obj["image_id"])
        prompt = Prompt(prompt.kind, prompt.coords, prompt.positive, engine.plugin_enabled)
        state: dict[str, Any] = {}

        def commit(mask: np.ndarray) -> dict[str, Any]:
            # Read again inside the model lock: what another request did in between counts.
            current = self.store.object(object_id)
            state["previous"] = current["mask"]
            pinned = current["version"] if expected_version is None else expected_version
            return self.store.push_prompt(object_id, prompt, mask, pinned)

        start = time.perf_counter()
        while True:
            prompts = self.store.prompts(object_id)
            try:
                mask, new = engine.run_prompt(
                    object_id, obj["image_id"], path, prompts, prompt,
                    _guard(self.store, object_id, prompts, expected_version, commit),
                )  # fmt: skip
                break
            except _Stale:
                continue  # another request changed the prompts first: replay on top of them
        ms = (time.perf_counter() - start) * 1000
        previous = state["previous"]
        prev_mask = None if previous is None else decode_rle(previous)
        click = (*prompt.coords, prompt.positive) if prompt.kind == "click" else None
        return {"object": new, "change": click_change(prev_mask, mask, click), "ms": round(ms, 2)}

    def undo(self, object_id: int, expected_version: int | None = None) -> dict[str, Any]:
        return self.store.undo(object_id, expected_version)

    def redo(self, object_id: int, expected_version: int | None = None) -> dict[str, Any]:
        return self.store.redo(object_id, expected_version)

    def delete_object(self, object_id: int, expected_version: int | None = None) -> None:
        self.store.delete_object(object_id, expected_version)
        if self.engine is not None:
            self.engine.forget(object_id)

    def set_plugin(self, enabled: bool) -> bool:
        engine = self._require_engine()
        if enabled and not engine.plugin.available:
            raise StoreError("this model has no Stable-SAM plugin (load one with --plugin FILE)")
        with engine.lock.foreground():
            engine.plugin_enabled = bool(enabled)
            engine.plugin.set(engine.plugin_enabled)
        return engine.plugin_enabled

    # -- export / import ----------------------------------------------------------------
    def export_bytes(self, fmt: str, segmentation: str = "rle") -> tuple[bytes, str, str]:
        """The labels in ``fmt`` as (content, media type, file name): COCO as one JSON file,
        YOLO and PNG as a zip of the folder the writer makes."""
        return export_bytes(self.store, fmt, segmentation)

    def import_coco_bytes(self, data: bytes) -> dict[str, int]:
        from .formats import read_coco

        with tempfile.TemporaryDirectory(prefix="steadysam-import-") as tmp:
            path = Path(tmp) / "import.json"
            path.write_bytes(data)
            labels = read_coco(path)
        return self.store.import_labelset(labels)


class _Stale(Exception):
    """The object's prompts changed between reading them and committing."""


def _guard(store: Store, object_id: int, prompts: list[Prompt], expected: int | None, commit):
    """commit(mask), but first check (inside the model lock) that the object's prompts are
    still the ones the mask was computed from; if not, and the caller did not pin a version,
    signal a retry (the click is replayed on top of the other request's change)."""

    def run(mask: np.ndarray):
        if store.prompts(object_id) != prompts:
            store.check_version(object_id, expected)  # a pinned version: Conflict
            raise _Stale
        return commit(mask)

    return run


def _check_prompt(prompt: Prompt, image: dict[str, Any]) -> None:
    w, h = image["width"], image["height"]
    values = np.asarray(prompt.coords, dtype=np.float64)
    if not np.isfinite(values).all():
        raise StoreError(f"{prompt.kind} coordinates must be finite numbers, got {prompt.coords}")
    if prompt.kind == "click":
        x, y = prompt.coords
        if not (0 <= x < w and 0 <= y < h):
            raise StoreError(
                f"click ({x}, {y}) is outside image {image['id']} (width {w}, height {h}): "
                f"need 0 <= x < {w} and 0 <= y < {h}"
            )
    else:
        x0, y0, x1, y1 = prompt.coords
        if not (x1 > x0 and y1 > y0):
            raise StoreError(f"box {prompt.coords} is empty or inverted: need x1 > x0, y1 > y0")
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise StoreError(f"box {prompt.coords} lies outside image {image['id']} ({w}x{h})")


def export_bytes(store: Store, fmt: str, segmentation: str = "rle") -> tuple[bytes, str, str]:
    """See :meth:`Project.export_bytes`."""
    from . import formats

    if fmt not in formats.FORMATS:
        raise NotFound(f"export format must be one of {formats.FORMATS}, not {fmt!r}")
    labels = store.labelset()
    with tempfile.TemporaryDirectory(prefix="steadysam-export-") as tmp:
        if fmt == "coco":
            path = Path(tmp) / "annotations.json"
            formats.export(labels, fmt, path, segmentation=segmentation)
            return path.read_bytes(), "application/json", "annotations.json"
        out = Path(tmp) / fmt
        formats.export(labels, fmt, out)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(out.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(out).as_posix())
        return buf.getvalue(), "application/zip", f"{fmt}.zip"
