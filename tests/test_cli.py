"""``steadysam`` CLI: segment / download / info, exit codes and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, randomize_, serve_weights
from PIL import Image
from test_checkpoints import write_focsam_mmengine

from steadysam import __version__
from steadysam.cli import main
from steadysam.models.build import build_sam
from steadysam.weights.files import save_checkpoint
from steadysam.weights.registry import sam_config


@pytest.fixture(scope="module")
def image() -> Path:
    folder = DATA_ROOT / "GrabCut" / "images"
    if not folder.is_dir():
        pytest.fail(f"real data not found at {folder}: set STEADYSAM_DATA")
    return sorted(folder.iterdir())[0]


@pytest.fixture(scope="module")
def sam_ckpt(tmp_path_factory) -> Path:
    model = randomize_(build_sam(sam_config("sam_tiny")), seed=5)
    return save_checkpoint(model, tmp_path_factory.mktemp("ck") / "sam_tiny.safetensors")


@pytest.fixture(scope="module")
def focsam_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "iter_160000.pth"
    write_focsam_mmengine(randomize_(build_sam(sam_config("focsam_tiny")), seed=6), path)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_version_and_help(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and __version__ in out
    for sub in ("segment", "download", "info"):
        code, out, _ = run(capsys, sub, "--help")
        assert code == 0 and f"steadysam {sub}" in out
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "segment" in out and "eval" in out  # eval cli is registered too
    code, _, err = run(capsys)
    assert code == 2 and "required" in err


def test_info(capsys, focsam_ckpt):
    code, out, err = run(capsys, "info", focsam_ckpt)
    assert code == 0, err
    lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    assert lines["format"].strip() == "focsam"
    assert lines["refiner"].strip() == "yes"
    assert lines["preprocessing"].strip().startswith("focsam")
    assert lines["matches"].strip() == "focsam_tiny"
    assert "ViT width 64, depth 2" in lines["architecture"]
    for part in ("image_encoder", "prompt_encoder", "mask_decoder", "refiner", "total"):
        assert part in out
    code, out, _ = run(capsys, "info", focsam_ckpt, "--json")
    info = json.loads(out)
    assert info["parameters"]["refiner"] > 0 and info["config"]["refiner"]["depth"] == 2


def test_segment_writes_a_mask_of_the_image_size(capsys, tmp_path, image, sam_ckpt):
    out = tmp_path / "masks" / "mask.png"
    code, stdout, err = run(
        capsys, "segment", image, "--checkpoint", sam_ckpt, "--click", "100,80", "--out", out
    )
    assert code == 0, err
    with Image.open(image) as im:
        size = im.size
    mask = np.array(Image.open(out))
    assert (mask.shape[1], mask.shape[0]) == size and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    assert f"mask area: {int((mask > 0).sum())} px" in stdout
    assert [p.name for p in out.parent.iterdir()] == ["mask.png"]  # atomic: no temp left


def test_segment_focsam_clicks_box_and_logits(capsys, tmp_path, image, focsam_ckpt):
    out = tmp_path / "m.png"
    code, _, err = run(
        capsys,
        "segment",
        image,
        "--checkpoint",
        focsam_ckpt,
        "--model",
        "focsam_tiny",
        "--box",
        "50,40,300,260",
        "--click",
        "150,120,+",
        "--click",
        "60,50,-",
        "--out",
        out,
        "--logits",
    )
    assert code == 0, err
    mask = np.array(Image.open(out))
    logits = np.load(tmp_path / "m.logits.npy")
    assert logits.shape == mask.shape and logits.dtype == np.float32
    np.testing.assert_array_equal(mask > 0, logits > 0)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--click", "10000,5"], "outside the image"),
        (["--box", "40,40,40,90"], "empty box"),
        (["--click", "1,2,x"], "click label must be + or -"),
        (["--box", "1,2,3"], "4 comma-separated numbers"),
        ([], "at least one --click"),
    ],
)
def test_segment_bad_prompts_exit_2(capsys, tmp_path, image, sam_ckpt, args, expected):
    out = tmp_path / "m.png"
    code, _, err = run(capsys, "segment", image, "--checkpoint", sam_ckpt, "--out", out, *args)
    assert code == 2 and expected in err
    assert "Traceback" not in err and not out.exists()


def test_segment_bad_files_exit_2(capsys, tmp_path, image, sam_ckpt):
    out = tmp_path / "m.png"
    missing = tmp_path / "nope.jpg"
    code, _, err = run(
        capsys, "segment", missing, "--checkpoint", sam_ckpt, "--click", "1,1", "--out", out
    )
    assert code == 2 and str(missing) in err and "no such file" in err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 definitely not a jpeg")
    code, _, err = run(
        capsys, "segment", broken, "--checkpoint", sam_ckpt, "--click", "1,1", "--out", out
    )
    assert code == 2 and str(broken) in err and "cannot read image" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    gone = tmp_path / "gone.pth"
    code, _, err = run(
        capsys, "segment", image, "--checkpoint", gone, "--click", "1,1", "--out", out
    )
    assert code == 2 and "checkpoint file not found" in err and str(gone) in err
    code, _, err = run(
        capsys,
        "segment",
        image,
        "--checkpoint",
        sam_ckpt,
        "--model",
        "sam_vit_b",
        "--click",
        "1,1",
        "--out",
        out,
    )
    assert code == 2 and "differs from 'sam_vit_b'" in err
    code, _, err = run(
        capsys, "--debug", "segment", gone, "--model", "sam_tiny", "--click", "1,1", "--out", out
    )
    assert code == 2 and "Traceback" in err


def test_info_errors(capsys, tmp_path):
    code, _, err = run(capsys, "info", tmp_path / "nope.safetensors")
    assert code == 2 and "not found" in err
    bad = tmp_path / "bad.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1)}, bad)
    code, _, err = run(capsys, "info", bad)
    assert code == 2 and "cannot infer the architecture" in err


def test_download(capsys, monkeypatch, tmp_path):
    serve_weights(monkeypatch, tmp_path, "sam_vit_b", b"weights")
    code, out, err = run(capsys, "download", "sam_vit_b", "--dir", tmp_path / "d", "--quiet")
    assert code == 0, err
    assert Path(out.strip()) == tmp_path / "d" / "sam_vit_b_01ec64.pth"
    code, _, err = run(capsys, "download", "focsam_vit_h")
    assert code == 2 and "drive.google.com" in err and "iter_160000.pth" in err
    code, _, err = run(capsys, "download", "sam_tiny")
    assert code == 2 and "no published weights" in err


@pytest.fixture(scope="module")
def plugin_file(tmp_path_factory) -> Path:
    from steadysam.models.build import attach_plugin
    from steadysam.models.config import PluginConfig
    from steadysam.weights.files import save_plugin_checkpoint

    model = attach_plugin(build_sam(sam_config("sam_tiny")), PluginConfig())
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.plugin_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return save_plugin_checkpoint(model, tmp_path_factory.mktemp("pl") / "plugin.safetensors")


def test_segment_and_info_with_a_stable_sam_plugin(capsys, tmp_path, image, sam_ckpt, plugin_file):
    base, stable = tmp_path / "base.png", tmp_path / "stable.png"
    common = ("segment", image, "--checkpoint", sam_ckpt, "--box", "20,20,200,150", "--logits")
    assert run(capsys, *common, "--out", base)[0] == 0
    assert run(capsys, *common, "--plugin", plugin_file, "--out", stable)[0] == 0
    a, b = np.load(base.with_suffix(".logits.npy")), np.load(stable.with_suffix(".logits.npy"))
    assert not np.allclose(a, b)  # the plugin is used
    code, out, _ = run(capsys, "info", plugin_file)
    assert code == 0 and "Stable-SAM plugin only" in out and "layer1_t2i" in out
    code, out, _ = run(capsys, "info", plugin_file, "--json")
    assert code == 0 and json.loads(out)["format"] == "plugin"
    # A plugin file is not a checkpoint, and a checkpoint is not a plugin file: exit 2, one line.
    code, _, err = run(capsys, *common, "--checkpoint", plugin_file, "--out", stable)
    assert code == 2 and "plugin file" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, *common, "--plugin", sam_ckpt, "--out", stable)
    assert code == 2 and "not a Stable-SAM plugin file" in err


def test_missing_or_unreadable_plugin_and_checkpoint_files_are_named(capsys, tmp_path, image):
    text = tmp_path / "notes.txt"
    text.write_text("hi, not weights")
    base = ("segment", image, "--click", "10,10", "--out", tmp_path / "o.png")
    code, _, err = run(
        capsys, *base, "--model", "demo_sam", "--plugin", tmp_path / "no.safetensors"
    )
    assert code == 2 and "plugin file not found" in err and "no.safetensors" in err
    for flag in ("--plugin", "--checkpoint"):
        extra = ("--model", "demo_sam") if flag == "--plugin" else ()
        code, _, err = run(capsys, *base, *extra, flag, text)
        assert code == 2 and "notes.txt" in err and "cannot read" in err, err


@pytest.mark.parametrize("name", ["mask.jpg", "mask", "mask.PNG.txt"])
def test_segment_output_extension_must_match_the_png_written(capsys, tmp_path, image, name):
    code, _, err = run(
        capsys,
        "segment",
        image,
        "--model",
        "demo_sam",
        "--click",
        "10,10",
        "--out",
        tmp_path / name,
    )
    assert code == 2 and name in err and ".png" in err
    assert not (tmp_path / name).exists()
