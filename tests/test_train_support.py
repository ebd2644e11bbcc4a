"""Shared helpers for the training tests: tiny synthetic datasets (folder, COCO instances, COCO
panoptic, LVIS) written into a temporary folder, tiny architectures and config overrides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# A SAM small enough for CPU tests: 128 px input, 8 x 8 grid, width 32.
TINY_ARCH = (
    "{image_size: 128, encoder_embed_dim: 32, encoder_depth: 2, encoder_num_heads: 2, "
    "encoder_global_attn_indexes: [1], encoder_window_size: 4, prompt_embed_dim: 32, "
    "decoder_mlp_dim: 64, decoder_num_heads: 2, iou_head_hidden_dim: 32, refiner: null}"
)
TINY_REFINER = "{depth: 2, num_heads: 2, window_size: 4}"


def tiny_overrides(out: Path, **extra: str) -> list[str]:
    """Overrides that make any recipe a seconds-long CPU run writing into ``out``."""
    base = {
        "model.name": "focsam_tiny",
        "model.arch": TINY_ARCH,
        "data.batch_size": "2",
        "data.num_workers": "0",
        "sim.max_rounds": "3",
        "optim.warmup_iters": "2",
        "run.out_dir": str(out),
        "run.export": "null",
        "run.export_plugin": "null",  # never into src/steadysam/weights (the demo recipes' target)
        "run.progress": "false",
        "run.plot": "true",
        "run.checkpoint_every": "2",
        "run.log_every": "1",
        "run.threads": "1",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _blob_image(rng: np.random.Generator, h: int, w: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured RGB image with n coloured ellipses and its instance-id map (1..n)."""
    yy, xx = np.mgrid[:h, :w]
    img = (rng.random((h, w, 3)) * 60 + 40).astype(np.uint8)
    ids = np.zeros((h, w), np.int32)
    for k in range(1, n + 1):
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        ry, rx = rng.uniform(0.12, 0.3) * h, rng.uniform(0.12, 0.3) * w
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        img[inside] = rng.integers(120, 255, 3)
        ids[inside] = k
    return img, ids


def make_folder_dataset(root: Path, n: int = 6, seed: int = 0, binary: bool = False) -> Path:
    """root/images/*.jpg + root/masks/*.png (instance ids, or 0/255 with ``binary``); names
    with spaces like COCO_MVal's."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
        img, ids = _blob_image(rng, h, w, 1 if binary else 2)
        name = f"obj {i:02d}"
        Image.fromarray(img).save(root / "images" / f"{name}.jpg", quality=95)
        mask = (ids > 0).astype(np.uint8) * 255 if binary else ids.astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


def _rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts (column-major, starting with zeros)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, prev, run = [], 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            prev, run = v, 0
        run += 1
    counts.append(run)
    return counts


def make_coco(root: Path, n: int = 4, seed: int = 1) -> dict[str, Path]:
    """COCO instances JSON (polygon, compressed RLE, uncompressed crowd RLE), a COCO panoptic
    JSON + PNGs and an LVIS-style JSON (``coco_url`` only) over the same images."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    img_dir = root / "train2017"
    pan_dir = root / "panoptic_train2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    pan_dir.mkdir(parents=True, exist_ok=True)
    images, anns, pans, lvis_images = [], [], [], []
    aid = 1
    for i in range(n):
        h, w = int(rng.integers(40, 70)), int(rng.integers(40, 70))
        img, ids = _blob_image(rng, h, w, 2)
        image_id = 1000 + i
        fname = f"{image_id:012d}.jpg"
        Image.fromarray(img).save(img_dir / fname, quality=95)
        images.append({"id": image_id, "file_name": fname, "height": h, "width": w})
        lvis_images.append(
            {
                "id": image_id,
                "height": h,
                "width": w,
                "coco_url": f"http://images.cocodataset.org/train2017/{fname}",
            }
        )
        # object 1 as a polygon (its bounding box corners: a rectangle), object 2 as RLE.
        y0, x0 = 5, 5
        y1, x1 = h // 2, w // 2
        poly = [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]
        anns.append(
            {
                "id": aid,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": [poly],
                "area": float((x1 - x0) * (y1 - y0)),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "iscrowd": 0,
            }
        )
        aid += 1
        m2 = np.asfortranarray((ids == 2).astype(np.uint8))
        rle = mask_utils.encode(m2)
        rle["counts"] = rle["counts"].decode()
        anns.append(
            {
                "id": aid,
                "image_id": image_id,
                "category_id": 2,
                "segmentation": rle,
                "area": float(m2.sum()),
                "bbox": [0, 0, w, h],
                "iscrowd": 0,
            }
        )
        aid += 1
        crowd = np.zeros((h, w), np.uint8)
        crowd[-6:, -6:] = 1
        anns.append(
            {
                "id": aid,
                "image_id": image_id,
                "category_id": 3,
                "segmentation": {"size": [h, w], "counts": _rle_counts(crowd)},
                "area": 36.0,
                "bbox": [w - 6, h - 6, 6, 6],
                "iscrowd": 1,
            }
        )
        aid += 1
        # panoptic PNG: segment id = R + 256 G + 256^2 B; ids > 255 exercise the G channel.
        seg_ids = {1: 300, 2: 70000}
        png = np.zeros((h, w, 3), np.uint8)
        for k, sid in seg_ids.items():
            m = ids == k
            png[m] = (sid % 256, (sid // 256) % 256, sid // 65536)
        pname = f"{image_id:012d}.png"
        Image.fromarray(png).save(pan_dir / pname)
        pans.append(
            {
                "image_id": image_id,
                "file_name": pname,
                "segments_info": [
                    {"id": s, "category_id": 1, "iscrowd": 0} for s in seg_ids.values()
                ],
            }
        )
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    paths = {
        "images": img_dir,
        "instances": root / "instances_train2017.json",
        "panoptic": root / "panoptic_train2017.json",
        "panoptic_pngs": pan_dir,
        "lvis": root / "lvis_v1_train.json",
        "root": root,
    }
    paths["instances"].write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    paths["panoptic"].write_text(
        json.dumps({"images": images, "annotations": pans, "categories": cats})
    )
    lvis_anns = [a for a in anns if not a["iscrowd"]]
    paths["lvis"].write_text(
        json.dumps({"images": lvis_images, "annotations": lvis_anns, "categories": cats})
    )
    return paths


def folder_dataset_override(index: int, root: Path) -> list[str]:
    return [
        f"data.datasets.{index}.type=folder",
        f"data.datasets.{index}.images={root / 'images'}",
        f"data.datasets.{index}.masks={root / 'masks'}",
    ]
