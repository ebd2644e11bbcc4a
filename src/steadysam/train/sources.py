"""Training sources: a folder of images + masks, COCO (instances or panoptic) and LVIS v1.

A source is a list of images; ``sample_object(i, rng)`` returns ONE random object of image ``i``
as an H x W bool mask (the official ObjectSampler: one segment per visit, empty ones skipped).
Every path and annotation file is checked when the source is built, so a bad path fails before
training starts, with a message naming the path and what is wrong.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..datafiles import IMAGE_EXTS, DatasetError, label_map, read_mask
from .config import DatasetConfig


def _dir(path: str, what: str) -> Path:
    if not path:
        raise DatasetError(f"{what}: no path given")
    p = Path(path)
    if not p.is_dir():
        raise DatasetError(f"{what} {str(p)!r}: no such folder")
    return p


def _json(path: str, what: str) -> dict[str, Any]:
    if not path:
        raise DatasetError(f"{what}: no annotation file given")
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{what} {str(p)!r}: no such file")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{what} {str(p)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{what} {str(p)!r}: expected a JSON object at the top level")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{what} {str(p)!r} is not a COCO/LVIS file: no {key!r} list")
    return data


def _check_files(paths: list[Path], what: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(
            f"{what}: {len(missing)} of {len(paths)} image files are missing, e.g. "
            f"{str(missing[0])!r}"
        )


def read_labels(path: Path) -> np.ndarray:
    """A mask file -> H x W int64 labels (``steadysam.datafiles``: colour masks decode as
    R + 256 G + 256² B, the COCO panoptic id formula)."""
    return label_map(read_mask(path)[0])


class Source:
    """Base: ``paths`` (image files) and ``sizes`` ((H, W) or None when unknown up front)."""

    name: str
    paths: list[Path]

    def __len__(self) -> int:
        return len(self.paths)

    def sample_object(self, i: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def mask_label(self, i: int) -> str:
        """Where image ``i``'s masks come from, for messages (a file, or an annotation file
        and image id)."""
        raise NotImplementedError


class FolderSource(Source):
    """``images/`` + ``masks/`` paired by file stem (mask ``<stem>.png`` or any image
    extension). ``instance``: every distinct non-zero value is an object (binary 0/255 masks
    have one); ``binary``: all non-zero pixels form one object. ``image_ext`` / ``mask_ext``
    restrict each side to one extension, so images and masks may share a folder (HQSeg-44K's
    cascade_psp sets: ``x.jpg`` next to ``x.png``)."""

    def __init__(self, cfg: DatasetConfig) -> None:
        self.name = cfg.name
        images = _dir(cfg.images, f"dataset {cfg.name!r} images")
        masks = _dir(cfg.masks, f"dataset {cfg.name!r} masks")
        if cfg.mask_mode not in ("instance", "binary"):
            raise DatasetError(f"dataset {cfg.name!r}: mask_mode must be instance or binary")
        self.binary = cfg.mask_mode == "binary"
        mask_exts = (cfg.mask_ext.lower(),) if cfg.mask_ext else IMAGE_EXTS
        image_exts = (cfg.image_ext.lower(),) if cfg.image_ext else IMAGE_EXTS
        by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() in mask_exts}
        imgs = sorted(p for p in images.iterdir() if p.suffix.lower() in image_exts)
        if not imgs:
            raise DatasetError(f"dataset {cfg.name!r}: no images in {str(images)!r}")
        lonely = [p.name for p in imgs if p.stem not in by_stem]
        if lonely:
            raise DatasetError(
                f"dataset {cfg.name!r}: {len(lonely)} images in {str(images)!r} have no mask "
                f"in {str(masks)!r}, e.g. {lonely[0]!r}"
            )
        self.paths = imgs
        self.mask_paths = [by_stem[p.stem] for p in imgs]

    def mask_label(self, i: int) -> str:
        return f"mask {str(self.mask_paths[i])!r}"

    def sample_object(self, i: int, rng: np.random.Generator) -> np.ndarray:
        labels = read_labels(self.mask_paths[i])
        if self.binary:
            return labels > 0
        ids = np.unique(labels)
        ids = ids[ids != 0]
        if ids.size == 0:  # an empty mask: the caller draws another image
            return np.zeros(labels.shape, bool)
        return labels == ids[rng.integers(ids.size)]


def _silent_coco(data: dict[str, Any]):
    """pycocotools COCO built from an already-loaded dict (its constructor prints)."""
    try:
        from pycocotools.coco import COCO
    except ImportError as e:
        raise DatasetError(
            "COCO/LVIS datasets need pycocotools: pip install pycocotools (or steadysam[train])"
        ) from e
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _image_file(root: Path, info: dict[str, Any]) -> Path:
    """COCO images carry ``file_name``; LVIS v1 images only ``coco_url``
    (``.../train2017/000000391895.jpg``): look under ``root/<split>/`` and ``root/``."""
    if "file_name" in info:
        return root / info["file_name"]
    url = info.get("coco_url", "")
    parts = url.rstrip("/").split("/")
    if len(parts) < 2:
        raise DatasetError(f"image {info.get('id')!r} has neither file_name nor coco_url")
    nested = root / parts[-2] / parts[-1]
    return nested if nested.is_file() else root / parts[-1]


class CocoSource(Source):
    """COCO instances / LVIS v1 (polygons or RLE, through pycocotools) and COCO panoptic
    (``segments_info`` + PNGs; every segment, things and stuff, crowd included, is an object).
    Images without any usable annotation are left out."""

    def __init__(self, cfg: DatasetConfig) -> None:
        self.name = cfg.name
        what = f"dataset {cfg.name!r} annotations"
        data = _json(cfg.annotations, what)
        root = _dir(cfg.images, f"dataset {cfg.name!r} images")
        self.overlap = cfg.overlap_filter
        self.panoptic = bool(data["annotations"]) and "segments_info" in data["annotations"][0]
        infos = {}
        for img in data["images"]:
            if not isinstance(img, dict) or "id" not in img:
                raise DatasetError(f"{what} {cfg.annotations!r}: an image entry has no 'id'")
            infos[img["id"]] = img
        if self.panoptic:
            png_dir = Path(cfg.masks) if cfg.masks else Path(cfg.annotations).with_suffix("")
            png_dir = _dir(str(png_dir), f"dataset {cfg.name!r} panoptic masks")
            self.items = []
            for a in data["annotations"]:
                segs = [s["id"] for s in a.get("segments_info", [])]
                if segs and a.get("image_id") in infos:
                    self.items.append((a["image_id"], png_dir / a["file_name"], segs))
            self.coco = None
        else:
            self.coco = _silent_coco(data)
            self.items = []
            for img_id in sorted(infos):
                anns = [
                    a["id"]
                    for a in self.coco.imgToAnns.get(img_id, [])
                    if "segmentation" in a and (cfg.include_crowd or not a.get("iscrowd", 0))
                ]
                if anns:
                    self.items.append((img_id, None, anns))
        if not self.items:
            raise DatasetError(f"{what} {cfg.annotations!r}: no image has an annotation")
        self.infos = infos
        self.annotations = cfg.annotations
        self.paths = [_image_file(root, infos[it[0]]) for it in self.items]
        _check_files(self.paths, f"dataset {cfg.name!r} ({str(root)!r})")
        if self.panoptic:
            _check_files([it[1] for it in self.items], f"dataset {cfg.name!r} panoptic PNGs")

    def mask_label(self, i: int) -> str:
        img_id, png, _ = self.items[i]
        if png is not None:
            return f"panoptic mask {str(png)!r}"
        return f"annotations {self.annotations!r} (image id {img_id})"

    def _ann_mask(self, ann_id: int) -> np.ndarray:
        ann = self.coco.anns[ann_id]
        info = self.infos[ann["image_id"]]
        if "height" not in info or "width" not in info:
            raise DatasetError(f"dataset {self.name!r}: image {info['id']} lacks height/width")
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation notice
            warnings.simplefilter("ignore", DeprecationWarning)
            return self.coco.annToMask(ann).astype(bool)

    def sample_object(self, i: int, rng: np.random.Generator) -> np.ndarray:
        img_id, png, ids = self.items[i]
        if self.panoptic:
            labels = read_labels(png)
            return labels == ids[rng.integers(len(ids))]
        if self.overlap is None:
            return self._ann_mask(ids[rng.integers(len(ids))])
        # LVIS (official LoadLVISAnnotations): shuffle, drop a mask that is mostly covered by
        # the kept ones or covers most of an earlier kept mask, then pick one of the kept.
        kept: list[np.ndarray] = []
        covered = None
        for j in rng.permutation(len(ids)):
            m = self._ann_mask(ids[j])
            area = m.sum()
            if area == 0:
                continue
            if covered is not None and (m & covered).sum() > self.overlap * area:
                continue
            if any((m & k).sum() > self.overlap * k.sum() for k in kept):
                continue
            kept.append(m)
            covered = m.copy() if covered is None else covered | m
        if not kept:
            return np.zeros((self.infos[img_id]["height"], self.infos[img_id]["width"]), bool)
        return kept[rng.integers(len(kept))]


def build_source(cfg: DatasetConfig) -> Source:
    if cfg.type == "folder":
        return FolderSource(cfg)
    if cfg.type in ("coco", "lvis"):
        return CocoSource(cfg)
    raise DatasetError(f"dataset {cfg.name!r}: unknown type {cfg.type!r}")
