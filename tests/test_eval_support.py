"""Fakes and fixtures shared by the eval tests (no test functions here).

``FakePredictor`` implements the predictor interface the runner uses (set_image /
last_encoder_seconds / new_object / click / timings) with a pure function of the clicks: the
mask is the union of disks around positive clicks minus disks around negative clicks. It is
deterministic and independent of the lead's real predictor.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(  # the same folder as conftest.DATA_ROOT
    os.environ.get("STEADYSAM_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


class FakeSession:
    def __init__(self, owner: FakePredictor, mode: str, refine_at: int | None) -> None:
        self.owner = owner
        self.mode = mode
        self.refine_at = refine_at
        self.clicks: list[tuple[int, int, bool]] = []
        self.timings = {"decoder": 0.0, "refiner": 0.0}

    def click(self, x: int, y: int, positive: bool = True) -> np.ndarray:
        t0 = time.perf_counter()
        if self.owner.delay:
            time.sleep(self.owner.delay)
        self.clicks.append((x, y, positive))
        h, w = self.owner.size
        yy, xx = np.mgrid[:h, :w]
        mask = np.zeros((h, w), bool)
        for cx, cy, pos in self.clicks:
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= self.owner.radius**2
            mask = mask | disk if pos else mask & ~disk
        self.timings["decoder"] += time.perf_counter() - t0
        if self.refine_at is not None and len(self.clicks) == self.refine_at + 1:
            self.timings["refiner"] += 1e-6
        if self.owner.wrong_shape:
            return mask[:-1]
        return mask


class FakePredictor:
    """Disk-painting predictor. ``radius`` in pixels, ``delay`` seconds slept per click.
    ``model``: an optional torch module standing for the weights (the runner records its
    state digest; without one the weights are unknown)."""

    def __init__(
        self, radius: int = 10, delay: float = 0.0, wrong_shape: bool = False, model=None
    ) -> None:
        self.radius = radius
        self.delay = delay
        self.wrong_shape = wrong_shape
        if model is not None:
            self.model = model
        self.size = (0, 0)
        self.set_image_calls = 0
        self.last_encoder_seconds = 0.0

    def set_image(self, image: np.ndarray) -> None:
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        self.size = image.shape[:2]
        self.set_image_calls += 1
        self.last_encoder_seconds = 0.5  # a fixed "encoder time" makes SPC checkable

    def new_object(self, mode: str = "focsam", refine_at: int | None = 1) -> FakeSession:
        return FakeSession(self, mode, refine_at)


def disk_mask(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_folder(root: Path, n: int = 6, size: tuple[int, int] = (48, 64)) -> Path:
    """Generic images/ + masks/ dataset: sample i has a disk of radius 10 (one click = IoU 1
    with FakePredictor(radius=10)) and, for odd i, a second disk (two clicks)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    h, w = size
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / f"s{i:03d}.png")
        m = disk_mask(h, w, 14, 14 + (i % 3), 10)
        if i % 2:
            m |= disk_mask(h, w, 33, 48, 10)
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / f"s{i:03d}.png")
    return root


def strip_timing(records: list[dict]) -> list[dict]:
    """Records without the fields that legitimately differ between runs (timings)."""
    return [{k: v for k, v in r.items() if k != "timing"} for r in records]


def tiny_model(name: str = "sam_tiny", seed: int = 0):
    """A small random-weight model, the same for the same seed."""
    import torch

    from steadysam import build_sam, sam_config

    torch.manual_seed(seed)
    return build_sam(sam_config(name)).eval()


def tiny_checkpoint(path: Path, name: str = "sam_tiny", seed: int = 0) -> Path:
    """Write :func:`tiny_model` as a steadysam checkpoint file (real weights behind a path)."""
    from steadysam.weights.files import save_checkpoint

    save_checkpoint(tiny_model(name, seed), path)
    return Path(path)
