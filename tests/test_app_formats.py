"""Label files of the annotation app: labels validation, RLE and polygon encodings, COCO / YOLO /
PNG export and COCO import, on real masks (GrabCut, Berkeley) and synthetic ones."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from steadysam.app.formats import (
    MARKER,
    CocoError,
    ExportError,
    export,
    read_coco,
    write_coco,
    write_png,
    write_yolo,
)
from steadysam.app.labels import LabeledImage, LabeledObject, LabelSet
from steadysam.app.masks import (
    decode_rle,
    encode_rle,
    mask_bbox,
    mask_to_polygons,
    polygon_iou,
    polygons_to_mask,
)
from steadysam.datafiles import read_mask

# pycocotools' decode passes copy=False to numpy 2 (its noise, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def real_masks(data_root: Path) -> list[tuple[str, np.ndarray]]:
    """Every GrabCut and Berkeley object mask (object = value > 128, as RITM reads them)."""
    out = []
    for ds in ("GrabCut", "Berkeley"):
        folder = data_root / ds / "masks"
        if not folder.is_dir():
            pytest.fail(f"real data not found at {folder}")
        for p in sorted(folder.iterdir()):
            arr, _ = read_mask(p)
            m = arr if arr.ndim == 2 else arr[..., 2]
            out.append((f"{ds}/{p.name}", m > 128))
    assert len(out) >= 150
    return out


def synthetic_masks() -> dict[str, np.ndarray]:
    """Shapes that break naive polygon export: holes, islands in holes, one-pixel objects,
    diagonal-only contacts, objects on every border, thin strokes."""
    ms = {}
    m = np.zeros((20, 24), bool)
    m[2:18, 3:20] = True
    m[5:9, 6:10] = False  # hole
    m[10:15, 11:17] = False  # second hole
    m[12, 13] = True  # island in the second hole
    ms["holes_and_island"] = m
    m = np.zeros((30, 30), bool)
    for k in range(0, 14, 2):  # concentric square rings: nested islands and holes
        m[k : 30 - k, k : 30 - k] = k % 4 == 0
    ms["nested"] = m
    m = np.zeros((7, 9), bool)
    m[3, 4] = True
    ms["one_pixel"] = m
    m = np.zeros((5, 5), bool)
    m[0, 0] = m[4, 4] = m[0, 4] = m[4, 0] = True  # one-pixel objects in the corners
    ms["corner_pixels"] = m
    m = np.zeros((8, 8), bool)
    m[np.arange(8), np.arange(8)] = True  # diagonal: 8-connected only
    m[1, 6] = m[2, 5] = True
    ms["diagonal"] = m
    m = np.ones((6, 10), bool)  # the whole image
    ms["full"] = m
    m = np.zeros((12, 12), bool)
    m[0, :] = m[:, 0] = m[-1, :] = m[:, -1] = True  # frame on the border, hole inside
    ms["border_frame"] = m
    m = np.zeros((9, 11), bool)
    m[4, 1:10] = True  # one-pixel-wide stroke
    m[1:8, 5] = True
    ms["thin_cross"] = m
    m = np.zeros((10, 10), bool)
    m[2:5, 2:5] = True
    m[5:8, 5:8] = True  # two squares touching at one corner
    m[2:5, 5:8] = False
    m[5:8, 2:4] = True
    ms["checker_touch"] = m
    return ms


def random_masks(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = rng.integers(1, 24, size=2)
        out.append(rng.random((h, w)) < rng.uniform(0.1, 0.9))
    return out


def make_labelset(data_root: Path, n_real: int = 4) -> LabelSet:
    """Real masks as objects of images, plus synthetic images, an empty image and an object
    drawn over another."""
    reals = real_masks(data_root)
    images = []
    for i, (name, m) in enumerate(reals[:n_real] + reals[-n_real:]):
        h, w = m.shape
        objs = [LabeledObject("thing" if i % 2 else "stuff", m, object_id=100 + i)]
        box = np.zeros_like(m)
        box[h // 4 : h // 2, w // 4 : w // 2] = True  # on top of the real object
        objs.append(LabeledObject("box", box, object_id=None))
        images.append(LabeledImage(f"real/{name}", w, h, objs))
    for name, m in synthetic_masks().items():
        h, w = m.shape
        images.append(LabeledImage(f"synthetic/{name}.png", w, h, [LabeledObject("thing", m, 7)]))
    images.append(LabeledImage("empty.jpg", 5, 4, []))
    return LabelSet(["stuff", "thing", "box", "unused"], images)


# ---------------------------------------------------------------------------------------------
# labels


def test_labels_validation_names_the_bad_value():
    m = np.zeros((4, 5), bool)
    with pytest.raises(ValueError, match=r"a.png.*object 0.*\(4, 5\).*\(5, 4\)"):
        LabeledImage("a.png", 4, 5, [LabeledObject("cat", m)])
    with pytest.raises(ValueError, match="bool.*uint8"):
        LabeledObject("cat", m.astype(np.uint8))
    with pytest.raises(ValueError, match="H x W"):
        LabeledObject("cat", np.zeros((4, 5, 3), bool))
    for bad in ("/abs.png", "../up.png", "a\\b.png", "a//b.png", ""):
        with pytest.raises(ValueError, match="file_name"):
            LabeledImage(bad, 5, 4, [])
    with pytest.raises(ValueError, match="height"):
        LabeledImage("a.png", 5, 0, [])
    im = LabeledImage("a.png", 5, 4, [LabeledObject("cat", m), LabeledObject("dog", m)])
    with pytest.raises(ValueError, match=r"'a.png'.*object 1.*'dog'"):
        LabelSet(["cat"], [im]).validate()
    with pytest.raises(ValueError, match="'a.png' is listed twice"):
        LabelSet(["cat", "dog"], [im, LabeledImage("a.png", 5, 4, [])])
    with pytest.raises(ValueError, match="'cat' is listed twice"):
        LabelSet(["cat", "cat"], [])


def test_labeled_object_equality_compares_pixels():
    m = np.zeros((3, 3), bool)
    m2 = m.copy()
    m2[1, 1] = True
    assert LabeledObject("a", m, 1) == LabeledObject("a", m.copy(), 1)
    assert LabeledObject("a", m, 1) != LabeledObject("a", m2, 1)
    assert LabeledObject("a", m, 1) != LabeledObject("a", m, 2)
    assert LabeledObject("a", m) != LabeledObject("b", m)


# ---------------------------------------------------------------------------------------------
# RLE


def test_rle_round_trip_exact_and_json_ready(data_root):
    masks = [m for _, m in real_masks(data_root)[::10]] + random_masks(50)
    for m in masks:
        rle = encode_rle(m)
        assert isinstance(rle["counts"], str) and rle["size"] == list(m.shape)
        json.dumps(rle)
        back = decode_rle(rle)
        assert back.dtype == bool and np.array_equal(back, m)
        assert np.array_equal(decode_rle({**rle, "counts": rle["counts"].encode()}), m)
        # pycocotools reads our RLE as its own
        assert np.array_equal(mask_utils.decode({**rle, "counts": rle["counts"].encode()}), m)


def test_uncompressed_rle_is_decoded_column_major():
    m = np.array([[0, 1, 1], [0, 1, 0]], bool)
    # column-major runs: col0 = 0,0 ; col1 = 1,1 ; col2 = 1,0 -> 2 zeros, 3 ones, 1 zero
    assert np.array_equal(decode_rle({"size": [2, 3], "counts": [2, 3, 1]}), m)


@pytest.mark.parametrize(
    "rle, match",
    [
        ({"size": [2, 3], "counts": [2, 3]}, "add up to 5 pixels.*6"),
        ({"size": [2, 3], "counts": [2, -1, 5]}, "non-negative"),
        ({"size": [2, 3]}, "no 'counts'"),
        ({"counts": "06"}, "no 'size'"),
        ({"size": [0, 3], "counts": []}, "positive"),
        ({"size": [2, 3], "counts": "0 6"}, "invalid character"),
        ({"size": [2, 3], "counts": "9"}, "add up to"),
        ({"size": [2, 3], "counts": 6}, "str, bytes or list"),
    ],
)
def test_malformed_rle_is_an_error_not_a_crash(rle, match):
    with pytest.raises(ValueError, match=match):
        decode_rle(rle)


# ---------------------------------------------------------------------------------------------
# polygons


@pytest.mark.parametrize("name", sorted(synthetic_masks()))
def test_polygons_exact_on_synthetic_shapes(name):
    m = synthetic_masks()[name]
    polys = mask_to_polygons(m)
    back = polygons_to_mask(polys, *m.shape)
    assert np.array_equal(back, m), name
    assert polygon_iou(m) == 1.0
    # one polygon per 8-connected component, holes inside it
    n_comp = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)[0] - 1
    assert len(polys) == n_comp
    # coordinates are pixel corners inside the image
    for p in polys:
        xy = np.asarray(p).reshape(-1, 2)
        assert (xy == np.round(xy)).all()
        assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= m.shape[1]
        assert xy[:, 1].min() >= 0 and xy[:, 1].max() <= m.shape[0]


def test_polygons_exact_on_random_masks():
    for m in random_masks(300, seed=1):
        assert np.array_equal(polygons_to_mask(mask_to_polygons(m), *m.shape), m)


def test_axis_aligned_rectangle_is_its_four_corners():
    m = np.zeros((10, 12), bool)
    m[2:7, 3:11] = True
    (poly,) = mask_to_polygons(m)
    corners = {tuple(v) for v in np.asarray(poly).reshape(-1, 2)}
    assert len(poly) == 8 and corners == {(3, 2), (11, 2), (11, 7), (3, 7)}
    one = np.zeros((3, 3), bool)
    one[1, 2] = True
    (poly,) = mask_to_polygons(one)
    assert {tuple(v) for v in np.asarray(poly).reshape(-1, 2)} == {(2, 1), (3, 1), (3, 2), (2, 2)}


def test_hole_is_kept_by_even_odd_fills():
    m = synthetic_masks()["holes_and_island"]
    polys = mask_to_polygons(m)
    # COCO unions an annotation's polygons: the holes must live inside their component's
    # polygon, not as polygons of their own (which would fill them)
    assert len(polys) == 2
    big = max(polys, key=len)
    alone = polygons_to_mask([big], *m.shape)
    assert not alone[5:9, 6:10].any() and not alone[10:15, 11:17].any()
    # a hole written as a polygon of its own would be filled by COCO's union: the test can tell
    outer, hole = [3, 2, 20, 2, 20, 18, 3, 18], [6, 5, 10, 5, 10, 9, 6, 9]
    assert polygons_to_mask([outer, hole], *m.shape)[5:9, 6:10].all()
    # cv2.fillPoly (Ultralytics' rasteriser) leaves the hole empty too
    filled = np.zeros(m.shape, np.uint8)
    big = max(polys, key=len)
    cv2.fillPoly(filled, [np.asarray(big).reshape(-1, 2).astype(np.int32)], 1)
    assert filled[6, 7] == 0 and filled[3, 4] == 1


def _winding(poly: list[float], px: float, py: float) -> int:
    v = np.reshape(poly, (-1, 2))
    w = 0
    for (x0, y0), (x1, y1) in zip(v, np.roll(v, -1, axis=0), strict=True):
        side = (x1 - x0) * (py - y0) - (px - x0) * (y1 - y0)
        if y0 <= py < y1 and side > 0:
            w += 1
        elif y1 <= py < y0 and side < 0:
            w -= 1
    return w


@pytest.mark.parametrize("name", ["holes_and_island", "nested", "border_frame", "diagonal"])
def test_polygons_exact_under_nonzero_winding_too(name):
    # Holes run opposite to their outer ring, so readers that fill by nonzero winding (not
    # even-odd) keep the holes as well.
    m = synthetic_masks()[name]
    polys = mask_to_polygons(m)
    for r, c in np.ndindex(*m.shape):
        inside = any(_winding(p, c + 0.5, r + 0.5) != 0 for p in polys)
        assert inside == m[r, c], (name, r, c)


def test_polygons_exact_on_real_masks_and_simplified_loss_is_measured(data_root):
    exact, simplified = [], []
    for name, m in real_masks(data_root):
        exact.append(polygon_iou(m))
        simplified.append(polygon_iou(m, tolerance=1.0))
        assert exact[-1] == 1.0, name
    print(
        f"\npolygon IoU on {len(exact)} GrabCut+Berkeley masks: exact mean {np.mean(exact):.6f} "
        f"min {min(exact):.6f}; tolerance 1 px mean {np.mean(simplified):.4f} "
        f"min {min(simplified):.4f}"
    )
    assert min(simplified) > 0.9 and np.mean(simplified) > 0.97
    assert min(simplified) < 1.0  # simplification does lose something: the measure can see it


def test_empty_mask_has_no_polygon_and_bbox_zero():
    m = np.zeros((4, 4), bool)
    assert mask_to_polygons(m) == []
    assert mask_bbox(m) == [0.0, 0.0, 0.0, 0.0]
    assert polygon_iou(m) == 1.0


# ---------------------------------------------------------------------------------------------
# COCO


@pytest.mark.parametrize("segmentation", ["rle", "polygon"])
def test_coco_round_trip_pycocotools_and_read_coco(tmp_path, data_root, segmentation):
    labels = make_labelset(data_root)
    path = tmp_path / "out" / "labels.json"
    summary = write_coco(labels, path, segmentation=segmentation)
    assert summary["rle_fallbacks"] == 0
    coco = COCO(str(path))
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert cats == {1: "stuff", 2: "thing", 3: "box", 4: "unused"}
    imgs = {im["file_name"]: im for im in coco.loadImgs(coco.getImgIds())}
    for im in labels.images:
        entry = imgs[im.file_name]
        assert (entry["width"], entry["height"]) == (im.width, im.height)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[entry["id"]]))
        assert len(anns) == len(im.objects)
        for ann, obj in zip(anns, im.objects, strict=True):
            assert cats[ann["category_id"]] == obj.category
            assert np.array_equal(coco.annToMask(ann).astype(bool), obj.mask)
            assert ann["area"] == obj.mask.sum()
            rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
            assert ann["bbox"] == mask_utils.toBbox(rle).tolist()
            assert ann["iscrowd"] == 0
            if segmentation == "polygon":
                assert isinstance(ann["segmentation"], list)
            else:
                assert isinstance(ann["segmentation"]["counts"], str)
    assert read_coco(path) == labels


def test_coco_polygon_falls_back_to_rle_for_an_empty_mask(tmp_path):
    labels = LabelSet(
        ["a"], [LabeledImage("x.png", 4, 3, [LabeledObject("a", np.zeros((3, 4), bool))])]
    )
    summary = write_coco(labels, tmp_path / "c.json", segmentation="polygon")
    assert summary["rle_fallbacks"] == 1
    assert read_coco(tmp_path / "c.json") == labels


def test_read_foreign_coco_polygons_and_uncompressed_rle(tmp_path):
    doc = {
        "images": [{"id": 7, "file_name": "dir/b.jpg", "width": 4, "height": 3}],
        "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {"image_id": 7, "category_id": 2, "segmentation": [[1, 0, 3, 0, 3, 2, 1, 2]]},
            {
                "image_id": 7,
                "category_id": 5,
                "iscrowd": 1,
                "segmentation": {"size": [3, 4], "counts": [11, 1]},
            },
        ],
    }
    (tmp_path / "f.json").write_text(json.dumps(doc))
    got = read_coco(tmp_path / "f.json")
    assert got.categories == ["dog", "cat"]
    (im,) = got.images
    assert im.file_name == "dir/b.jpg" and [o.category for o in im.objects] == ["cat", "dog"]
    box = np.zeros((3, 4), bool)
    box[0:2, 1:3] = True
    assert np.array_equal(im.objects[0].mask, box)
    last = np.zeros((3, 4), bool)
    last[2, 3] = True
    assert np.array_equal(im.objects[1].mask, last)
    assert im.objects[0].object_id is None


def _good_doc() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 3, "height": 2}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": {"size": [2, 3], "counts": [1, 5]},
            },
        ],
    }


def _broken(edit):
    doc = _good_doc()
    edit(doc)
    return doc


@pytest.mark.parametrize(
    "doc, match",
    [
        (_broken(lambda d: d.pop("images")), "missing key 'images'"),
        (_broken(lambda d: d.update(categories={})), "'categories' must be a list"),
        (_broken(lambda d: d["annotations"][0].update(image_id=9)), "image_id 9 is not"),
        (_broken(lambda d: d["annotations"][0].update(category_id=3)), "category_id 3 is not"),
        (
            _broken(lambda d: d["annotations"][0]["segmentation"].update(size=[3, 2])),
            r"RLE size \[3, 2\] disagrees.*\[2, 3\]",
        ),
        (
            _broken(lambda d: d["annotations"][0]["segmentation"].update(counts=[1, 4])),
            "add up to 5",
        ),
        (_broken(lambda d: d["annotations"][0].update(segmentation=[[0, 0, 1, 1]])), "at least 3"),
        (_broken(lambda d: d["annotations"][0].pop("segmentation")), "no segmentation"),
        (_broken(lambda d: d["images"].append(dict(d["images"][0]))), "id 1 is used twice"),
        (_broken(lambda d: d["images"][0].pop("width")), r"images\[0\] has no 'width'"),
        (_broken(lambda d: d["images"][0].update(height="2")), "'height' must be int"),
        (_broken(lambda d: d["images"][0].update(file_name="../a.png")), "file_name"),
        ([1, 2], "top level must be an object"),
    ],
)
def test_malformed_coco_gives_clear_errors(tmp_path, doc, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CocoError, match=match) as e:
        read_coco(path)
    assert "bad.json" in str(e.value)


def test_good_coco_document_reads_and_broken_json_is_named(tmp_path):
    (tmp_path / "ok.json").write_text(json.dumps(_good_doc()))
    (im,) = read_coco(tmp_path / "ok.json").images
    assert im.objects[0].mask.sum() == 5
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CocoError, match="bad.json.*cannot read JSON"):
        read_coco(tmp_path / "bad.json")
    with pytest.raises(CocoError, match="no such file"):
        read_coco(tmp_path / "missing.json")


def test_coco_refuses_foreign_file_and_images_folder(tmp_path, data_root):
    labels = LabelSet(["a"], [LabeledImage("x.png", 2, 2, [])])
    foreign = tmp_path / "theirs.json"
    foreign.write_text('{"images": []}')
    with pytest.raises(ExportError, match="not written by steadysam"):
        write_coco(labels, foreign)
    assert foreign.read_text() == '{"images": []}'
    ours = tmp_path / "ours.json"
    write_coco(labels, ours)
    write_coco(labels, ours)  # our own file may be replaced
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(ExportError, match="inside the images folder"):
        write_coco(labels, images / "sub" / "labels.json", images_dir=images)
    assert not (images / "sub").exists()
    unknown = LabelSet(
        ["a"], [LabeledImage("x.png", 2, 2, [LabeledObject("b", np.ones((2, 2), bool))])]
    )
    with pytest.raises(ValueError, match="'b'"):
        write_coco(unknown, tmp_path / "u.json")
    assert not (tmp_path / "u.json").exists()


# ---------------------------------------------------------------------------------------------
# YOLO


def _read_yolo(path: Path, width: int, height: int) -> list[tuple[int, np.ndarray]]:
    out = []
    for line in path.read_text().splitlines():
        cls, *vals = line.split()
        xy = np.asarray(vals, float).reshape(-1, 2)
        assert (xy >= 0).all() and (xy <= 1).all()
        out.append((int(cls), xy * (width, height)))
    return out


def test_yolo_files_parse_and_rasterise_back(tmp_path, data_root):
    labels = make_labelset(data_root)
    out = tmp_path / "yolo"
    summary = write_yolo(labels, out)
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "stuff", 1: "thing", 2: "box", 3: "unused"}
    assert data["nc"] == 4 and data["train"] == "images"
    n_lines = 0
    ious_fillpoly = []
    for im in labels.images:
        txt = out / "labels" / Path(im.file_name).with_suffix(".txt")
        parts = _read_yolo(txt, im.width, im.height)
        n_lines += len(parts)
        for obj in im.objects:
            cls = labels.categories.index(obj.category)
            mine = [xy for c, xy in parts[: len(mask_to_polygons(obj.mask))]]
            assert all(c == cls for c, _ in parts[: len(mine)])
            parts = parts[len(mine) :]
            # exact under COCO's fill: corners survive the normalisation
            polys = [np.round(xy).reshape(-1).tolist() for xy in mine]
            assert np.array_equal(polygons_to_mask(polys, im.height, im.width), obj.mask)
            # Ultralytics' rasteriser (cv2.fillPoly on int32 corners) is close, not exact
            filled = np.zeros((im.height, im.width), np.uint8)
            cv2.fillPoly(filled, [xy.astype(np.int32) for xy in mine], 1)
            inter = np.logical_and(filled, obj.mask).sum()
            ious_fillpoly.append(inter / np.logical_or(filled, obj.mask).sum())
        assert parts == []
    assert n_lines == summary["lines"] > 0
    assert (out / "labels" / "empty.txt").read_text() == ""
    print(
        f"\nYOLO back through cv2.fillPoly: IoU mean {np.mean(ious_fillpoly):.4f} "
        f"min {min(ious_fillpoly):.4f} over {len(ious_fillpoly)} objects"
    )
    assert np.mean(ious_fillpoly) > 0.5


def test_yolo_links_images_and_refuses_images_folder(tmp_path):
    images = tmp_path / "images_src"
    images.mkdir()
    labels = LabelSet(
        ["a"], [LabeledImage("x.png", 2, 2, [LabeledObject("a", np.eye(2, dtype=bool))])]
    )
    summary = write_yolo(labels, tmp_path / "y", images_dir=images)
    assert summary["images_link"] and (tmp_path / "y" / "images").resolve() == images.resolve()
    (images / "x.png").write_bytes(b"source image")
    # re-exporting deletes the old export, link included, but never what the link points to
    write_yolo(labels, tmp_path / "y", images_dir=images)
    assert (images / "x.png").read_bytes() == b"source image"
    with pytest.raises(ExportError, match="inside the images folder"):
        write_yolo(labels, images / "y", images_dir=images)
    with pytest.raises(ExportError, match="inside the images folder"):
        write_yolo(labels, tmp_path / "y" / "images" / "z", images_dir=images)  # via the link
    assert [p.name for p in images.iterdir()] == ["x.png"]


# ---------------------------------------------------------------------------------------------
# PNG


def test_png_maps_read_back_exactly(tmp_path, data_root):
    labels = make_labelset(data_root)
    out = tmp_path / "png"
    summary = write_png(labels, out)
    legend = json.loads((out / "legend.json").read_text())
    assert [c["name"] for c in legend["categories"]] == labels.categories
    assert legend["semantic_dtype"] == "uint8"
    hidden = 0
    for im, entry in zip(labels.images, legend["images"], strict=True):
        inst_expected = np.zeros((im.height, im.width), np.int64)
        sem_expected = np.zeros((im.height, im.width), np.int64)
        for v, obj in enumerate(im.objects, start=1):
            inst_expected[obj.mask] = v
            sem_expected[obj.mask] = labels.categories.index(obj.category) + 1
        inst, mode = read_mask(out / entry["instances"])
        assert mode.startswith("I") and np.array_equal(inst, inst_expected)
        sem, mode = read_mask(out / entry["semantic"])
        assert mode == "L" and np.array_equal(sem, sem_expected)
        for o, obj in zip(entry["objects"], im.objects, strict=True):
            assert o["category"] == obj.category and o["object_id"] == obj.object_id
            assert o["visible_pixels"] == (inst_expected == o["value"]).sum()
            hidden += o["pixels"] - o["visible_pixels"]
    assert summary["hidden_pixels"] == hidden > 0  # the boxes cover part of the real objects


def test_png_instance_ids_beyond_255_survive(tmp_path):
    objs = []
    for k in range(300):
        m = np.zeros((1, 300), bool)
        m[0, k] = True
        objs.append(LabeledObject("a", m))
    write_png(LabelSet(["a"], [LabeledImage("wide.png", 300, 1, objs)]), tmp_path / "p")
    inst, _ = read_mask(tmp_path / "p" / "instances" / "wide.png")
    assert inst.tolist() == [list(range(1, 301))]


# ---------------------------------------------------------------------------------------------
# folders: overwrite rules, atomic replacement


@pytest.mark.parametrize("fmt", ["yolo", "png"])
def test_folder_overwrite_rules(tmp_path, fmt):
    one = np.ones((2, 2), bool)
    labels = LabelSet(
        ["a"],
        [LabeledImage("x.png", 2, 2, [LabeledObject("a", one)]), LabeledImage("y.png", 2, 2, [])],
    )
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a steadysam export"):
        export(labels, fmt, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    export(labels, fmt, empty)  # an empty folder is fine
    assert (empty / MARKER).exists()
    # re-export into our own folder replaces it whole: the image dropped since leaves no file
    export(LabelSet(["a"], labels.images[:1]), fmt, empty)
    names = {p.name for p in empty.rglob("*")}
    assert not any(n.startswith("y.") for n in names), names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    other = "png" if fmt == "yolo" else "yolo"
    with pytest.raises(ExportError, match=f"holds a steadysam '{fmt}' export"):
        export(labels, other, empty)


def test_two_images_writing_one_file_is_an_error(tmp_path):
    labels = LabelSet(["a"], [LabeledImage("d/x.png", 2, 2, []), LabeledImage("d/x.jpg", 2, 2, [])])
    with pytest.raises(ExportError, match="'d/x.png' and 'd/x.jpg'"):
        write_png(labels, tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_export_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        export(LabelSet([], []), "voc", tmp_path / "x")
