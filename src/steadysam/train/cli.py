"""``steadysam train`` and ``steadysam embed`` (thin: parse, call the library, print).

The top-level CLI calls :func:`add_parsers`; ``python -m steadysam ...`` works on its
own too, which is what torchrun needs::

    torchrun --nproc_per_node 4 -m steadysam train configs/focsam_stage1.yaml

Exit codes: 0 ok, 2 bad configuration / data / cache (one line on stderr), 1 other failures.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

EPILOG_TRAIN = """\
overrides: dotted keys of the YAML, values parsed as YAML, e.g.
  steadysam train configs/focsam_stage1.yaml optim.lr=3e-4 data.batch_size=4 \\
      data.datasets.0.images=/data/coco/train2017 run.out_dir=runs/s1
Re-running the same command resumes from the newest checkpoint in run.out_dir (settings
that change results must be the same: a difference is an error listing them).
Multi-GPU / multi-process: torchrun --nproc_per_node N -m steadysam train ...
"""

EPILOG_EMBED = """\
DATASET is a training config (its datasets, model and colour-augmentation settings are used;
the normal way) or a folder with images/ and masks/ (then --model/--checkpoint).
  steadysam embed configs/focsam_stage2.yaml --out data/embeds/coco_lvis --fp16
An interrupted run resumes (entries already written are skipped); torchrun shards it.
"""


def add_parsers(subparsers: Any) -> None:
    """Add ``train`` and ``embed`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "train",
        help="train SAM / FocSAM from a YAML recipe (configs/*.yaml)",
        description="Trains from a recipe with iterative click simulation; resumable; "
        "writes checkpoints, log.csv, loss.png and final.safetensors into run.out_dir.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML recipe, e.g. configs/focsam_stage1.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over in run.out_dir: delete the checkpoints of the run found there",
    )
    p.add_argument("--print-config", action="store_true", help="print the config and exit")
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "embed",
        help="precompute frozen-encoder embeddings for training (embedding cache)",
        description="Encodes every training image once (colour augmentation drawn once per "
        "image) into CACHE/embeds/*.npy with an index; training reads them via data.cache.",
        epilog=EPILOG_EMBED,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", help="training config YAML, or a folder with images/ + masks/")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument(
        "--model", help="model name (folder DATASET): its trained weights unless --checkpoint"
    )
    p.add_argument("--checkpoint", help="weights (folder DATASET, or replaces the config's)")
    p.add_argument("--fp16", action="store_true", help="store float16 (half the disk)")
    p.add_argument("--no-color-aug", action="store_true", help="no colour augmentation")
    p.add_argument("--batch-size", type=int, default=8, help="encoder batch (default 8)")
    p.add_argument(
        "--measure",
        type=int,
        default=8,
        metavar="N",
        help="with --fp16: report the loss change fp32 -> fp16 on N samples (0: skip)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    p.set_defaults(func=cmd_embed)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def cmd_train(args: argparse.Namespace) -> int:
    from .config import dump_config, load_config
    from .loop import train

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    final = train(cfg, resume=not args.no_resume)
    if _rank() == 0:
        print(f"final model: {final}")
    return 0


def _embed_config(args: argparse.Namespace):
    from .config import ConfigError, DatasetConfig, TrainConfig, load_config

    path = Path(args.dataset)
    if path.is_file():
        overrides = list(args.overrides)
        if args.checkpoint:
            overrides.append(f"model.checkpoint={args.checkpoint}")
        if args.model:
            overrides.append(f"model.name={args.model}")
        overrides.append("data.cache=null")  # the cache is being made, not read
        cfg = load_config(path, overrides)
    elif path.is_dir():
        if not (args.model or args.checkpoint):
            raise ConfigError("a folder DATASET needs --model NAME and/or --checkpoint FILE")
        cfg = TrainConfig()
        cfg.data.datasets = [
            DatasetConfig(name=path.name, images=str(path / "images"), masks=str(path / "masks"))
        ]
        if args.model:
            cfg.model.name = args.model
            if not args.checkpoint:  # the name's trained weights, never a random encoder
                from ..weights.factory import weights_file

                args.checkpoint = str(weights_file(args.model))
        elif args.checkpoint:
            from ..weights.files import load_checkpoint, matching_names

            arch = load_checkpoint(args.checkpoint)[1]
            names = matching_names(arch)
            cfg.model.name = names[0] if names else "sam_vit_b"
            cfg.model.arch = arch.to_dict()
        cfg.model.checkpoint = args.checkpoint
        cfg.validate()
    else:
        raise FileNotFoundError(f"DATASET {str(path)!r}: no such config file or folder")
    cfg.model.trainable = ["mask_decoder"]  # the encoder is only run, never trained here
    if args.no_color_aug:
        cfg.data.color_aug = False
    return cfg


def cmd_embed(args: argparse.Namespace) -> int:
    import torch

    from ..distributed import init_distributed
    from .build import build_train_model
    from .config import check_output_path
    from .data import ImageSpec, TrainSamples, build_sources
    from .embed_cache import build_cache, fp16_loss_effect

    cfg = _embed_config(args)
    check_output_path("--out", args.out)
    dist = init_distributed(args.device)
    model = build_train_model(cfg).to(dist.device).eval()
    sources = build_sources(cfg.data)
    counts = build_cache(
        model,
        sources,
        args.out,
        fp16=args.fp16,
        color_aug=cfg.data.color_aug,
        seed=cfg.seed,
        batch_size=args.batch_size,
        rank=dist.rank,
        world=dist.world,
        progress=not args.no_progress,
        barrier=dist.barrier,
    )
    if dist.rank != 0:
        return 0
    print(
        f"cache {args.out}: {counts['written']} written, {counts['skipped']} already there, "
        f"{counts['total']} images in all"
    )
    if args.fp16 and args.measure > 0:
        c = model.config
        spec = ImageSpec(c.image_size, c.preprocess, c.pixel_mean, c.pixel_std)
        samples = TrainSamples(sources, [1.0] * len(sources), spec, cfg.seed, cfg.data.color_aug)
        with torch.no_grad():
            r = fp16_loss_effect(model, samples, list(range(args.measure)))
        print(
            f"fp16 effect on the loss ({args.measure} samples, same prompts): "
            f"fp32 {r['loss_fp32']:.6f}, fp16 {r['loss_fp16']:.6f}, "
            f"|diff| {r['abs_diff']:.2e} (relative {r['rel_diff']:.2e}); embedding rel. RMS "
            f"error {r['emb_rel_rms_err']:.2e}"
        )
    return 0


if __name__ == "__main__":  # python -m steadysam.<this>.cli ... == python -m steadysam ...
    from steadysam.cli import main

    sys.exit(main())
