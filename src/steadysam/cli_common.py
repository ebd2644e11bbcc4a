"""What every subcommand shares: exit codes, ``--debug`` and the one set of model options.

Imports nothing heavy: ``steadysam --help`` must not need torch.
"""

from __future__ import annotations

import argparse
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# Inference precisions (steadysam.precision; defined here so that parsers need no torch).
PRECISIONS = ("fp32", "bf16")


def add_debug_arg(p: argparse.ArgumentParser) -> None:
    """``--debug`` after the subcommand too; SUPPRESS keeps a top-level ``steadysam --debug``."""
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model options of every subcommand that runs a model."""
    g = p.add_argument_group(
        "model",
        "A name means trained weights (published: from the cache; demo_*: shipped). "
        "Default: the built-in demo model. `steadysam models` lists the names.",
    )
    g.add_argument("--model", metavar="NAME", help="registered model, e.g. sam_vit_b, demo_sam")
    g.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="weights file: official SAM / FocSAM .pth, steadysam .safetensors or training "
        "checkpoint; with --model the file must be that architecture",
    )
    g.add_argument(
        "--plugin",
        metavar="FILE",
        help="Stable-SAM plugin file (.safetensors, from RTS training) on top of the model",
    )
    g.add_argument(
        "--random-init",
        action="store_true",
        help="randomly initialised --model architecture (never implied by a name)",
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="download --model's published weights if they are not in the cache",
    )
    g.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="fully unpickle a .pth the safe loader refuses (runs code from the file)",
    )
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="inference precision: fp32 (default) or bf16 (encoder, refiner and decoder in "
        "bfloat16; needs a CPU with AVX512_BF16 or AMX, or a bf16 GPU)",
    )


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``build_model`` keyword arguments from the options of :func:`add_model_args`."""
    return dict(
        name=args.model,
        checkpoint=args.checkpoint,
        random_init=args.random_init,
        download=args.download,
        trusted=args.trust_checkpoint,
        plugin=args.plugin,
    )


def predictor_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``Predictor`` keyword arguments from the options of :func:`add_model_args`."""
    return dict(precision=args.precision)
