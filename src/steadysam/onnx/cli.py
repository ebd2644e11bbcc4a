"""``steadysam export-onnx``: write a model's ONNX graphs and sidecars (thin: parse, call
``steadysam.onnx.export.export_onnx``, print). Exit codes as ``steadysam.cli_common``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..cli_common import EXIT_OK, add_debug_arg, add_model_args, model_kwargs

EPILOG = """\
writes into OUT: model.json (manifest), encoder.onnx, decoder.onnx (prompt encoder + mask
decoder; a Stable-SAM plugin runs inside it), refiner.onnx (FocSAM models), decoder_int8.onnx
(--int8), each with its .json sidecar. Run them without torch:
  python -c "from steadysam.onnx import OnnxPredictor; p = OnnxPredictor('OUT')"
examples:
  steadysam export-onnx --model demo_focsam --out onnx/demo_focsam
  steadysam export-onnx --model sam_vit_b --download --out onnx/sam_vit_b --int8
  steadysam export-onnx --model demo_focsam --plugin plugin.safetensors --out onnx/stable
See docs/onnx.md.
"""


def add_parsers(subparsers: Any) -> None:
    """Add the ``export-onnx`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "export-onnx",
        help="export the model to ONNX (encoder, decoder, refiner) for onnxruntime",
        description="Traces the image encoder, the prompt encoder + mask decoder (dynamic "
        "number of points, mask input, all mask outputs) and FocSAM's refiner (dense form) "
        "with the reference math, checks each graph in onnxruntime against PyTorch, and "
        "writes them with JSON sidecars describing inputs and preprocessing.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write decoder_int8.onnx (onnxruntime dynamic int8 quantisation)",
    )
    add_debug_arg(p)
    p.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if getattr(args, "precision", "fp32") != "fp32":
        raise ValueError(
            f"--precision {args.precision}: export-onnx writes fp32 graphs (an int8 decoder "
            "with --int8); precision is not a property of the exported files"
        )
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if not args.model and not args.checkpoint and not args.random_init:
        from ..weights.factory import print_demo_notice
        from ..weights.registry import DEFAULT_MODEL

        args.model = DEFAULT_MODEL
        print_demo_notice()
    from ..weights.factory import build_model
    from .export import export_onnx

    model = build_model(**model_kwargs(args))
    name = args.model or Path(args.checkpoint).name
    if args.plugin:
        name = f"{name}+{Path(args.plugin).name}"
    export_onnx(model, out, name=name, int8=args.int8)
    manifest = json.loads((out / "model.json").read_text(encoding="utf-8"))
    for graph in manifest["graphs"]:
        sidecar = json.loads((out / f"{graph}.json").read_text(encoding="utf-8"))
        size = (out / sidecar["file"]).stat().st_size / 2**20
        check = sidecar.get("export_check")
        note = f"max |onnxruntime - torch| {check['max_abs_diff']:.2g}" if check else "quantised"
        print(f"{sidecar['file']:<20} {size:8.1f} MiB  {note}")
    print(f"wrote {out} (model {name}, weights {manifest['weights_digest'][:12]})")
    return EXIT_OK
