"""Dataset loaders: the real benchmark files in ../shared/data and synthetic layouts."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_eval_support import DATA, make_folder

from steadysam.eval.datasets import DatasetError, SampleError, load_dataset


@pytest.fixture
def needs_data():
    """The real benchmark files: missing, the tests fail (as conftest's real-data fixtures do)
    rather than skip, so they cannot pass forever unseen."""
    if not DATA.is_dir():
        pytest.fail(f"real data not found at {DATA}: set STEADYSAM_DATA to the shared data folder")


def objects(ds, key):
    item = next(it for it in ds.items if it.key == key)
    return [o for src in item.masks for o in src.load()]


@pytest.mark.usefixtures("needs_data")
def test_grabcut_ignore_band_and_root_resolution():
    ds = load_dataset("GrabCut", DATA)  # parent folder resolves to DATA/GrabCut
    assert ds.root == DATA / "GrabCut" and len(ds.items) == 50
    assert load_dataset("grabcut", DATA / "GrabCut").root == DATA / "GrabCut"
    raw = np.array(Image.open(DATA / "GrabCut" / "masks" / "124080.bmp"))
    (ob,) = objects(ds, "124080")
    assert ob.id == "124080"
    np.testing.assert_array_equal(ob.gt, raw > 128)
    np.testing.assert_array_equal(ob.ignore, raw == 128)
    assert ob.ignore.any() and not (ob.gt & ob.ignore).any()
    image = next(it for it in ds.items if it.key == "124080").load_image()
    assert image.shape == (*raw.shape, 3) and image.dtype == np.uint8
    # .bmp and .JPG images pair by stem too.
    assert {it.image_path.suffix for it in ds.items} == {".jpg", ".JPG", ".bmp"}


@pytest.mark.usefixtures("needs_data")
def test_berkeley_channel0_and_duplicate_images_share_an_item():
    ds = load_dataset("Berkeley", DATA)
    assert sum(len(it.masks) for it in ds.items) == 100
    assert len(ds.items) == 96  # "96 images with 100 instances": identical files merged
    item = next(it for it in ds.items if it.key == "189011")
    assert [s.id for s in item.masks] == ["189011", "189011a", "189011b"]
    assert not any(it.key == "189011b" for it in ds.items)
    raw = np.array(Image.open(DATA / "Berkeley" / "masks" / "189011a.png"))[..., 2]
    obs = [o for s in item.masks for o in s.load()]
    np.testing.assert_array_equal(obs[1].gt, raw > 128)


@pytest.mark.usefixtures("needs_data")
def test_davis_ids_merged_including_255():
    ds = load_dataset("DAVIS345", DATA)
    assert len(ds.items) == 345
    raw = np.array(Image.open(DATA / "DAVIS345" / "masks" / "195.png"))
    assert set(np.unique(raw)) == {0, 1, 2, 255}
    (ob,) = objects(ds, "195")
    np.testing.assert_array_equal(ob.gt, raw > 0)
    assert ob.ignore is None


@pytest.mark.usefixtures("needs_data")
def test_coco_mval_names_with_spaces_and_shared_images():
    ds = load_dataset("coco_mval", DATA)
    assert sum(len(it.masks) for it in ds.items) == 800 and len(ds.items) == 722
    item = next(it for it in ds.items if " " in it.key)
    (ob,) = item.masks[0].load()
    assert ob.gt.shape == item.load_image().shape[:2] and ob.gt.any()


def test_unknown_name_and_wrong_root_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        load_dataset("nope", tmp_path)
    with pytest.raises(DatasetError, match="expected dataset layout"):
        load_dataset("davis", tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("davis", tmp_path / "missing")


def test_folder_binary_and_instance_masks(tmp_path):
    root = make_folder(tmp_path / "f", n=2)
    ids = np.zeros((48, 64), np.uint8)
    ids[5:15, 5:15] = 1
    ids[20:30, 20:40] = 2
    ids[40:44] = 255  # void -> ignore
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(root / "images" / "inst.jpg")
    Image.fromarray(ids).save(root / "masks" / "inst.png")
    ds = load_dataset("folder", root)
    assert [it.key for it in ds.items] == ["inst", "s000", "s001"]
    obs = objects(ds, "inst")
    assert [o.id for o in obs] == ["inst#1", "inst#2"]
    assert obs[1].gt.sum() == 200 and obs[0].ignore.sum() == 4 * 64
    (b,) = objects(ds, "s000")
    assert b.id == "s000" and b.ignore is None and b.gt.sum() > 300


def test_missing_and_unreadable_files_fail_per_sample(tmp_path):
    root = make_folder(tmp_path / "f", n=2)
    (root / "images" / "lonely.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "orphan.png")
    (root / "masks" / "s001.png").write_bytes(b"garbage")
    ds = load_dataset("folder", root)
    with pytest.raises(SampleError, match="no mask file"):
        objects(ds, "lonely")
    with pytest.raises(SampleError, match="cannot decode image"):
        next(it for it in ds.items if it.key == "lonely").load_image()
    with pytest.raises(SampleError, match="no image file"):
        next(it for it in ds.items if it.key == "orphan").load_image()
    with pytest.raises(SampleError, match="empty mask"):
        objects(ds, "orphan")
    with pytest.raises(SampleError, match="cannot read mask"):
        objects(ds, "s001")


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_pascal_voc_one_sample_per_object_255_ignore(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    ids = np.zeros((20, 30), np.uint8)
    ids[2:8, 2:8], ids[10:18, 10:25], ids[0, :] = 1, 2, 255
    im = Image.fromarray(ids, mode="L").convert("P")
    (root / "SegmentationObject").mkdir(parents=True)
    im.save(root / "SegmentationObject" / "2007_000001.png")
    _png(root / "JPEGImages" / "2007_000001.jpg", np.zeros((20, 30, 3), np.uint8))
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n")
    ds = load_dataset("voc", tmp_path)
    obs = objects(ds, "2007_000001")
    assert [o.id for o in obs] == ["2007_000001#1", "2007_000001#2"]
    assert obs[0].ignore.sum() == 30 and obs[0].gt.sum() == 36


def test_mvtec_defects_one_object_skip_good_and_excluded(tmp_path):
    root = tmp_path / "mvtec"
    m = np.zeros((16, 16), np.uint8)
    m[2:5, 2:5] = 255
    m[10:12, 10:14] = 255  # two regions -> still one object
    for cat, defect in (("bottle", "broken"), ("bottle", "good"), ("transistor", "misplaced")):
        _png(root / cat / "test" / defect / "000.png", np.zeros((16, 16), np.uint8))
        if defect != "good":
            _png(root / cat / "ground_truth" / defect / "000_mask.png", m)
    ds = load_dataset("mvtec", tmp_path)
    assert [it.key for it in ds.items] == ["bottle/broken/000"]
    (ob,) = objects(ds, "bottle/broken/000")
    assert ob.gt.sum() == 9 + 8
    assert ds.items[0].load_image().shape == (16, 16, 3)  # grayscale -> 3 channels


def test_cod10k_layouts_and_cam_filter(tmp_path):
    root = tmp_path / "COD10K-v3"
    for stem in ("COD10K-CAM-1", "COD10K-NonCAM-2"):
        _png(root / "Test" / "Image" / f"{stem}.jpg", np.zeros((8, 8, 3), np.uint8))
        _png(root / "Test" / "GT_Object" / f"{stem}.png", np.full((8, 8), 255, np.uint8))
    (root / "Info").mkdir()
    (root / "Info" / "CAM_test.txt").write_text("COD10K-CAM-1.jpg 1\n")
    ds = load_dataset("cod10k", tmp_path)
    assert [it.key for it in ds.items] == ["COD10K-CAM-1"]


def test_sbd_instances_via_loadmat_and_clear_error_without_scipy(tmp_path, monkeypatch):
    root = tmp_path / "SBD" / "benchmark_RELEASE" / "dataset"
    (root / "inst").mkdir(parents=True)
    (root / "inst" / "2008_000002.mat").write_bytes(b"fake")
    _png(root / "img" / "2008_000002.jpg", np.zeros((10, 12, 3), np.uint8))
    (root / "val.txt").write_text("2008_000002\n")
    inst = np.zeros((10, 12), np.uint8)
    inst[1:4, 1:4], inst[5:9, 5:11] = 1, 3

    def fake_loadmat(path):
        assert path.endswith("2008_000002.mat")
        cell = np.empty((1, 1), dtype=object)
        cell[0, 0] = (inst, None, None)  # the struct's first field is the instance map
        return {"GTinst": cell}

    monkeypatch.setitem(sys.modules, "scipy", types.ModuleType("scipy"))
    monkeypatch.setitem(sys.modules, "scipy.io", types.SimpleNamespace(loadmat=fake_loadmat))
    ds = load_dataset("sbd", tmp_path)
    assert [o.id for o in objects(ds, "2008_000002")] == ["2008_000002#1", "2008_000002#3"]
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # import fails like a missing package
    with pytest.raises(DatasetError, match="pip install scipy"):
        load_dataset("sbd", tmp_path)
