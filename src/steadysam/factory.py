"""``build_model``: a model from a name, a checkpoint, or both."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .checkpoints import CheckpointError, load_checkpoint, reconcile_config
from .models.build import build_sam, sam_config
from .models.sam import Sam

# Small models trained on this project's CPUs and shipped in the package (README, "Demo
# model"): the default when no model is named, so a fresh offline machine works out of the box.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEMO_MODELS = {
    "demo_focsam": WEIGHTS_DIR / "demo_focsam.safetensors",
    "demo_sam": WEIGHTS_DIR / "demo_sam.safetensors",  # the same model without the refiner
}
DEFAULT_MODEL = "demo_focsam"


def print_demo_notice() -> None:
    """The one-line notice shown whenever the demo model stands in for an unnamed model."""
    print(
        f"steadysam: no model named, using the small built-in demo model ({DEFAULT_MODEL}, "
        "trained on 800 COCO-MVal objects on a CPU); for real results pass real weights: "
        "`steadysam download sam_vit_h` then --checkpoint PATH, or "
        "build_model('sam_vit_h', pretrained=True) (see README)",
        file=sys.stderr,
    )


def build_model(
    name: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    *,
    trusted: bool = False,
) -> Sam:
    """Build a SAM / FocSAM model.

    Arguments:
        name: a registered architecture (``steadysam.MODEL_CONFIGS``: sam_vit_b/l/h,
            focsam_vit_b/l/h, sam_tiny, focsam_tiny; alone: random weights), or a built-in
            trained model (``demo_focsam``, ``demo_sam``). No name and no checkpoint: the
            built-in ``demo_focsam``, with a one-line notice on stderr.
        checkpoint: an official SAM ``.pth``, an official FocSAM (mmengine) ``.pth`` or a
            steadysam ``.safetensors`` file. Alone: the architecture is inferred from it. With
            ``name``: both architectures must agree (else :class:`CheckpointError` naming the
            differences); settings invisible in tensor shapes come from ``name``.
        pretrained: download the published weights of ``name`` (``steadysam.hub``) and load them.
        trusted: allow full unpickling of a ``.pth`` that the safe loader refuses (this runs
            code from the file: only for files from a source you trust).

    Loading is strict (every key and shape must match); the model's ``config.preprocess`` tells
    the image convention its weights expect.
    """
    if name is None and checkpoint is None:
        name = DEFAULT_MODEL
        print_demo_notice()
    if name in DEMO_MODELS:
        if checkpoint is not None or pretrained:
            raise ValueError(f"{name} is a built-in model: do not pass checkpoint or pretrained")
        if not DEMO_MODELS[name].is_file():
            raise FileNotFoundError(f"built-in weights missing: {DEMO_MODELS[name]}")
        name, checkpoint = None, DEMO_MODELS[name]
    if pretrained:
        if checkpoint is not None:
            raise ValueError("pass pretrained=True or checkpoint=PATH, not both")
        if name is None:
            raise ValueError("pretrained=True needs a model name, e.g. 'sam_vit_b'")
        from . import hub

        checkpoint = hub.download(name)
    if checkpoint is None:
        return build_sam(sam_config(name))
    state, config, fmt = load_checkpoint(checkpoint, trusted=trusted)
    if name is not None:
        config = reconcile_config(name, config, fmt)
    model = build_sam(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # load_checkpoint checked keys/shapes; this is a safety net
        raise CheckpointError(f"checkpoint {str(checkpoint)!r}: {e}") from e
    return model.eval()
