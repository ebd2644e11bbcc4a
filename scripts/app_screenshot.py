"""Make docs/app.png: the annotation app in headless Chromium (the Debian package at
/usr/bin/chromium, driven by Playwright) with the demo model, two labelled objects on a
GrabCut image. The project lives in a temporary folder; only the PNG is written.

Usage: .venv/bin/python scripts/app_screenshot.py [--out docs/app.png] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("106024", "124080", "153077", "181079")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs" / "app.png"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from steadysam.app.launch import Server, open_project
    from steadysam.weights.factory import build_model

    with tempfile.TemporaryDirectory(prefix="steadysam-shot-") as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        for stem in IMAGES:
            shutil.copy(Path(args.data) / "GrabCut" / "images" / f"{stem}.jpg", images)
        project = open_project(images, Path(tmp) / "p.sqlite", build_model("demo_focsam"),
                               "demo_focsam")  # fmt: skip
        project.store.add_category("penguin")
        project.store.add_category("rock")
        server = Server(project, "127.0.0.1", 0).start()
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, headless=True,
                                             args=["--no-sandbox"])  # fmt: skip
                page = browser.new_page(viewport={"width": 1400, "height": 800})
                page.goto(server.url)
                page.wait_for_selector("body[data-ready='1']", timeout=120_000)

                def settle() -> None:
                    page.wait_for_function("document.body.dataset.busy === '0'")

                def at(x: float, y: float) -> tuple[float, float]:
                    p = page.evaluate("([x, y]) => window.steadysam.imageToClient(x, y)", [x, y])
                    return p["x"], p["y"]

                settle()
                page.keyboard.press("3")  # rock
                page.mouse.click(*at(250, 300))
                settle()
                page.keyboard.press("n")
                page.keyboard.press("2")  # penguin
                for x, y, button in ((230, 210, "left"), (232, 120, "left"), (272, 160, "right")):
                    page.mouse.click(*at(x, y), button=button)
                    settle()
                page.wait_for_timeout(300)
                out = Path(args.out)
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out))
                browser.close()
        finally:
            server.stop()
            project.store.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
