"""SIGKILL durability of ``steadysam annotate``: the real command in a child process, killed
right after it committed an action whose answer never went out; a restarted server finds every
committed action and continues the object exactly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from app_support import IMAGES, copy_images, gt_mask, inside_point, request
from conftest import kill_when_paused, paused_command

from steadysam.app.masks import decode_rle

pytestmark = pytest.mark.multiprocess

URL = re.compile(rb"open (http://127\.0\.0\.1:\d+)/")


def _wait_url(proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = URL.search(log.read_bytes()) if log.exists() else None
        if m:
            return m.group(1).decode()
        assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"no URL after {timeout} s:\n{log.read_text()}")


def test_sigkill_loses_no_committed_action(tmp_path):
    images = copy_images(tmp_path / "images", IMAGES[:2])
    db = tmp_path / "project.sqlite"
    argv = ["annotate", images, "--db", db, "--port", "0", "--no-prefetch"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    marker, log = tmp_path / "paused", tmp_path / "child.log"
    # Pause (then SIGKILL) right after the 3rd prompt is committed, before it is answered.
    cmd = paused_command("steadysam.app.store:Store.push_prompt", 3, marker, argv,
                         module="steadysam")  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        base = _wait_url(proc, log)
        x, y = inside_point(gt_mask(IMAGES[0]))
        image_id = next(im["id"] for im in request(base, "GET", "/api/images")[1]
                        if im["file_name"] == "106024.jpg")  # fmt: skip
        status, cat = request(base, "POST", "/api/categories", {"name": "penguin"})
        assert status == 201
        _, obj = request(base, "POST", f"/api/images/{image_id}/objects",
                         {"category_id": cat["id"]})  # fmt: skip
        clicks = [(x, y, True), (20, 20, False), (x + 4, y + 30, True)]
        for cx, cy, pos in clicks[:2]:
            status, _ = request(base, "POST", f"/api/objects/{obj['id']}/prompts",
                                {"type": "click", "x": cx, "y": cy, "positive": pos})  # fmt: skip
            assert status == 200
        status, _ = request(base, "PATCH", f"/api/objects/{obj['id']}", {"name": "Pingu"})
        assert status == 200
        request(base, "PUT", f"/api/images/{image_id}/status", {"status": "done"})
        # The 3rd click: its answer never comes (the server is killed after the commit).
        third = threading.Thread(target=lambda: request(
            base, "POST", f"/api/objects/{obj['id']}/prompts",
            {"type": "click", "x": clicks[2][0], "y": clicks[2][1]}), daemon=True)  # fmt: skip
        third.start()
        kill_when_paused(proc, marker, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Restart the plain command on the same project: everything is there.
    log2 = tmp_path / "child2.log"
    with open(log2, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "steadysam", *map(str, argv)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        base = _wait_url(proc, log2)
        _, image = request(base, "GET", f"/api/images/{image_id}")
        assert image["status"] == "done"
        (got,) = image["objects"]
        assert (got["name"], got["category"]) == ("Pingu", "penguin")
        assert [(p["x"], p["y"], p["positive"]) for p in got["prompts"]] == [
            (float(cx), float(cy), pos) for cx, cy, pos in clicks
        ]
        # The object continues exactly: a 4th click on the restarted server equals the same four
        # clicks in one uninterrupted session (refined state restored by replay).
        status, r = request(base, "POST", f"/api/objects/{got['id']}/prompts",
                            {"type": "click", "x": 300, "y": 100, "positive": False})  # fmt: skip
        assert status == 200, r
    finally:
        proc.kill()
        proc.wait()
    from steadysam.predictor import Predictor
    from steadysam.weights.factory import build_model

    pred = Predictor(build_model("demo_focsam"))
    pred.set_image(str(images / "106024.jpg"))
    s = pred.new_object()
    for cx, cy, pos in clicks:
        third_mask = s.click(cx, cy, pos)
    expected = s.click(300, 100, False)
    assert np.array_equal(decode_rle(got["mask"]), third_mask)
    assert np.array_equal(decode_rle(r["object"]["mask"]), expected)
