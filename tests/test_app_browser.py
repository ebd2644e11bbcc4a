"""End to end in a real browser: headless Chromium from the Debian package (``/usr/bin/chromium``,
driven by Playwright through ``executable_path``; no browser is ever downloaded) against a real
server with the demo model on real images.

Click an object, see the mask on the canvas, undo / redo, add a second object with another
category (a box), export COCO with the page's button and read it back with pycocotools against
what was drawn, reopen the page and find everything. The screenshot goes to tmp_path.

Skipped only when Chromium is missing and ``CI`` is unset; in CI a missing browser fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from app_support import IMAGES, copy_images, demo_model, gt_mask, inside_point  # noqa: F401

from steadysam.app.launch import Server, open_project
from steadysam.app.masks import decode_rle

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.multiprocess  # starts the browser's processes

if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; CI installs it)",
                allow_module_level=True)  # fmt: skip


@pytest.fixture
def app_server(tmp_path, demo_model):  # noqa: F811
    images = copy_images(tmp_path / "images")
    project = open_project(images, tmp_path / "project.sqlite", demo_model, "demo_focsam")
    server = Server(project, "127.0.0.1", 0).start()
    yield server
    server.stop()
    project.store.close()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"the browser test needs Chromium at {CHROMIUM} (apt)"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                               args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
        yield b
        b.close()


def _settle(page) -> None:
    page.wait_for_function("document.body.dataset.busy === '0'", timeout=120_000)


def _client_point(page, x: float, y: float) -> tuple[float, float]:
    p = page.evaluate("([x, y]) => window.steadysam.imageToClient(x, y)", [x + 0.5, y + 0.5])
    return p["x"], p["y"]


def _canvas_pixel(page, x: float, y: float) -> list[int]:
    """The canvas's RGBA at image pixel (x, y) (what the user sees there)."""
    return page.evaluate(
        """([x, y]) => {
            const c = document.getElementById('canvas');
            const v = window.steadysam.state.view;
            const d = c.getContext('2d').getImageData(
                Math.round(x * v.scale + v.x), Math.round(y * v.scale + v.y), 1, 1).data;
            return Array.from(d);
        }""",
        [x + 0.5, y + 0.5],
    )


def _objects(page) -> list[dict]:
    return page.evaluate("window.steadysam.state.image.objects")


def test_label_two_objects_undo_redo_export(app_server, browser, tmp_path):
    from pycocotools.coco import COCO

    page = browser.new_page(viewport={"width": 1400, "height": 850}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(app_server.url)
    page.wait_for_selector("body[data-ready='1']", timeout=120_000)
    _settle(page)
    image = page.evaluate("window.steadysam.state.image")
    name = next(n for n in IMAGES if n.endswith(Path(image["file_name"]).stem))
    gt = gt_mask(name)
    x, y = inside_point(gt)

    # 1. A positive click on the object: a mask appears on the canvas.
    page.mouse.click(*_client_point(page, x, y))
    page.wait_for_function("window.steadysam.state.image.objects.length === 1 && "
                           "window.steadysam.state.image.objects[0].mask !== null")  # fmt: skip
    _settle(page)
    (first,) = _objects(page)
    mask1 = decode_rle(first["mask"])
    assert mask1.sum() > 100, "the demo model should find an object under the click"
    assert page.locator("#objects li").count() == 1
    # The overlay is on the canvas: a mask pixel away from the click marker changes colour
    # when the object is hidden (H) and comes back when it is shown again.
    ys, xs = np.nonzero(mask1)
    far = np.hypot(xs - x, ys - y) > 12
    px, py = int(xs[far][0]), int(ys[far][0])
    shown = _canvas_pixel(page, px, py)
    page.keyboard.press("h")
    page.wait_for_function("window.steadysam.state.image.objects[0].hidden === true")
    _settle(page)
    assert _canvas_pixel(page, px, py) != shown, "the mask overlay is not drawn"
    page.keyboard.press("h")
    page.wait_for_function("window.steadysam.state.image.objects[0].hidden === false")
    _settle(page)
    assert _canvas_pixel(page, px, py) == shown

    # 2. A negative click (right button) on the background, then undo and redo by key.
    bg = np.argwhere(~gt & ~mask1)[len(np.argwhere(~gt & ~mask1)) // 2]
    page.mouse.click(*_client_point(page, int(bg[1]), int(bg[0])), button="right")
    page.wait_for_function("window.steadysam.state.image.objects[0].prompts.length === 2")
    _settle(page)
    mask2 = decode_rle(_objects(page)[0]["mask"])
    assert page.inner_text("#change").startswith("ΔIoU")
    page.keyboard.press("z")
    page.wait_for_function("window.steadysam.state.image.objects[0].prompts.length === 1")
    _settle(page)
    assert np.array_equal(decode_rle(_objects(page)[0]["mask"]), mask1)
    page.keyboard.press("y")
    page.wait_for_function("window.steadysam.state.image.objects[0].prompts.length === 2")
    _settle(page)
    assert np.array_equal(decode_rle(_objects(page)[0]["mask"]), mask2)

    # 3. A second object with a new category: add it, finish the first object (N), drag a box.
    page.fill("#new-category", "background thing")
    page.click("#add-category button")
    page.wait_for_function("window.steadysam.state.project.categories.length === 2")
    page.focus("#canvas")
    page.keyboard.press("n")
    h, w = gt.shape
    x0, y0 = _client_point(page, 2, 2)
    x1, y1 = _client_point(page, w // 4, h // 4)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()
    page.wait_for_function("window.steadysam.state.image.objects.length === 2 && "
                           "window.steadysam.state.image.objects[1].mask !== null")  # fmt: skip
    _settle(page)
    objs = _objects(page)
    assert [o["category"] for o in objs] == ["object", "background thing"]
    assert objs[1]["prompts"][0]["type"] == "box"
    page.screenshot(path=str(tmp_path / "app.png"))
    assert (tmp_path / "app.png").stat().st_size > 10_000

    # 4. Export COCO with the button; pycocotools reads back exactly what was drawn.
    with page.expect_download() as info:
        page.click("#export-coco")
    path = tmp_path / "export.json"
    info.value.save_as(path)
    coco = COCO(str(path))
    (img,) = [i for i in coco.dataset["images"] if i["file_name"] == image["file_name"]]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
    cats = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    assert sorted(cats[a["category_id"]] for a in anns) == ["background thing", "object"]
    for obj in objs:
        (ann,) = [a for a in anns if cats[a["category_id"]] == obj["category"]]
        assert np.array_equal(coco.annToMask(ann).astype(bool), decode_rle(obj["mask"]))

    # 5. Close the page, open a new one: everything is still there.
    page.close()
    page = browser.new_page(viewport={"width": 1400, "height": 850})
    page.goto(f"{app_server.url}#{image['id']}")
    page.wait_for_selector("body[data-ready='1']", timeout=120_000)
    _settle(page)
    assert page.locator("#objects li").count() == 2
    again = _objects(page)
    assert [len(o["prompts"]) for o in again] == [2, 1]
    assert np.array_equal(decode_rle(again[0]["mask"]), mask2)
    assert errors == []
