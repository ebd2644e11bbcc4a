"""Training data: folder / COCO instances (polygon + RLE) / COCO panoptic / LVIS sources, the
mixture and rank sharding, colour augmentation, mask <-> image alignment, early clear errors."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT
from PIL import Image
from test_train_support import make_coco, make_folder_dataset

from steadysam.preprocess import Frame, image_to_tensor
from steadysam.train.config import DataConfig, DatasetConfig
from steadysam.train.data import (
    ImageSpec,
    IterationBatches,
    Mixture,
    TrainSamples,
    build_sources,
    collate,
)
from steadysam.train.sources import CocoSource, DatasetError, FolderSource
from steadysam.train.transforms import mask_to_frame, photometric_distortion

SPEC = ImageSpec(128, "focsam", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("coco"))


def _objects(source, i, n=40):
    """Distinct objects drawn for image i over n visits."""
    rng = np.random.default_rng(0)
    seen = {}
    for _ in range(n):
        m = source.sample_object(i, rng)
        seen[m.tobytes()] = m
    return list(seen.values())


def test_coco_instances_polygon_rle_and_crowd(coco):
    src = CocoSource(
        DatasetConfig(
            type="coco", name="c", images=str(coco["images"]), annotations=str(coco["instances"])
        )
    )
    assert len(src) == 4 and not src.panoptic
    info = json.loads(coco["instances"].read_text())
    anns = [a for a in info["annotations"] if a["image_id"] == 1000]
    h, w = info["images"][0]["height"], info["images"][0]["width"]
    objs = _objects(src, 0)
    assert len(objs) == 3  # polygon, compressed RLE, uncompressed crowd RLE
    rect = np.zeros((h, w), bool)
    x0, y0, x1, y1 = 5, 5, w // 2, h // 2
    rect[y0 : y1 + 1, x0 : x1 + 1] = True  # the polygon's corners are pixel centres
    poly = max(objs, key=lambda m: (m & rect).sum())
    assert (poly ^ rect).sum() <= (x1 - x0 + y1 - y0 + 2) * 2  # up to a boundary line
    crowd = [m for m in objs if m.sum() == 36]
    assert len(crowd) == 1 and crowd[0][-6:, -6:].all()
    assert sum(a["iscrowd"] for a in anns) == 1
    no_crowd = CocoSource(
        DatasetConfig(
            type="coco",
            name="c",
            images=str(coco["images"]),
            annotations=str(coco["instances"]),
            include_crowd=False,
        )
    )
    assert len(_objects(no_crowd, 0)) == 2


def test_coco_panoptic_segments(coco):
    src = CocoSource(
        DatasetConfig(
            type="coco", name="p", images=str(coco["images"]), annotations=str(coco["panoptic"])
        )
    )
    assert src.panoptic and len(src) == 4
    objs = _objects(src, 1)
    assert len(objs) == 2 and all(m.any() for m in objs)
    # Segment 70000 = RGB (112, 17, 1) needs int arithmetic over all 3 channels; it is the
    # same object as the instances file's RLE annotation (and only that one matches).
    inst = CocoSource(
        DatasetConfig(
            type="coco", name="c", images=str(coco["images"]), annotations=str(coco["instances"])
        )
    )
    matches = [(p == q).all() for p in objs for q in _objects(inst, 1)]
    assert sum(matches) == 1


def test_lvis_coco_url_and_overlap_filter(coco, tmp_path):
    cfg = DatasetConfig(
        type="lvis",
        name="l",
        images=str(coco["root"]),
        annotations=str(coco["lvis"]),
        overlap_filter=0.5,
    )
    src = CocoSource(cfg)
    assert len(src) == 4 and src.paths[0].parent.name == "train2017"
    assert len(_objects(src, 0)) == 2
    # Three duplicates of annotation 1 (image 0 holds annotations 1 and 2): each is covered by
    # its twin, so the filter keeps one copy and a visit returns either object half the time;
    # without the filter the duplicated object would come 4 times in 5.
    data = json.loads(coco["lvis"].read_text())
    first = data["annotations"][0]
    assert [a["image_id"] for a in data["annotations"][:3]] == [first["image_id"]] * 2 + [1001]
    data["annotations"] += [dict(first, id=900 + n) for n in range(3)]
    path = tmp_path / "lvis_dup.json"
    path.write_text(json.dumps(data))

    def shares(overlap_filter) -> list[float]:
        """How often each of the image's two objects is drawn."""
        src = CocoSource(
            DatasetConfig(
                type="lvis",
                name="l",
                images=str(coco["root"]),
                annotations=str(path),
                overlap_filter=overlap_filter,
            )
        )
        rng = np.random.default_rng(1)
        draws = [src.sample_object(0, rng).tobytes() for _ in range(200)]
        counts = collections.Counter(draws)
        assert len(counts) == 2 and all(any(m) for m in counts)
        return sorted(n / len(draws) for n in counts.values())

    assert all(0.4 < share < 0.6 for share in shares(0.5))
    assert shares(None)[1] > 0.7  # what the test would see if the filter did nothing


def test_folder_instance_and_binary(tmp_path):
    root = make_folder_dataset(tmp_path / "inst", n=3)
    src = FolderSource(
        DatasetConfig(name="f", images=str(root / "images"), masks=str(root / "masks"))
    )
    assert len(src) == 3 and " " in src.paths[0].name
    labels = np.asarray(Image.open(src.mask_paths[0]))
    want = {v for v in np.unique(labels) if v}
    objs = _objects(src, 0)
    assert len(objs) == len(want)
    binary = FolderSource(
        DatasetConfig(
            name="f", images=str(root / "images"), masks=str(root / "masks"), mask_mode="binary"
        )
    )
    assert (binary.sample_object(0, np.random.default_rng(0)) == (labels > 0)).all()


def test_coco_mval_real_folder():
    root = DATA_ROOT / "COCO_MVal"
    src = FolderSource(
        DatasetConfig(name="mval", images=str(root / "images"), masks=str(root / "masks"))
    )
    assert len(src) == 800
    m = src.sample_object(0, np.random.default_rng(0))
    img = Image.open(src.paths[0])
    assert m.shape == (img.height, img.width) and m.any()


@pytest.mark.parametrize(
    "kind, mutate, message",
    [
        ("folder", lambda r, c: setattr(c, "images", str(r / "nope")), "images .*nope.*: no such"),
        ("folder", lambda r, c: (r / "masks" / "obj 01.png").unlink(), "no mask in.*obj 01.jpg"),
        ("coco", lambda r, c: setattr(c, "annotations", str(r / "x.json")), "x.json.*no such file"),
        ("coco", lambda r, c: (r / "a.json").write_text("{not json"), "a.json.*not valid JSON"),
        ("coco", lambda r, c: (r / "a.json").write_text('{"images": []}'), "no 'annotations'"),
        ("coco", lambda r, c: next((r / "train2017").iterdir()).unlink(), "1 of 4 image files"),
    ],
)
def test_bad_paths_fail_early_and_clearly(tmp_path, kind, mutate, message):
    if kind == "folder":
        root = make_folder_dataset(tmp_path, n=3)
        cfg = DatasetConfig(name="d", images=str(root / "images"), masks=str(root / "masks"))
    else:
        paths = make_coco(tmp_path)
        root = tmp_path
        (root / "a.json").write_text(paths["instances"].read_text())
        cfg = DatasetConfig(
            type="coco", name="d", images=str(paths["images"]), annotations=str(root / "a.json")
        )
    mutate(root, cfg)
    with pytest.raises(DatasetError, match=message):
        build_sources(DataConfig(datasets=[cfg]))


def test_mixture_weights_and_determinism():
    mix = Mixture([10, 30], [3.0, 1.0], seed=5)
    assert mix.length == 60
    hits = np.bincount([mix.locate(n)[0] for n in range(600)], minlength=2)
    assert tuple(hits) == (300, 300)  # 3 x 10 slots vs 30 slots per epoch
    first = [mix.locate(n) for n in range(60)]
    assert sorted(i for d, i in first if d == 1) == list(range(30))  # a permutation
    again = Mixture([10, 30], [3.0, 1.0], seed=5)
    assert [again.locate(n) for n in (59, 3, 120)] == [mix.locate(n) for n in (59, 3, 120)]


def test_iteration_batches_shard_over_ranks():
    r0 = list(IterationBatches(2, 4, 8, rank=0, world=2))
    r1 = list(IterationBatches(2, 4, 8, rank=1, world=2))
    assert r0 == [[16, 17, 18, 19], [24, 25, 26, 27]]
    assert r1 == [[20, 21, 22, 23], [28, 29, 30, 31]]
    with pytest.raises(ValueError, match="not divisible"):
        IterationBatches(0, 1, 6, 0, 4)


def test_samples_are_pure_functions_of_the_index(tmp_path):
    root = make_folder_dataset(tmp_path, n=4)
    sources = build_sources(
        DataConfig(
            datasets=[
                DatasetConfig(name="f", images=str(root / "images"), masks=str(root / "masks"))
            ]
        )
    )
    ds = TrainSamples(sources, [1.0], SPEC, seed=3)
    a, b = ds[5], ds[5]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["gt"], b["gt"])
    batch = collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 128, 128) and batch["gt"].shape == (3, 128, 128)
    assert batch["gt"].dtype == torch.bool and batch["gt"].flatten(1).any(1).all()


def test_mask_frame_matches_image_frame():
    # A white rectangle on black: after the model's preprocessing, the gt mask covers exactly
    # the bright pixels of the model input (both conventions, odd sizes).
    for conv, (h, w) in (("focsam", (70, 45)), ("sam", (33, 90))):
        img = np.zeros((h, w, 3), np.uint8)
        mask = np.zeros((h, w), bool)
        mask[10:30, 12:40] = True
        img[mask] = 255
        frame = Frame.create(conv, (h, w), 128)
        x = image_to_tensor(img, frame, torch.tensor(SPEC.pixel_mean), torch.tensor(SPEC.pixel_std))
        bright = x[0].mean(0) > 0.5  # normalised white ~ +2.1, black ~ -2.0
        gt = mask_to_frame(mask, frame)
        assert gt.shape == (128, 128)
        assert (gt ^ bright).float().mean() < 0.01
    # a sub-pixel object survives downscaling
    tiny = np.zeros((600, 600), bool)
    tiny[300, 300] = True
    assert mask_to_frame(tiny, Frame.create("sam", (600, 600), 128)).sum() >= 1


def test_photometric_distortion():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    a = photometric_distortion(img, np.random.default_rng(7))
    b = photometric_distortion(img, np.random.default_rng(7))
    assert a.dtype == np.uint8 and a.shape == img.shape and (a == b).all()
    outs = [photometric_distortion(img, np.random.default_rng(s)) for s in range(20)]
    assert sum((o != img).any() for o in outs) >= 15  # P(no step at all) = 1/16

    class Draws:  # brightness only: every coin 1 for brightness, 0 elsewhere
        def __init__(self):
            self.coins = iter([1, 0, 0, 0, 0])

        def integers(self, *a):
            return next(self.coins)

        def uniform(self, lo, hi):
            return 10.6

    bright = photometric_distortion(img, Draws())
    assert (bright == np.clip(img.astype(np.float32) + 10.6, 0, 255).astype(np.uint8)).all()
