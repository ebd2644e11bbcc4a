"""The built-in demo models: shipped, loadable, the default, and they segment."""

from __future__ import annotations

import numpy as np
from PIL import Image

from steadysam import Predictor, build_model
from steadysam.clicks import Clicker
from steadysam.factory import DEMO_MODELS


def test_demo_weights_are_shipped_and_small():
    for name, path in DEMO_MODELS.items():
        assert path.is_file(), name
        assert path.stat().st_size <= 25 * 1024 * 1024, name


def test_default_model_is_the_demo_focsam_with_a_notice(capsys):
    model = build_model()
    assert "demo model" in capsys.readouterr().err
    assert model.refiner is not None and model.config.preprocess == "focsam"
    assert build_model("demo_sam").refiner is None


def test_demo_model_segments_a_real_object(data_root):
    """Not a benchmark (README has the NoC figures): the trained model must do clearly better
    than its own first click on a GrabCut object when the simulated user keeps clicking."""
    image = np.array(Image.open(data_root / "GrabCut" / "images" / "106024.jpg").convert("RGB"))
    gt = np.array(Image.open(data_root / "GrabCut" / "masks" / "106024.bmp")) > 128
    predictor = Predictor(build_model("demo_focsam"))
    predictor.set_image(image)
    obj = predictor.new_object()
    clicker = Clicker(gt, rule="ritm")
    pred = np.zeros_like(gt)
    ious = []
    for _ in range(5):
        click = clicker.make_next_click(pred)
        pred = obj.click(click.x, click.y, click.positive)
        ious.append((pred & gt).sum() / (pred | gt).sum())
    assert obj.refined
    assert max(ious) > 0.5, ious
