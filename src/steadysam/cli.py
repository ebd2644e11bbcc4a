"""``steadysam`` command line: parse arguments, call the library, print.

Exit codes: 0 ok, 1 runtime failure (network, unexpected error), 2 bad usage or bad input
(unreadable image or checkpoint, click outside the image, empty box, unknown model name).
Errors are one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .app import cli as app_cli
from .cli_common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    add_debug_arg,
    add_model_args,
    model_kwargs,
    predictor_kwargs,
)
from .eval import cli as eval_cli
from .train import cli as train_cli


# -- argument types --------------------------------------------------------------------------
def _numbers(text: str, count: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise argparse.ArgumentTypeError(
            f"{what} must be {count} comma-separated numbers: {text!r}"
        )
    return values


def parse_click(text: str) -> tuple[float, float, bool]:
    """``X,Y`` (positive), ``X,Y,+`` or ``X,Y,-`` -> (x, y, positive)."""
    parts = text.split(",")
    sign = parts.pop() if len(parts) == 3 else "+"
    signs = {"+": True, "pos": True, "1": True, "-": False, "neg": False, "0": False}
    if sign not in signs:
        raise argparse.ArgumentTypeError(f"click label must be + or -, not {sign!r} in {text!r}")
    x, y = _numbers(",".join(parts), 2, "a click (X,Y[,+|-])")
    return x, y, signs[sign]


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``X0,Y0,X1,Y1`` in image pixels."""
    x0, y0, x1, y1 = _numbers(text, 4, "a box (X0,Y0,X1,Y1)")
    return x0, y0, x1, y1


def _write_png(path: Path, image) -> None:
    """Atomic PNG write (temporary file in the same folder + os.replace)."""
    from PIL import Image

    from .atomic import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


# -- subcommands -----------------------------------------------------------------------------
def cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from .eval.runner import check_device
    from .predictor import Predictor
    from .preprocess import load_image
    from .weights.factory import build_model

    if not args.click and args.box is None:
        raise ValueError("give at least one --click X,Y[,+|-] or a --box X0,Y0,X1,Y1")
    check_device(args.device)
    if Path(args.out).suffix.lower() != ".png":
        raise ValueError(
            f"--out {args.out!r}: the mask is written as a lossless PNG, so the file name must "
            "end in .png"
        )
    rgb = load_image(args.image)  # before the model: a bad image fails fast
    model = build_model(**model_kwargs(args))
    if args.device:
        model = model.to(args.device)
    predictor = Predictor(model, **predictor_kwargs(args))
    predictor.set_image(rgb)
    session = predictor.new_object()
    mask = None
    if args.box is not None:
        mask = session.set_box(*args.box)
    for x, y, positive in args.click:
        mask = session.click(x, y, positive)
    out = Path(args.out)
    _write_png(out, mask.astype(np.uint8) * 255)
    h, w = mask.shape
    area = int(mask.sum())
    print(f"mask area: {area} px ({area / (h * w):.2%} of {w}x{h}); wrote {out}")
    if args.logits:
        logits = predictor.frame.logits_to_original(session.logits)[0, 0].cpu().numpy()
        path = out.with_suffix(".logits.npy")
        np.save(path, logits.astype(np.float32))
        print(f"wrote logits {path}")
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    from .weights import hub

    print(hub.download(args.name, args.dir, progress=not args.quiet))
    return EXIT_OK


def model_info(name: str) -> dict:
    """What ``steadysam info NAME`` shows about a registered name, as plain data."""
    from .weights import hub
    from .weights.files import describe, parameter_counts
    from .weights.registry import model_record

    record = model_record(name)
    config = record.config()
    info = {
        "name": name,
        "summary": record.summary,
        "weights": record.weights,
        "architecture": describe(config),
        "config": config.to_dict(),
        "parameters": parameter_counts(config),
    }
    if record.url:
        info.update(url=record.url, sha256=record.sha256)
    if record.cache_name:
        path = hub.weights_path(name)
        info.update(cache_path=str(path), cached=path.is_file())
    for key, path in (("file", record.shipped_path()), ("plugin", record.shipped_plugin_path())):
        if path is not None:
            info[key] = str(path)
    if record.plugin_of:
        info["plugin_of"] = record.plugin_of
    return info


def cmd_models(args: argparse.Namespace) -> int:
    from .weights.registry import REGISTRY

    rows = [(r.name, r.weights, r.summary) for r in REGISTRY.values()]
    if args.json:
        keys = ("name", "weights", "summary")
        print(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=2))
        return EXIT_OK
    print(f"{'name':<22}{'weights':<11}summary")
    for name, weights, summary in rows:
        print(f"{name:<22}{weights:<11}{summary}")
    print(
        "\nweights: published = downloadable (`steadysam download NAME`), manual = by hand "
        "(`steadysam download NAME` says how), shipped = in the package, plugin = a base "
        "model's weights + a plugin file (--plugin), none = architecture only (--checkpoint "
        "or --random-init)"
    )
    return EXIT_OK


def _print_parameters(counts: dict[str, int]) -> None:
    print("parameters:")
    for part, n in counts.items():
        print(f"  {part:<15}{n:>14,}")
    print(f"  {'total':<15}{sum(counts.values()):>14,}")


def cmd_info(args: argparse.Namespace) -> int:
    from .weights.files import describe_checkpoint
    from .weights.registry import REGISTRY

    target = args.target
    if target in REGISTRY and not Path(target).exists():
        info = model_info(target)
        if args.json:
            print(json.dumps(info, indent=2))
            return EXIT_OK
        print(f"model:         {info['name']} ({info['summary']})")
        print(f"weights:       {info['weights']}")
        for key in ("url", "sha256", "file", "plugin", "plugin_of"):
            if key in info:
                value = info[key]
                if key == "sha256" and value is None:  # JSON keeps null
                    value = "none published (the file is checked by its architecture only)"
                print(f"{key + ':':<15}{value}")
        if "cache_path" in info:
            state = "present" if info["cached"] else "not downloaded"
            print(f"cache:         {info['cache_path']} ({state})")
        print(f"architecture:  {info['architecture']}")
        _print_parameters(info["parameters"])
        return EXIT_OK
    if not Path(target).exists():
        raise FileNotFoundError(
            f"{target!r} is neither a registered model name nor a file (not found); "
            "`steadysam models` lists the names"
        )
    info = describe_checkpoint(target, trusted=args.trust_checkpoint)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    if info["format"] == "plugin":
        print(f"checkpoint:    {info['path']}")
        print("format:        Stable-SAM plugin only (load with --plugin on SAM / FocSAM weights)")
        print(f"plugin:        {info['summary']}")
        print(f"fits decoder:  {info['decoder']}")
        print(f"tensors:       {info['tensors']} ({', '.join(info['dtypes'])})")
        print(f"parameters:    {info['total_parameters']:,}")
        return EXIT_OK
    print(f"checkpoint:    {info['path']}")
    print(f"format:        {info['format']}")
    print(f"architecture:  {info['summary']}")
    print(f"matches:       {', '.join(info['matches']) or '(no registered name)'}")
    print(f"refiner:       {'yes' if info['refiner'] else 'no'}")
    plugin = info["config"]["plugin"]
    print(f"plugin:        {'Stable-SAM, sites ' + str(plugin['sites']) if plugin else 'no'}")
    print(f"preprocessing: {info['preprocess']} (encoder LayerNorm eps {info['encoder_norm_eps']})")
    if info["open_fields"]:
        print(
            f"undetermined:  {', '.join(info['open_fields'])} (the file stores no config and "
            "these are invisible in shapes: load it with --model NAME)"
        )
    print(f"tensors:       {info['tensors']} ({', '.join(info['dtypes'])})")
    _print_parameters(info["parameters"])
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steadysam",
        description="SAM and FocSAM interactive segmentation in plain PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"steadysam {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # --debug is also accepted after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    add_debug_arg(common)

    p = sub.add_parser(
        "segment",
        parents=[common],
        help="segment one object of an image from clicks and/or a box",
        description="Applies the box (if any) and then the clicks, in order, to one object "
        "(FocSAM protocol: previous logits as mask prompt, refiner once at the 2nd click) and "
        "writes the final mask as a 0/255 PNG of the image's size.",
        epilog="example: steadysam segment cat.jpg --model sam_vit_b --download "
        "--click 320,240 --click 100,50,- --out cat_mask.png",
    )
    p.add_argument("image", help="image file")
    add_model_args(p)
    p.add_argument(
        "--click",
        action="append",
        type=parse_click,
        default=[],
        metavar="X,Y[,+|-]",
        help="a click in image pixels (x = column, y = row); + positive (default), - negative; "
        "repeat for more clicks",
    )
    p.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="box prompt, pixels")
    p.add_argument("--out", required=True, help="output mask PNG")
    p.add_argument(
        "--logits", action="store_true", help="also write float32 logits to OUT.logits.npy"
    )
    p.add_argument("--device", help="torch device, e.g. cuda (default cpu)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser(
        "download",
        parents=[common],
        help="download published weights into the cache",
        description="Downloads and sha256-verifies published weights into $STEADYSAM_HOME "
        "(default ~/.cache/steadysam) or --dir, and prints the file's path. FocSAM weights "
        "need a manual step, which this command explains.",
    )
    p.add_argument("name", help="sam_vit_b, sam_vit_l, sam_vit_h (focsam_vit_h: instructions)")
    p.add_argument("--dir", help="target folder (default: the cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "info",
        parents=[common],
        help="describe a model name or a checkpoint: weights, architecture, parameters",
        description="For a registered name: where its weights come from (URL, sha256, cache "
        "state, shipped file) and its architecture. For a file: reads it strictly and prints "
        "its format, the architecture, parameter counts per part, refiner / plugin presence, "
        "preprocessing and any fields the file leaves undetermined.",
    )
    p.add_argument("target", metavar="NAME|FILE", help="registered model name or checkpoint file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--trust-checkpoint", action="store_true", help="see segment --help")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "models",
        parents=[common],
        help="list the registered model names and where their weights come from",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)

    eval_cli.add_parsers(sub)
    from .onnx import cli as onnx_cli  # torch-free until export-onnx runs

    onnx_cli.add_parsers(sub)
    app_cli.add_parsers(sub)
    train_cli.add_parsers(sub)
    return parser


def _exit_code(error: BaseException) -> int:
    # Bad input (ImageError, CheckpointError are ValueErrors; unknown names are KeyErrors;
    # missing files are FileNotFoundErrors) is a usage problem; the rest is a runtime failure.
    from .weights.hub import HubError, ManualDownloadRequired, WeightsNotCached

    if isinstance(error, (WeightsNotCached, ManualDownloadRequired)):
        return EXIT_USAGE  # the user must fetch the weights (or name others) first
    if isinstance(error, HubError):
        return EXIT_FAILURE
    if isinstance(error, (ValueError, KeyError, FileNotFoundError, IsADirectoryError)):
        return EXIT_USAGE
    return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    from .runtime import apply_process_defaults

    apply_process_defaults()  # before anything imports torch (OpenMP reads it once)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help, --version and usage errors
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    func: Callable[[argparse.Namespace], int] = args.func
    if args.command not in ("models", "download", "report"):
        from .memory import retain_freed_memory

        retain_freed_memory()
    try:
        return int(func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        lines = str(message).strip().splitlines() or [type(e).__name__]
        # Manual-download instructions are the point of the error: print them whole.
        from .weights.hub import ManualDownloadRequired

        text = "\n".join(lines) if isinstance(e, ManualDownloadRequired) else " ".join(lines)
        print(f"error: {text}", file=sys.stderr)
        return _exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
