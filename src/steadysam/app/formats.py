"""Label files: export a :class:`~steadysam.app.labels.LabelSet` as COCO, YOLO segmentation or
PNG maps, and import a COCO file. ``docs/app-formats.md`` describes the files.

Every writer validates the labels first, writes atomically (a COCO file through
``steadysam.atomic.atomic_path``; a YOLO or PNG folder is built in a temporary sibling folder and
swapped in whole, so a re-export leaves no stale files), refuses to replace a file or non-empty
folder it did not write itself (a folder of ours carries ``steadysam-export.json``; a COCO file of
ours says so in ``info``), and, given the project's images folder, refuses to write inside it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import yaml

from ..atomic import atomic_path, atomic_write_text
from .labels import LabeledImage, LabeledObject, LabelSet
from .masks import decode_rle, encode_rle, mask_bbox, mask_to_polygons, polygons_to_mask

__all__ = [
    "FORMATS",
    "MARKER",
    "SEGMENTATIONS",
    "CocoError",
    "ExportError",
    "export",
    "read_coco",
    "write_coco",
    "write_png",
    "write_yolo",
]

FORMATS = ("coco", "yolo", "png")
# How write_coco stores masks: RLE (lossless, default) or polygons (lossless under COCO's fill,
# see masks.py; an object whose polygons would not fill back to its mask is written as RLE).
SEGMENTATIONS = ("rle", "polygon")
# The file that marks a folder as a steadysam export (and of which format).
MARKER = "steadysam-export.json"
_TOOL = "steadysam export"


class ExportError(ValueError):
    """An export that would overwrite something not ours, write beside the source images, or
    write two images to one file."""


class CocoError(ValueError):
    """A COCO file that cannot be imported; the message names the file and the entry."""


# --------------------------------------------------------------------------------------------
# COCO


def write_coco(
    labels: LabelSet,
    path: str | os.PathLike,
    segmentation: str = "rle",
    images_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write one COCO instance-segmentation JSON file.

    Images get ids 1..N and categories ids 1..K in list order; annotations ids 1..M, one per
    object in drawing order, with ``segmentation``, ``area`` (pixel count), ``bbox`` (``[x, y,
    w, h]``, pixel corners), ``iscrowd`` 0 and ``steadysam_object_id`` (the store's id or null).

    Arguments:
        labels: the labels to write (validated first).
        path: the .json file; an existing file is replaced only if steadysam wrote it.
        segmentation: ``"rle"`` (compressed RLE, lossless) or ``"polygon"`` (pixel-edge
            polygons, lossless under COCO's fill; an empty mask, or one whose polygons would not
            fill back exactly, is written as RLE instead and counted in the result).
        images_dir: the project's images folder, if known: writing inside it is refused.

    Returns a summary: ``path``, ``images``, ``annotations``, ``rle_fallbacks``.
    """
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, got {segmentation!r}")
    labels.validate()
    path = Path(path)
    _check_not_in_images(path, images_dir)
    _check_coco_target(path)
    cat_ids = {c: i + 1 for i, c in enumerate(labels.categories)}
    images, annotations = [], []
    fallbacks = 0
    for image_id, im in enumerate(labels.images, start=1):
        images.append(
            {"id": image_id, "file_name": im.file_name, "width": im.width, "height": im.height}
        )
        for obj in im.objects:
            seg: Any = None
            if segmentation == "polygon":
                polys = mask_to_polygons(obj.mask)
                if polys and np.array_equal(polygons_to_mask(polys, im.height, im.width), obj.mask):
                    seg = polys
                else:
                    fallbacks += 1
            if seg is None:
                seg = encode_rle(obj.mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_ids[obj.category],
                    "segmentation": seg,
                    "area": int(obj.mask.sum()),
                    "bbox": mask_bbox(obj.mask),
                    "iscrowd": 0,
                    "steadysam_object_id": None if obj.object_id is None else int(obj.object_id),
                }
            )
    doc = {
        "info": {
            "description": "steadysam annotation project",
            "contributor": _TOOL,
            "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "segmentation": segmentation,
        },
        "licenses": [],
        "images": images,
        "categories": [{"id": i, "name": c, "supercategory": ""} for c, i in cat_ids.items()],
        "annotations": annotations,
    }
    atomic_write_text(path, json.dumps(doc, separators=(",", ":")))
    return {
        "path": str(path),
        "images": len(images),
        "annotations": len(annotations),
        "rle_fallbacks": fallbacks,
    }


def _check_coco_target(path: Path) -> None:
    if path.is_dir():
        raise ExportError(f"COCO output {str(path)!r} is a folder; give a .json file path")
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        ours = doc.get("info", {}).get("contributor") == _TOOL
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise ExportError(
            f"{str(path)!r} exists and was not written by steadysam export; "
            "delete it or choose another path"
        )


def read_coco(path: str | os.PathLike) -> LabelSet:
    """Read a COCO instance-segmentation file (ours or another tool's) into a LabelSet.

    Categories keep the file's order; images keep the file's order, each with its annotations in
    file order (drawing order). Segmentations may be polygons, compressed or uncompressed RLE.
    ``steadysam_object_id`` is read back as ``object_id`` when present.

    Raises CocoError naming the file and the entry for: unreadable JSON, missing keys, wrong
    types, duplicate ids or names, annotations of unknown image or category ids, RLE sizes that
    disagree with the image, malformed polygons or RLE, annotations without a segmentation.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise CocoError(f"COCO file {str(path)!r}: no such file") from None
    except (OSError, ValueError) as e:
        raise CocoError(f"COCO file {str(path)!r}: cannot read JSON: {e}") from None

    def fail(msg: str) -> CocoError:
        return CocoError(f"COCO file {str(path)!r}: {msg}")

    if not isinstance(doc, dict):
        raise fail(f"top level must be an object, got {type(doc).__name__}")
    for key in ("images", "categories", "annotations"):
        if key not in doc:
            raise fail(f"missing key {key!r} (keys: {sorted(doc)})")
        if not isinstance(doc[key], list):
            raise fail(f"{key!r} must be a list, got {type(doc[key]).__name__}")

    categories: dict[int, str] = {}
    for i, cat in enumerate(doc["categories"]):
        cid = _field(cat, "id", int, f"categories[{i}]", fail)
        name = _field(cat, "name", str, f"categories[{i}]", fail)
        if cid in categories:
            raise fail(f"categories[{i}]: id {cid} is used twice")
        if name in categories.values():
            raise fail(f"categories[{i}]: name {name!r} is used twice")
        if not name:
            raise fail(f"categories[{i}]: empty name")
        categories[cid] = name

    images: dict[int, dict[str, Any]] = {}
    for i, im in enumerate(doc["images"]):
        iid = _field(im, "id", int, f"images[{i}]", fail)
        if iid in images:
            raise fail(f"images[{i}]: id {iid} is used twice")
        entry = {
            "file_name": _field(im, "file_name", str, f"images[{i}]", fail),
            "width": _field(im, "width", int, f"images[{i}]", fail),
            "height": _field(im, "height", int, f"images[{i}]", fail),
            "objects": [],
        }
        if entry["width"] < 1 or entry["height"] < 1:
            raise fail(f"images[{i}] ({entry['file_name']!r}): width and height must be positive")
        images[iid] = entry

    for i, ann in enumerate(doc["annotations"]):
        where = f"annotations[{i}]"
        iid = _field(ann, "image_id", int, where, fail)
        cid = _field(ann, "category_id", int, where, fail)
        if iid not in images:
            raise fail(f"{where}: image_id {iid} is not an image id of the file")
        if cid not in categories:
            raise fail(f"{where}: category_id {cid} is not a category id of the file")
        im = images[iid]
        where = f"{where} (image {im['file_name']!r})"
        if "segmentation" not in ann or ann["segmentation"] in (None, [], {}):
            raise fail(f"{where}: no segmentation (box-only annotations have no mask)")
        mask = _decode_segmentation(ann["segmentation"], im["height"], im["width"], where, fail)
        oid = ann.get("steadysam_object_id")
        if oid is not None and (isinstance(oid, bool) or not isinstance(oid, int)):
            raise fail(f"{where}: steadysam_object_id must be an int or null, got {oid!r}")
        im["objects"].append(LabeledObject(categories[cid], mask, oid))

    try:
        out = LabelSet(
            list(categories.values()),
            [
                LabeledImage(e["file_name"], e["width"], e["height"], e["objects"])
                for e in images.values()
            ],
        )
        out.validate()
    except ValueError as e:
        raise fail(str(e)) from None
    return out


def _field(entry: Any, key: str, kind: type, where: str, fail: Callable[[str], CocoError]) -> Any:
    if not isinstance(entry, dict):
        raise fail(f"{where} must be an object, got {type(entry).__name__}")
    if key not in entry:
        raise fail(f"{where} has no {key!r}")
    v = entry[key]
    if isinstance(v, bool) or not isinstance(v, kind):
        raise fail(f"{where}: {key!r} must be {kind.__name__}, got {v!r}")
    return v


def _decode_segmentation(
    seg: Any, h: int, w: int, where: str, fail: Callable[[str], CocoError]
) -> np.ndarray:
    if isinstance(seg, dict):
        size = seg.get("size")
        if isinstance(size, list) and len(size) == 2 and list(size) != [h, w]:
            raise fail(
                f"{where}: RLE size {size} disagrees with the image's [height, width] [{h}, {w}]"
            )
        try:
            return decode_rle(seg)
        except ValueError as e:
            raise fail(f"{where}: {e}") from None
    if isinstance(seg, list):
        try:
            return polygons_to_mask(seg, h, w)
        except ValueError as e:
            raise fail(f"{where}: {e}") from None
    raise fail(
        f"{where}: segmentation must be polygons (a list) or RLE (an object), got "
        f"{type(seg).__name__}"
    )


# --------------------------------------------------------------------------------------------
# YOLO


def write_yolo(
    labels: LabelSet, out_dir: str | os.PathLike, images_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Write an Ultralytics YOLO segmentation dataset folder.

    ``labels/<file_name without extension>.txt`` per image (empty for an image without objects),
    one line per 8-connected part of each object: ``class x1 y1 x2 y2 ...``, class = category
    index from 0, coordinates pixel corners divided by width / height. YOLO has no holes and no
    multi-part objects: a hole is kept as a zero-width cut in its part's polygon (which an even-odd
    fill such as Ultralytics' ``cv2.fillPoly`` leaves empty; other readers fill it), and each part
    is its own line, so a trainer sees one instance per part. ``data.yaml`` names the classes and
    points ``train``/``val`` at ``images`` beside ``labels`` (Ultralytics finds a label file by
    replacing ``/images/`` with ``/labels/`` in an image path).

    Arguments:
        labels: the labels to write (validated first).
        out_dir: the dataset folder; an existing non-empty folder is replaced only if it is a
            steadysam YOLO export.
        images_dir: the project's images folder, if known: writing inside it is refused, and
            ``images`` is made a symbolic link to it so that ``data.yaml`` trains as is.

    Returns a summary: ``path``, ``images``, ``lines``, ``images_link`` (whether the link was made).
    """
    labels.validate()
    out = Path(out_dir)
    _check_not_in_images(out, images_dir)
    targets = _targets(labels, "labels", ".txt")
    summary = {"path": str(out), "images": len(labels.images), "lines": 0, "images_link": False}

    def build(tmp: Path) -> None:
        for im, rel in zip(labels.images, targets, strict=True):
            lines = []
            for obj in im.objects:
                cls = labels.categories.index(obj.category)
                for poly in mask_to_polygons(obj.mask):
                    xy = np.asarray(poly).reshape(-1, 2) / (im.width, im.height)
                    lines.append(" ".join([str(cls), *(_num(v) for v in xy.reshape(-1))]))
            _write_text(tmp / rel, "".join(line + "\n" for line in lines))
            summary["lines"] += len(lines)
        names = dict(enumerate(labels.categories))
        data = {"train": "images", "val": "images", "nc": len(names), "names": names}
        header = (
            "# Ultralytics YOLO segmentation dataset written by steadysam export.\n"
            "# train/val are relative to this file's folder: put the project's images in\n"
            "# images/ (same relative paths as labels/), e.g. a symbolic link.\n"
        )
        _write_text(tmp / "data.yaml", header + yaml.safe_dump(data, sort_keys=False))
        if images_dir is not None:
            try:
                os.symlink(Path(images_dir).resolve(), tmp / "images", target_is_directory=True)
                summary["images_link"] = True
            except OSError:  # no symlinks (Windows without the right): the header says what to do
                pass

    _replace_folder(out, "yolo", build)
    return summary


def _num(v: float) -> str:
    # Six decimals keep a corner exact (round(x * width)) for images up to 100k pixels wide.
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    return s if s not in ("", "-0") else "0"


# --------------------------------------------------------------------------------------------
# PNG maps


def write_png(
    labels: LabelSet, out_dir: str | os.PathLike, images_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Write per image an instance map and a semantic map, and a JSON legend.

    ``instances/<file_name without extension>.png``: uint16, 0 background, object ``i`` of the
    image (1-based, drawing order) has value ``i``; later objects are drawn on top of earlier
    ones, so an object can lose pixels (the legend counts its visible pixels).
    ``semantic/<...>.png``: category index + 1 (0 background), uint8 when there are at most 255
    categories, else uint16; same drawing order. ``legend.json``: the categories with their
    semantic values and, per image, its two maps and its objects (value, category, object_id,
    pixels, visible_pixels).

    Arguments:
        labels: the labels to write (validated first).
        out_dir: the folder; an existing non-empty folder is replaced only if it is a steadysam
            PNG export.
        images_dir: the project's images folder, if known: writing inside it is refused.

    Returns a summary: ``path``, ``images``, ``objects``, ``hidden_pixels`` (object pixels
    covered by later objects, which the maps cannot show).
    """
    labels.validate()
    out = Path(out_dir)
    _check_not_in_images(out, images_dir)
    inst_paths = _targets(labels, "instances", ".png")
    sem_paths = _targets(labels, "semantic", ".png")
    for im in labels.images:
        if len(im.objects) > 65535:
            raise ExportError(
                f"image {im.file_name!r}: {len(im.objects)} objects do not fit uint16"
            )
    sem_dtype = np.uint8 if len(labels.categories) <= 255 else np.uint16
    summary = {"path": str(out), "images": len(labels.images), "objects": 0, "hidden_pixels": 0}

    def build(tmp: Path) -> None:
        legend_images = []
        for im, ipath, spath in zip(labels.images, inst_paths, sem_paths, strict=True):
            inst = np.zeros((im.height, im.width), np.uint16)
            sem = np.zeros((im.height, im.width), sem_dtype)
            for value, obj in enumerate(im.objects, start=1):
                inst[obj.mask] = value
                sem[obj.mask] = labels.categories.index(obj.category) + 1
            visible = np.bincount(inst.reshape(-1), minlength=len(im.objects) + 1)
            objects = []
            for value, obj in enumerate(im.objects, start=1):
                pixels = int(obj.mask.sum())
                objects.append(
                    {
                        "value": value,
                        "category": obj.category,
                        "object_id": None if obj.object_id is None else int(obj.object_id),
                        "pixels": pixels,
                        "visible_pixels": int(visible[value]),
                    }
                )
                summary["hidden_pixels"] += pixels - int(visible[value])
            summary["objects"] += len(objects)
            _write_png(tmp / ipath, inst)
            _write_png(tmp / spath, sem)
            legend_images.append(
                {
                    "file_name": im.file_name,
                    "width": im.width,
                    "height": im.height,
                    "instances": ipath.as_posix(),
                    "semantic": spath.as_posix(),
                    "objects": objects,
                }
            )
        legend = {
            "tool": _TOOL,
            "background": 0,
            "semantic_dtype": np.dtype(sem_dtype).name,
            "categories": [{"value": i + 1, "name": c} for i, c in enumerate(labels.categories)],
            "images": legend_images,
        }
        _write_text(tmp / "legend.json", json.dumps(legend, indent=1))

    _replace_folder(out, "png", build)
    return summary


def _write_png(path: Path, arr: np.ndarray) -> None:
    # OpenCV writes 16-bit grey PNGs as such (Pillow's uint16 support is patchier); imencode +
    # a Python write copes with any path.
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buf.tobytes())


# --------------------------------------------------------------------------------------------
# Dispatch and shared checks


def export(
    labels: LabelSet,
    fmt: str,
    out: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    segmentation: str = "rle",
) -> dict[str, Any]:
    """Write ``labels`` in format ``fmt`` (one of :data:`FORMATS`) to ``out`` (a .json file for
    COCO, a folder otherwise); ``segmentation`` is for COCO only. Returns the writer's summary
    with ``format`` added."""
    if fmt == "coco":
        summary = write_coco(labels, out, segmentation=segmentation, images_dir=images_dir)
    elif fmt == "yolo":
        summary = write_yolo(labels, out, images_dir=images_dir)
    elif fmt == "png":
        summary = write_png(labels, out, images_dir=images_dir)
    else:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return {"format": fmt, **summary}


def _check_not_in_images(out: Path, images_dir: str | os.PathLike | None) -> None:
    if images_dir is None:
        return
    images = Path(images_dir).resolve()
    target = out.resolve()
    if target == images or images in target.parents:
        raise ExportError(
            f"output {str(out)!r} is inside the images folder {str(images)!r}; "
            "exports are never written beside the source images"
        )


def _targets(labels: LabelSet, folder: str, ext: str) -> list[Path]:
    """Per image, ``folder/<file_name without extension><ext>``; two images that would share a
    file (a.jpg and a.png) are an error."""
    seen: dict[str, str] = {}
    out = []
    for im in labels.images:
        rel = PurePosixPath(im.file_name).with_suffix(ext)
        key = rel.as_posix()
        if key in seen:
            raise ExportError(
                f"images {seen[key]!r} and {im.file_name!r} would both be written to "
                f"{folder}/{key}; rename one"
            )
        seen[key] = im.file_name
        out.append(Path(folder, *rel.parts))
    return out


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def _replace_folder(out: Path, fmt: str, build: Callable[[Path], None]) -> None:
    """Build the export in a temporary sibling folder, then swap it in for ``out``.

    ``out`` may be missing, empty, or an earlier steadysam export of the same format (marked by
    :data:`MARKER`); anything else is refused before anything is written.
    """
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        marker = _read_marker(out)
        if marker is None:
            raise ExportError(
                f"output folder {str(out)!r} is not empty and is not a steadysam export; "
                "delete it or choose another folder"
            )
        if marker.get("format") != fmt:
            raise ExportError(
                f"output folder {str(out)!r} holds a steadysam {marker.get('format')!r} export, "
                f"not {fmt!r}; choose another folder"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new."))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        build(tmp)
        marker = {"tool": _TOOL, "format": fmt, "written": datetime.now(timezone.utc).isoformat()}
        _write_text(tmp / MARKER, json.dumps(marker, indent=1))
        old = None
        if out.exists():
            # Move the old export aside, move the new one in, then delete the old one: readers
            # see the old or the new folder, never a mix of both.
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
            os.rmdir(old)
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            if old is not None:  # put the old export back rather than leave nothing
                os.rename(old, out)
            raise
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        with open(folder / MARKER, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("tool") == _TOOL else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
