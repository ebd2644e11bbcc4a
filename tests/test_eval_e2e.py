"""End to end with the real predictor: focsam_tiny (random weights) on 2 GrabCut images.

Needs steadysam.predictor and steadysam.build_model (the lead's modules); it fails, rather than
skips, while they are missing, so it cannot silently pass forever.
"""

from __future__ import annotations

import json

from test_eval_support import DATA, tiny_checkpoint, tiny_model

from steadysam.cli import main
from steadysam.eval import EvalConfig, evaluate, read_records
from steadysam.weights.digest import state_digest


def test_focsam_tiny_on_two_grabcut_images(tmp_path):
    from steadysam.predictor import Predictor

    model = tiny_model("focsam_tiny")
    predictor = Predictor(model, cache_dir=None)
    cfg = EvalConfig(
        dataset="GrabCut",
        data_root=str(DATA),
        model="focsam_tiny",
        clicks=3,
        limit=2,
        out=str(tmp_path / "api"),
        progress=False,
    )
    s = evaluate(cfg, predictor=predictor)
    assert s["num_samples"] == 2 and s["num_errors"] == 0, s["errors"]
    for r in read_records(tmp_path / "api"):
        assert len(r["ious"]) == 3 and all(0.0 <= v <= 1.0 for v in r["ious"])
        assert r["clicks"][0][2] == 1  # the first click is always positive
        assert r["timing"]["encoder"] > 0 and r["timing"]["decoder"] > 0
        assert r["timing"]["refiner"] > 0  # focsam_tiny has a refiner; it runs at click 2
    # The weights' identity is recorded: the state digest of the predictor's model.
    config = json.loads((tmp_path / "api" / "config.json").read_text())
    assert config["kind"] == "eval"
    assert config["config"]["weights_digest"] == state_digest(model) == s["weights_digest"]
    # The same through the CLI (builds the model itself from a file), with sam-best.
    out = tmp_path / "cli"
    ckpt = tiny_checkpoint(tmp_path / "sam_tiny.safetensors")
    argv = [
        "eval",
        "--checkpoint",
        str(ckpt),
        "--dataset",
        "GrabCut",
        "--data-root",
        str(DATA),
        "--clicks",
        "3",
        "--limit",
        "2",
        "--protocol",
        "sam-best",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_samples"] == 2 and summary["protocol"] == "sam-best"
    assert summary["weights_digest"] == state_digest(tiny_model("sam_tiny"))
