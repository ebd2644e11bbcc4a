"""``steadysam annotate`` and ``steadysam export`` (thin: parse, call ``launch`` / the store and
the export writers). Nothing heavy is imported until a command runs: ``steadysam --help`` stays
torch-free.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steadysam.cli_common import (
    EXIT_OK,
    add_debug_arg,
    add_model_args,
    model_kwargs,
    predictor_kwargs,
)

FORMATS = ("coco", "yolo", "png")  # formats.FORMATS, without importing the writers here

EPILOG_ANNOTATE = """\
examples:
  steadysam annotate photos/ --db photos.sqlite                 # the built-in demo model
  steadysam annotate photos/ --db photos.sqlite --model sam_vit_h
  steadysam annotate photos/ --db photos.sqlite --model sam_vit_l \\
      --checkpoint sam_vit_l.pth --plugin rts.safetensors      # Stable-SAM's plugin on
  steadysam annotate photos/ --db photos.sqlite --import-coco old.json
Open the URL it prints. Press ? in the page for the keyboard shortcuts; docs/app.md has more.
"""


def cmd_annotate(args: argparse.Namespace) -> int:
    from steadysam.eval.cli import _default_model

    from .launch import Server, check_paths, open_project
    from .security import is_loopback

    check_paths(args.images_dir, args.db)  # before the model loads: bad paths fail fast
    if args.import_coco and not Path(args.import_coco).is_file():
        raise FileNotFoundError(f"--import-coco {args.import_coco!r}: no such file")
    _default_model(args)
    if not is_loopback(args.host):
        print(
            f"steadysam: listening on {args.host}, reachable from other machines: every "
            "request needs the access token in the URL below",
            file=sys.stderr,
        )
    from steadysam.eval.runner import check_device
    from steadysam.weights.factory import build_model

    check_device(args.device)  # before the model loads, as the paths
    model = build_model(**model_kwargs(args))
    if args.device:
        model = model.to(args.device)
    name = args.model or Path(args.checkpoint).name
    project = open_project(
        args.images_dir,
        args.db,
        model,
        name,
        prefetch=not args.no_prefetch,
        relink=args.relink,
        predictor_kwargs=predictor_kwargs(args),
    )
    if args.import_coco:
        data = Path(args.import_coco)
        import hashlib

        content = data.read_bytes()
        # The same command is often run again to restart the server: import a file only once.
        key = "imported:" + hashlib.sha256(content).hexdigest()
        if project.store.meta(key) is not None:
            print(f"{data} was imported before ({project.store.meta(key)}): not again")
        else:
            counts = project.import_coco_bytes(content)
            project.store.set_meta(key, str(data))
            print(
                f"imported {counts['objects']} object(s) on {counts['images']} image(s) "
                f"({counts['categories']} new categories) from {data}"
            )
    server = Server(project, args.host, args.port, args.token)
    n = len(project.store.images())
    print(f"steadysam annotate: {n} images in {project.root}, project {args.db}")
    print(f"open {server.url}  (Ctrl-C stops the server; every action is saved as it happens)")
    sys.stdout.flush()
    try:
        server.run()
    finally:
        project.store.close()
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .formats import export
    from .store import Store

    if args.format not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, not {args.format!r}")
    store = Store(args.db, readonly=True)
    try:
        labels = store.labelset()
        images_dir = store.meta("images_dir")
    finally:
        store.close()
    out = Path(args.out)
    export(labels, args.format, out, images_dir=images_dir, segmentation=args.segmentation)
    n = sum(len(im.objects) for im in labels.images)
    print(f"wrote {n} object(s) on {len(labels.images)} image(s) as {args.format} to {out}")
    return EXIT_OK


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, not {text!r}")
    return port


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``annotate`` and ``export`` to the top-level CLI."""
    p = sub.add_parser(
        "annotate",
        help="label a folder of images in the browser (local web app)",
        description="Starts a local web server for labelling the images of IMAGES_DIR with "
        "clicks and boxes (several objects per image, categories, undo / redo, ΔIoU drop "
        "warnings, export) and prints its URL. Every action is saved to --db at once.",
        epilog=EPILOG_ANNOTATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "images_dir", metavar="IMAGES_DIR", help="folder of images (searched recursively)"
    )
    p.add_argument("--db", required=True, help="project file (SQLite; created if missing)")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs the token)")
    p.add_argument("--port", type=_port, default=8765, help="port (default 8765; 0: any free)")
    p.add_argument("--token", help="access token for a non-loopback --host (default: random)")
    p.add_argument("--import-coco", metavar="FILE",
                   help="add the objects of a COCO file (masks, no prompts) before serving")
    p.add_argument("--device", help="torch device, e.g. cuda (default cpu)")
    p.add_argument("--no-prefetch", action="store_true",
                   help="do not compute the other images' embeddings in the background")
    p.add_argument("--relink", action="store_true",
                   help="the images moved: use IMAGES_DIR for a project made for another folder")
    add_debug_arg(p)
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser(
        "export",
        help="write an annotation project's labels as COCO, YOLO or PNG",
        description="Reads the project (read-only; the server may be running) and writes its "
        "labels: coco = one JSON file (masks as RLE, or as polygons with --segmentation "
        "polygon), yolo = a folder of YOLO segmentation label files, png = a folder of instance "
        "and semantic maps (docs/app.md, docs/app-formats.md).",
    )
    p.add_argument("--db", required=True, help="the project file")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("--out", required=True, help="output file (coco) or folder (yolo, png)")
    p.add_argument(
        "--segmentation",
        choices=("rle", "polygon"),
        default="rle",
        help="COCO only: masks as RLE (default) or polygons (holes kept by zero-width cuts; "
        "an object whose polygons would not fill back to its mask stays RLE)",
    )
    add_debug_arg(p)
    p.set_defaults(func=cmd_export)
