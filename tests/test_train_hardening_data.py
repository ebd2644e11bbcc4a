"""Bad training data is a one-line error naming the files (exit code 2), also from a loader
worker in the middle of a run: masks whose size differs from their image (folder, COCO
instances, COCO panoptic, with and without an embedding cache), unreadable images and masks,
datasets whose masks are all empty."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from test_train_support import (
    CONFIGS,
    folder_dataset_override,
    make_coco,
    make_folder_dataset,
    tiny_overrides,
)

from steadysam.cli import main as cli_main
from steadysam.train.config import load_config
from steadysam.train.data import DatasetError, ImageSpec, TrainSamples, build_sources
from steadysam.train.loop import train
from steadysam.train.state import list_checkpoints

DEMO = CONFIGS / "demo_tiny.yaml"
SPEC = ImageSpec(128, "focsam", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("clean"), n=4)


def _copy(clean, tmp_path):
    return shutil.copytree(clean, tmp_path / "data")


def _cli_error(args, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli_main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return rc, lines[0]


def _ov(out, data, **extra):
    extra.setdefault("iters", "6")
    return tiny_overrides(out, **extra) + folder_dataset_override(0, data)


def _hw(path) -> str:
    with Image.open(path) as im:
        return f"{im.height} x {im.width}"


def _pad_mask(path, rows=5):
    a = np.asarray(Image.open(path))
    Image.fromarray(np.pad(a, ((0, rows), (0, 0)) + ((0, 0),) * (a.ndim - 2))).save(path)


# -- masks whose size differs from their image ------------------------------------------------
@pytest.mark.parametrize("workers", ["0", "1"])
def test_folder_mask_of_another_size(workers, clean, tmp_path, capsys):
    data = _copy(clean, tmp_path)
    mask, image = data / "masks" / "obj 02.png", data / "images" / "obj 02.jpg"
    _pad_mask(mask)
    ov = _ov(tmp_path / "run", data, **{"data.num_workers": workers})
    rc, line = _cli_error(["train", DEMO, *ov], capsys)
    assert rc == 2
    assert (
        f"dataset 'coco_mval': the mask {str(mask)!r} is {_hw(mask)} but its image "
        f"{str(image)!r} is {_hw(image)} (H x W)"
    ) in line
    assert _hw(mask) != _hw(image)


def test_mask_size_is_checked_with_an_embedding_cache(clean, tmp_path, capsys):
    data = _copy(clean, tmp_path)
    cache = tmp_path / "cache"
    ov = _ov(tmp_path / "run", data, **{"model.trainable": "[mask_decoder]"})
    emb = ["embed", DEMO, *ov, "--out", cache, "--no-progress"]
    assert cli_main([str(a) for a in emb]) == 0  # the cache reads images only
    mask = data / "masks" / "obj 01.png"
    _pad_mask(mask, rows=3)
    rc, line = _cli_error(["train", DEMO, *ov, f"data.cache={cache}"], capsys)
    assert rc == 2 and f"the mask {str(mask)!r} is {_hw(mask)} but its image" in line


def test_mismatch_found_mid_run_names_the_file(clean, tmp_path, capsys):
    """A pair broken while a run is under way: the run stops with the one-line error, its
    checkpoints stay, and once the file is fixed the same command resumes."""
    data = _copy(clean, tmp_path)
    out = tmp_path / "run"
    ov = _ov(out, data, iters="4")
    train(load_config(DEMO, ov))
    mask = data / "masks" / "obj 03.png"
    good = mask.read_bytes()
    _pad_mask(mask)
    more = [*ov, "iters=4", "--no-resume"]  # a fresh start reads every image again
    rc, line = _cli_error(["train", DEMO, *more], capsys)
    assert rc == 2 and str(mask) in line and "run the same command again" in line
    mask.write_bytes(good)
    assert cli_main([str(a) for a in ["train", DEMO, *ov]]) == 0
    assert [i for i, _ in list_checkpoints(out / "checkpoints")][-1] == 4


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("coco"), n=3)


def _coco_samples(cfg_overrides) -> TrainSamples:
    cfg = load_config(CONFIGS / "focsam_stage1.yaml", cfg_overrides)
    cfg.data.datasets = cfg.data.datasets[:1]
    sources = build_sources(cfg.data)
    return TrainSamples(sources, [1.0], SPEC, seed=0, color_aug=False)


def test_coco_annotation_size_differs_from_the_image(coco, tmp_path):
    doc = json.loads(coco["instances"].read_text())
    img = doc["images"][1]
    img["height"] += 4  # the annotation file says another size than the image file has
    bad = tmp_path / "instances.json"
    bad.write_text(json.dumps(doc))
    samples = _coco_samples(
        [f"data.datasets.0.images={coco['images']}", f"data.datasets.0.annotations={bad}",
         "data.datasets.0.type=coco", "data.cache=null"]
    )  # fmt: skip
    path = coco["images"] / img["file_name"]
    with pytest.raises(DatasetError) as e:  # polygons are drawn at the annotated size
        for n in range(60):  # (its RLE masks carry their own): visit it until one is drawn
            samples[n]
    h, w = img["height"], img["width"]
    assert (
        f"the annotations {str(bad)!r} (image id {img['id']}) is {h} x {w} but its image "
        f"{str(path)!r} is {h - 4} x {w} (H x W)"
    ) in str(e.value)


def test_coco_panoptic_png_size_differs_from_the_image(coco, tmp_path):
    pngs = shutil.copytree(coco["panoptic_pngs"], tmp_path / "pngs")
    png = sorted(pngs.iterdir())[0]
    _pad_mask(png, rows=2)
    samples = _coco_samples(
        [f"data.datasets.0.images={coco['images']}",
         f"data.datasets.0.annotations={coco['panoptic']}", f"data.datasets.0.masks={pngs}",
         "data.cache=null"]
    )  # fmt: skip
    with pytest.raises(DatasetError, match=rf"the panoptic mask '{png}' is {_hw(png)} but"):
        for n in range(len(samples) * 3):
            samples[n]


# -- unreadable files ---------------------------------------------------------------------------
@pytest.mark.parametrize("workers", ["0", "1"])
@pytest.mark.parametrize(
    "kind, damage, message",
    [
        ("masks", "truncate", "cannot read the mask {path!r} of image {image!r} (image file is "
                              "truncated"),
        ("masks", "garbage", "cannot read the mask {path!r} of image {image!r} (cannot "
                             "identify image file"),
        ("images", "garbage", "cannot read image {path!r}: cannot identify image file"),
        ("images", "truncate", "cannot read image {path!r}: "),
    ],
)  # fmt: skip
def test_unreadable_files(kind, damage, message, workers, clean, tmp_path, capsys):
    data = _copy(clean, tmp_path)
    path = data / kind / ("obj 01.png" if kind == "masks" else "obj 01.jpg")
    image = data / "images" / "obj 01.jpg"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3] if damage == "truncate" else b"no image here" * 5)
    ov = _ov(tmp_path / "run", data, **{"data.num_workers": workers})
    rc, line = _cli_error(["train", DEMO, *ov], capsys)
    assert rc == 2
    assert f"error: dataset 'coco_mval': {message.format(path=str(path), image=str(image))}" in line


def test_empty_masks(clean, tmp_path, capsys):
    data = _copy(clean, tmp_path)
    first = data / "masks" / "obj 00.png"
    Image.fromarray(np.zeros_like(np.asarray(Image.open(first)))).save(first)
    final = train(load_config(DEMO, _ov(tmp_path / "one", data, iters="3")))
    assert final.is_file()  # an image without objects is skipped (the official ObjectSampler)
    for p in (data / "masks").iterdir():
        Image.fromarray(np.zeros_like(np.asarray(Image.open(p)))).save(p)
    rc, line = _cli_error(["train", DEMO, *_ov(tmp_path / "all", data)], capsys)
    assert rc == 2 and "found only empty objects (e.g. mask " in line
    assert str(data / "masks") in line and "all zero" in line


@pytest.mark.parametrize("workers", ["0", "1"])
def test_damaged_cache_entry_names_the_file(workers, clean, tmp_path, capsys):
    data = _copy(clean, tmp_path)
    cache = tmp_path / "cache"
    ov = _ov(tmp_path / "run", data, **{"model.trainable": "[mask_decoder]"})
    assert cli_main([str(a) for a in ["embed", DEMO, *ov, "--out", cache, "--no-progress"]]) == 0
    entry = sorted((cache / "embeds").glob("*.npy"))[1]
    entry.write_bytes(entry.read_bytes()[:100])
    args = ["train", DEMO, *ov, f"data.cache={cache}", f"data.num_workers={workers}"]
    rc, line = _cli_error(args, capsys)
    assert rc == 2
    assert f"embedding cache entry {str(entry)!r} cannot be read (" in line
    assert "run steadysam embed again" in line
