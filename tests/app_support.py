"""Shared pieces of the annotation-app tests (tests/test_app_*.py): a small project on real
images, the demo model, an API client."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_ROOT

from steadysam.datafiles import label_map, read_mask

IMAGES = ("GrabCut/106024", "GrabCut/124080", "Berkeley/101085")


def copy_images(dst: Path, names: tuple[str, ...] = IMAGES) -> Path:
    """Copy a few real images into ``dst`` (a tmp folder; the shared data stays untouched)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        folder, stem = name.split("/")
        src = DATA_ROOT / folder / "images" / f"{stem}.jpg"
        if not src.is_file():
            pytest.fail(f"real data not found at {src}: set STEADYSAM_DATA")
        shutil.copy(src, dst / f"{stem}.jpg")
    return dst


def gt_mask(name: str) -> np.ndarray:
    """The ground-truth mask (H x W bool) of one of IMAGES."""
    folder, stem = name.split("/")
    masks = DATA_ROOT / folder / "masks"
    path = next(p for p in masks.iterdir() if p.stem == stem)
    labels = label_map(read_mask(path)[0])
    return labels == labels.max()  # GrabCut: 255 object, 128 boundary band, 0 background


def inside_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of a pixel deep inside ``mask`` (largest distance to the background)."""
    import cv2

    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return int(x), int(y)


@pytest.fixture(scope="session")
def demo_model():
    from steadysam.weights.factory import build_model

    return build_model("demo_focsam")


def make_client(project):
    """A TestClient on the app as served (with the security layer, loopback rules)."""
    from fastapi.testclient import TestClient

    from steadysam.app.security import loopback_hosts
    from steadysam.app.server import create_app, guarded

    app = guarded(create_app(project), loopback_hosts(8765), None)
    return TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False)


def request(base: str, method: str, path: str, body=None) -> tuple[int, dict]:
    """(status, parsed JSON) of one plain HTTP request to a running server."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
