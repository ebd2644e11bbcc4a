"""Click round trip of the annotation app vs. a direct ``ObjectSession.click``, side by side.

HTTP: a keep-alive connection (as a browser's) POSTs a click to a real server (uvicorn in a
thread, the same process) and stops the clock when the answer is parsed and its RLE mask decoded
to an array ("mask ready"). Direct: ``ObjectSession.click`` on the same model and image. Both
run interleaved, on objects of three clicks (1st: decoder, 2nd: FocSAM refiner + decoder, 3rd:
decoder on the refined embedding), after the image's embedding is prepared; medians per click.

Usage: .venv/bin/python bench/bench_app.py [--model NAME] [--checkpoint FILE] [--runs N]
       [--threads T] [--image PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as steadysam annotate, before torch

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from steadysam.app.launch import Server, open_project  # noqa: E402
from steadysam.app.masks import decode_rle  # noqa: E402
from steadysam.predictor import Predictor  # noqa: E402
from steadysam.weights.factory import build_model  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLICKS = [(230, 210, True), (60, 40, False), (250, 120, True)]  # (x, y, positive), 481x321


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo_focsam")
    ap.add_argument("--checkpoint")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image", default=str(DATA / "GrabCut" / "images" / "106024.jpg"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.model, args.checkpoint)

    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        shutil.copy(args.image, images / Path(args.image).name)
        project = open_project(images, Path(tmp) / "p.sqlite", model, args.model, prefetch=False)
        server = Server(project, "127.0.0.1", 0).start()
        conn = http.client.HTTPConnection("127.0.0.1", server.port)

        def call(method: str, path: str, body=None) -> dict:
            conn.request(method, path, None if body is None else json.dumps(body),
                         {"Content-Type": "application/json"})  # fmt: skip
            r = conn.getresponse()
            data = json.loads(r.read())
            assert r.status < 300, data
            return data

        call("POST", "/api/images/1/open")  # embedding prepared, as the UI does on open
        predictor = Predictor(model)
        predictor.set_image(str(images / Path(args.image).name))

        http_ms: list[list[float]] = [[] for _ in CLICKS]
        server_ms: list[list[float]] = [[] for _ in CLICKS]
        direct_ms: list[list[float]] = [[] for _ in CLICKS]
        for run in range(args.runs + 1):  # run 0 warms up
            obj = call("POST", "/api/images/1/objects", {"category_id": 1})
            session = predictor.new_object()
            for k, (x, y, positive) in enumerate(CLICKS):
                t = time.perf_counter()
                r = call("POST", f"/api/objects/{obj['id']}/prompts",
                         {"type": "click", "x": x, "y": y, "positive": positive})  # fmt: skip
                decode_rle(r["object"]["mask"])
                t_http = time.perf_counter() - t
                t = time.perf_counter()
                session.click(x, y, positive)
                t_direct = time.perf_counter() - t
                if run:
                    http_ms[k].append(t_http * 1000)
                    server_ms[k].append(r["ms"])
                    direct_ms[k].append(t_direct * 1000)
        conn.close()
        server.stop()
        project.store.close()

    h, w = predictor.original_size
    print(f"model {args.model}, image {Path(args.image).name} ({w}x{h}), {args.runs} runs, "
          f"{args.threads} threads; medians in ms")  # fmt: skip
    print(f"{'click':<26}{'direct':>9}{'HTTP':>9}{'server':>9}{'overhead':>10}{'ratio':>8}")
    names = ["1st (decoder)", "2nd (refiner + decoder)", "3rd (decoder, refined)"]
    for k, name in enumerate(names):
        d = statistics.median(direct_ms[k])
        t = statistics.median(http_ms[k])
        s = statistics.median(server_ms[k])
        print(f"{name:<26}{d:>9.1f}{t:>9.1f}{s:>9.1f}{t - d:>10.1f}{t / d:>8.2f}")


if __name__ == "__main__":
    main()
