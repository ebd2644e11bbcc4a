"""The annotation app's HTTP API (FastAPI TestClient, the demo model, real images): prompts,
ΔIoU, undo / redo, reopening restores the refined state, export read back with pycocotools,
import, Stable-SAM's switch, clear 4xx errors."""

from __future__ import annotations

import numpy as np
import pytest
from app_support import IMAGES, copy_images, demo_model, gt_mask, inside_point, make_client  # noqa: F401

from steadysam.app.launch import open_project
from steadysam.app.masks import decode_rle
from steadysam.predictor import Predictor


@pytest.fixture
def project(tmp_path, demo_model):  # noqa: F811
    images = copy_images(tmp_path / "images")
    p = open_project(images, tmp_path / "project.sqlite", demo_model, "demo_focsam",
                     prefetch=False)  # fmt: skip
    yield p
    p.store.close()


def _image_id(client, stem: str) -> int:
    images = client.get("/api/images").json()
    return next(im["id"] for im in images if im["file_name"].startswith(stem))


def test_click_matches_a_direct_session_and_reopen_restores(project, demo_model, tmp_path):  # noqa: F811
    c = make_client(project)
    image_id = _image_id(c, "106024")
    gt = gt_mask(IMAGES[0])
    x, y = inside_point(gt)
    obj = c.post(f"/api/images/{image_id}/objects", json={"category_id": 1}).json()
    r1 = c.post(f"/api/objects/{obj['id']}/prompts", json={"type": "click", "x": x, "y": y})
    assert r1.status_code == 200, r1.text
    assert r1.json()["change"] == {"iou_previous": None, "delta_iou": None, "drop": False}
    r2 = c.post(f"/api/objects/{obj['id']}/prompts",
                json={"type": "click", "x": 20, "y": 20, "positive": False})  # fmt: skip
    body = r2.json()
    assert body["change"]["iou_previous"] is not None and body["change"]["delta_iou"] <= 0
    assert body["change"]["drop"] == (body["change"]["delta_iou"] < -0.01)

    # The same clicks through a plain ObjectSession (refiner at the 2nd click) give this mask.
    pred = Predictor(demo_model)
    pred.set_image(str(tmp_path / "images" / "106024.jpg"))
    session = pred.new_object()
    session.click(x, y)
    direct = session.click(20, 20, positive=False)
    assert session.refined
    served = decode_rle(body["object"]["mask"])
    assert np.array_equal(served, direct)

    # Undo returns the first mask (and the unrefined state), redo the second.
    first = decode_rle(r1.json()["object"]["mask"])
    undone = c.post(f"/api/objects/{obj['id']}/undo").json()
    assert np.array_equal(decode_rle(undone["mask"]), first) and undone["redo"] == 1
    redone = c.post(f"/api/objects/{obj['id']}/redo").json()
    assert np.array_equal(decode_rle(redone["mask"]), direct)

    # A fresh server on the same project (restart) continues the object where it was: the
    # next click is the 3rd on a refined object, exactly as in the uninterrupted session.
    project.store.close()
    again = open_project(tmp_path / "images", tmp_path / "project.sqlite", demo_model,
                         prefetch=False)  # fmt: skip
    c2 = make_client(again)
    r3 = c2.post(f"/api/objects/{obj['id']}/prompts", json={"type": "click", "x": x + 5, "y": y})
    expected = session.click(x + 5, y)
    assert np.array_equal(decode_rle(r3.json()["object"]["mask"]), expected)
    assert len(r3.json()["object"]["prompts"]) == 3
    again.store.close()


def test_box_then_click_and_second_object_other_category(project):
    c = make_client(project)
    image_id = _image_id(c, "124080")
    dog = c.post("/api/categories", json={"name": "dog"}).json()
    a = c.post(f"/api/images/{image_id}/objects", json={"category_id": 1}).json()
    b = c.post(f"/api/images/{image_id}/objects", json={"category_id": dog["id"]}).json()
    r = c.post(f"/api/objects/{a['id']}/prompts", json={"type": "box", "box": [200, 80, 400, 300]})
    assert r.status_code == 200 and r.json()["change"]["iou_previous"] is None
    r = c.post(f"/api/objects/{a['id']}/prompts", json={"type": "click", "x": 300, "y": 180})
    assert r.json()["change"]["iou_previous"] is not None
    c.post(f"/api/objects/{b['id']}/prompts", json={"type": "click", "x": 50, "y": 50})
    got = c.get(f"/api/images/{image_id}").json()
    assert got["status"] == "in_progress"
    got_objects = [(o["category"], len(o["prompts"])) for o in got["objects"]]
    assert got_objects == [("object", 2), ("dog", 1)]
    assert got["objects"][0]["prompts"][0] == {"type": "box", "box": [200.0, 80.0, 400.0, 300.0]}


def test_export_coco_reads_back_with_pycocotools(project, tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    c = make_client(project)
    drawn = {}
    for stem, name in (("106024", IMAGES[0]), ("101085", IMAGES[2])):
        image_id = _image_id(c, stem)
        x, y = inside_point(gt_mask(name))
        obj = c.post(f"/api/images/{image_id}/objects", json={"category_id": 1}).json()
        r = c.post(f"/api/objects/{obj['id']}/prompts", json={"type": "click", "x": x, "y": y})
        drawn[f"{stem}.jpg"] = decode_rle(r.json()["object"]["mask"])
    for seg in ("rle", "polygon"):
        r = c.get(f"/api/export/coco?segmentation={seg}")
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
        path = tmp_path / f"coco-{seg}.json"
        path.write_bytes(r.content)
        coco = COCO(str(path))
        for img in coco.dataset["images"]:
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            if img["file_name"] not in drawn:
                assert anns == []
                continue
            assert len(anns) == 1
            got = coco.annToMask(anns[0]).astype(bool)
            assert np.array_equal(got, drawn[img["file_name"]]), (seg, img["file_name"])
            if seg == "rle":
                assert isinstance(anns[0]["segmentation"]["counts"], str)
                assert mask_utils.area(anns[0]["segmentation"]) == drawn[img["file_name"]].sum()
    for fmt in ("yolo", "png"):
        r = c.get(f"/api/export/{fmt}")
        assert r.status_code == 200 and r.content[:2] == b"PK"  # a zip


def test_import_coco_then_correct(project, tmp_path):
    c = make_client(project)
    image_id = _image_id(c, "106024")
    gt = gt_mask(IMAGES[0])
    from steadysam.app.formats import write_coco
    from steadysam.app.labels import LabeledImage, LabeledObject, LabelSet

    labels = LabelSet(["penguin"], [LabeledImage("106024.jpg", 481, 321,
                                                 [LabeledObject("penguin", gt)])])  # fmt: skip
    write_coco(labels, tmp_path / "gt.json")
    r = c.post("/api/import/coco", content=(tmp_path / "gt.json").read_bytes())
    assert r.status_code == 200, r.text
    assert r.json()["objects"] == 1
    objs = c.get(f"/api/images/{image_id}").json()["objects"]
    assert objs[0]["category"] == "penguin" and objs[0]["imported"]
    assert np.array_equal(decode_rle(objs[0]["mask"]), gt)
    # Correct it with a click, then undo back to the imported mask.
    x, y = inside_point(gt)
    r = c.post(f"/api/objects/{objs[0]['id']}/prompts", json={"type": "click", "x": x, "y": y})
    assert r.status_code == 200 and r.json()["change"]["iou_previous"] is not None
    back = c.post(f"/api/objects/{objs[0]['id']}/undo").json()
    assert np.array_equal(decode_rle(back["mask"]), gt)
    bad = c.post("/api/import/coco", content=b'{"images": 3}')
    assert 400 <= bad.status_code < 500 and "error" in bad.json()


@pytest.mark.parametrize(
    "method, path, body, status, words",
    [
        ("post", "/api/objects/1/prompts", {"type": "click", "x": 1e9, "y": 1}, 400, "outside"),
        ("post", "/api/objects/1/prompts", {"type": "click", "x": 1}, 400, "needs x and y"),
        ("post", "/api/objects/1/prompts", {"type": "box", "box": [5, 5, 5, 9]}, 400, "empty"),
        ("post", "/api/objects/1/prompts", {"type": "box", "box": [1, 2]}, 422, "box"),
        ("post", "/api/objects/1/prompts", {"type": "lasso"}, 422, "type"),
        ("post", "/api/objects/1/prompts", {"type": "click", "x": 1, "y": 1, "z": 0}, 422, "z"),
        ("post", "/api/objects/999/prompts", {"type": "click", "x": 1, "y": 1}, 404, "no object"),
        ("post", "/api/objects/1/undo", None, 400, "nothing to undo"),
        ("get", "/api/images/999", None, 404, "no image with id 999"),
        ("get", "/api/images/abc", None, 422, "image_id"),
        ("get", "/api/export/xml", None, 404, "format"),
        ("put", "/api/images/1/status", {"status": "finished"}, 422, "status"),
        ("post", "/api/categories", {"name": ""}, 422, "name"),
        ("patch", "/api/objects/1", {"category_id": 77}, 404, "no category"),
        ("put", "/api/settings", {"plugin": True}, 400, "no Stable-SAM plugin"),
        ("get", "/api/nothing", None, 404, "Not Found"),
    ],
)
def test_bad_requests_get_clear_json_errors(project, method, path, body, status, words):
    c = make_client(project)
    c.post("/api/images/1/objects", json={"category_id": 1})
    kwargs = {} if body is None else {"json": body}
    r = getattr(c, method)(path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error and "Traceback" not in error


def test_malformed_json_is_a_4xx(project):
    c = make_client(project)
    json_type = {"content-type": "application/json"}
    r = c.post("/api/categories", content=b"{not json", headers=json_type)
    assert r.status_code == 422 and "error" in r.json()


def test_stable_sam_switch(tmp_path):
    from steadysam.weights.factory import build_model

    model = build_model("demo_stable_focsam")
    images = copy_images(tmp_path / "images", IMAGES[:1])
    p = open_project(images, tmp_path / "p.sqlite", model, prefetch=False)
    c = make_client(p)
    assert c.get("/api/project").json()["plugin_available"]
    click = {"type": "click", "x": 230, "y": 210}
    masks = {}
    for on in (True, False):
        assert c.put("/api/settings", json={"plugin": on}).json() == {"plugin_enabled": on}
        obj = c.post("/api/images/1/objects", json={"category_id": 1}).json()
        c.post(f"/api/objects/{obj['id']}/prompts", json=click)
        masks[on] = (obj["id"], c.post(f"/api/objects/{obj['id']}/prompts", json=click).json())
    # Off is exactly the model without its plugin (the base FocSAM decoder).
    plain = Predictor(model)
    plain.set_image(str(images / "106024.jpg"))
    from steadysam.app.session import PluginSwitch

    switch = PluginSwitch(model)
    switch.set(False)
    try:
        s = plain.new_object()
        s.click(230, 210)
        off = s.click(230, 210)
    finally:
        switch.set(True)
    assert np.array_equal(decode_rle(masks[False][1]["object"]["mask"]), off)
    assert not np.array_equal(decode_rle(masks[True][1]["object"]["mask"]), off)
    # After a restart with the plugin off, an object made with it on replays its prompts with
    # it on; the new click runs with it off.
    p.store.close()
    again = open_project(images, tmp_path / "p.sqlite", model, prefetch=False)
    c2 = make_client(again)
    c2.put("/api/settings", json={"plugin": False})
    r = c2.post(f"/api/objects/{masks[True][0]}/prompts", json={"type": "click", "x": 100, "y": 60})
    s = plain.new_object()
    s.click(230, 210)
    s.click(230, 210)
    switch.set(False)
    try:
        expected = s.click(100, 60)
    finally:
        switch.set(True)
    assert np.array_equal(decode_rle(r.json()["object"]["mask"]), expected)
    again.store.close()


def test_hq_sam_through_the_app(tmp_path):
    """HQ-SAM (early features cached with the embedding, fusion once per image) answers in the
    app exactly as a direct session does, before and after a restart (disk cache reused)."""
    import torch

    from steadysam.weights.factory import build_model

    torch.manual_seed(0)
    model = build_model("hq_sam_tiny", random_init=True).eval()
    images = copy_images(tmp_path / "images", IMAGES[:1])
    p = open_project(images, tmp_path / "p.sqlite", model, prefetch=False)
    c = make_client(p)
    obj = c.post("/api/images/1/objects", json={"category_id": 1}).json()
    served = [
        c.post(f"/api/objects/{obj['id']}/prompts", json=prompt).json()["object"]["mask"]
        for prompt in ({"type": "click", "x": 230, "y": 210},
                       {"type": "click", "x": 40, "y": 30, "positive": False})  # fmt: skip
    ]
    direct = Predictor(model)
    direct.set_image(str(images / "106024.jpg"))
    s = direct.new_object()
    expected = [s.click(230, 210), s.click(40, 30, positive=False)]
    for got, want in zip(served, expected, strict=True):
        assert np.array_equal(decode_rle(got), want)
    p.store.close()
    again = open_project(images, tmp_path / "p.sqlite", model, prefetch=False)
    r = make_client(again).post(f"/api/objects/{obj['id']}/prompts",
                                json={"type": "click", "x": 300, "y": 200})  # fmt: skip
    assert np.array_equal(decode_rle(r.json()["object"]["mask"]), s.click(300, 200))
    again.store.close()


def test_background_embeddings_fill_the_disk_cache(tmp_path, demo_model):  # noqa: F811
    import time

    from steadysam.app.project import cache_dir_for

    images = copy_images(tmp_path / "images")
    db = tmp_path / "project.sqlite"
    p = open_project(images, db, demo_model, prefetch=True)
    deadline = time.monotonic() + 120
    while p.engine.progress()["working"]:
        assert time.monotonic() < deadline, p.engine.progress()
        time.sleep(0.05)
    assert p.engine.progress() == {"prepared": 3, "total": 3, "working": False, "error": None}
    p.engine.stop_worker()
    p.store.close()
    cache = cache_dir_for(db)
    assert cache == tmp_path / "project.steadysam-cache" and len(list(cache.glob("*.pt"))) == 3
    # A restarted server finds them: opening an image runs no encoder.
    again = open_project(images, db, demo_model, prefetch=False)
    assert again.open_image(2)["encoder_ms"] == 0.0
    again.store.close()


def test_priority_lock_serves_clicks_first():
    import threading
    import time

    from steadysam.app.session import PriorityLock

    lock, order = PriorityLock(), []
    holding = threading.Event()

    def first() -> None:
        with lock.background():
            holding.set()
            time.sleep(0.3)

    def waiter(kind: str) -> None:
        with getattr(lock, kind)():
            order.append(kind)

    t0 = threading.Thread(target=first)
    t0.start()
    holding.wait()
    bg = threading.Thread(target=waiter, args=("background",))
    bg.start()
    time.sleep(0.1)  # the background job waits first ...
    fg = threading.Thread(target=waiter, args=("foreground",))
    fg.start()
    for t in (t0, bg, fg):
        t.join(timeout=10)
    assert order == ["foreground", "background"]  # ... the click still goes first
