"""Evaluation datasets: one image unit = one image file + the object masks drawn on it.

Every loader returns a :class:`Dataset` whose items group the objects of one image, so the
runner computes each embedding once for all of the image's objects (identical image files, such
as COCO-MVal's repeated COCO images or Berkeley's 189011a/b, are merged by content). Masks are
decoded lazily; a decoded object is an :class:`ObjectGT` with a boolean ``gt`` and an optional
boolean ``ignore`` map (RITM convention; the FocSAM protocol treats ignore as background).

Where to get the data (layouts accepted, encodings) is documented per loader and in
docs/eval.md. ``load_dataset(name, root)`` resolves ``root`` itself or a conventional
sub-folder of it (``root/GrabCut``, ...); without a root it looks under ``$STEADYSAM_DATA`` or
``./data``.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from steadysam.datafiles import (
    IMAGE_EXTS,
    DatasetError,
    ImageError,
    label_map,
    read_image,
    read_mask,
)


class LayoutError(DatasetError):
    """A folder is not laid out as the loader expects (load_dataset then tries the next one)."""


class SampleError(Exception):
    """One sample is unusable (missing/unreadable file, size mismatch, empty mask)."""


@dataclass
class ObjectGT:
    """One evaluation sample's ground truth. ``gt``/``ignore``: H x W bool (``ignore`` optional)."""

    id: str
    gt: np.ndarray
    ignore: np.ndarray | None = None


Decoder = Callable[[Path, str], list[ObjectGT]]


@dataclass
class MaskSource:
    """A mask file. ``multi``: instance-id mask giving one sample per id (``<id>#<k>``)."""

    id: str
    path: Path | None
    decode: Decoder
    multi: bool = False

    def load(self) -> list[ObjectGT]:
        if self.path is None:
            raise SampleError(f"no mask file for sample {self.id!r}")
        try:
            objs = self.decode(self.path, self.id)
        except ImageError as e:  # one sample's file: recorded with the run, which goes on
            raise SampleError(str(e)) from e
        for o in objs:
            if not o.gt.any():
                raise SampleError(f"empty mask (no object pixel) in {self.path}")
        return objs


@dataclass
class ImageItem:
    """One image and its mask sources; ``key`` is stable and unique within the dataset."""

    key: str
    image_path: Path | None
    masks: list[MaskSource]

    def load_image(self) -> np.ndarray:
        """H x W x 3 uint8 RGB (``steadysam.datafiles.read_image``: OpenCV's decode, as RITM's
        cv2.imread; grayscale files are expanded)."""
        if self.image_path is None:
            raise SampleError(f"no image file for {self.key!r}")
        try:
            return read_image(self.image_path)
        except ImageError as e:  # one image's file: recorded with the run, which goes on
            raise SampleError(str(e)) from e


@dataclass
class Dataset:
    name: str
    root: Path
    items: list[ImageItem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


def decode_ritm_band(path: Path, sid: str) -> list[ObjectGT]:
    """GrabCut/Berkeley (RITM GrabCutDataset): channel 0, ==128 ignore, >128 object."""
    arr, _ = read_mask(path)
    m = arr if arr.ndim == 2 else arr[..., 2]  # RITM: cv2 (BGR) channel 0 = blue = PIL's 2
    return [ObjectGT(sid, m > 128, m == 128)]


def decode_any_nonzero(path: Path, sid: str) -> list[ObjectGT]:
    """DAVIS/COCO-MVal (RITM DavisDataset): every id/colour > 0 is the one object, no ignore."""
    arr, _ = read_mask(path)
    return [ObjectGT(sid, (arr if arr.ndim == 2 else arr.max(axis=2)) > 0)]


def decode_eq255(path: Path, sid: str) -> list[ObjectGT]:
    """MVTec/COD10K (FocSAM loaders): grey value 255 is the object, anything else background."""
    arr, _ = read_mask(path)
    m = arr if arr.ndim == 2 else arr.max(axis=2)
    return [ObjectGT(sid, m == 255)]


def instances_from_ids(ids: np.ndarray, sid: str, void: int | None = 255) -> list[ObjectGT]:
    """One sample per id > 0 (``<sid>#<id>``); ``void`` pixels form every sample's ignore map."""
    ignore = (ids == void) if void is not None else None
    if ignore is not None and not ignore.any():
        ignore = None
    labels = [int(v) for v in np.unique(ids) if v != 0 and v != void]
    return [ObjectGT(f"{sid}#{k}", ids == k, ignore) for k in labels]


def decode_instances(path: Path, sid: str) -> list[ObjectGT]:
    """PASCAL VOC SegmentationObject: palette ids 1..254, 255 = void (ignore)."""
    arr, _ = read_mask(path)
    return instances_from_ids(label_map(arr), sid)


def decode_folder(path: Path, sid: str) -> list[ObjectGT]:
    """Generic masks: binary -> one sample; instance ids -> one sample per id.

    Palette or colour-coded masks and grey masks whose non-zero values are all < 128 (or 255
    for void) are instance maps; otherwise the mask is binary with object = value > 127
    (value > 0 for 0/1 masks).
    """
    arr, mode = read_mask(path)
    if arr.ndim == 3:
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
            arr = arr[..., 0]
        else:
            return instances_from_ids(label_map(arr), sid, void=None)
    vals = np.unique(arr)
    nz = vals[vals != 0]
    if mode == "P" or (len(nz) > 1 and nz[nz != 255].max(initial=0) < 128):
        return instances_from_ids(arr, sid)
    if nz.size and nz.max() == 1:
        return [ObjectGT(sid, arr > 0)]
    return [ObjectGT(sid, arr > 127)]


def decode_gt128(path: Path, sid: str) -> list[ObjectGT]:
    """HQ-SAM evaluation sets (sam-hq ``train.py``): channel 0 of the GT, object = value > 128,
    no ignore (their masks are grey with soft edges, so the threshold matters)."""
    arr, _ = read_mask(path)
    m = arr if arr.ndim == 2 else arr[..., 0]
    return [ObjectGT(sid, m > 128)]


def _decode_sbd(path: Path, sid: str) -> list[ObjectGT]:
    """SBD ``inst/<id>.mat``: ``GTinst.Segmentation`` instance map, one sample per id > 0."""
    from scipy.io import loadmat  # presence checked by sbd()

    try:
        ids = loadmat(str(path))["GTinst"][0][0][0]
    except Exception as e:  # scipy raises assorted types for corrupt files
        raise SampleError(f"cannot read SBD instance file {path}: {e}") from e
    return instances_from_ids(np.asarray(ids).astype(np.int32), sid)


# ---------------------------------------------------------------------------------- listing


def _stems(folder: Path, exts: tuple[str, ...] = IMAGE_EXTS, suffix: str = "") -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in exts and p.stem.endswith(suffix):
            out.setdefault(p.stem[: len(p.stem) - len(suffix)], p)
    return out


def _file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def merge_identical_images(items: list[ImageItem]) -> list[ImageItem]:
    """Merge items whose image files are byte-identical (one embedding for all their objects).

    Only files sharing their size with another file are hashed, so this is cheap.
    """
    sizes = {
        id(it): it.image_path.stat().st_size
        for it in items
        if it.image_path is not None and it.image_path.is_file()
    }
    counts = Counter(sizes.values())
    hosts: dict[tuple[int, str], ImageItem] = {}
    out = []
    for it in items:
        size = sizes.get(id(it))
        if size is None or counts[size] < 2:
            out.append(it)
            continue
        host = hosts.setdefault((size, _file_digest(it.image_path)), it)
        if host is it:
            out.append(it)
        else:
            host.masks.extend(it.masks)
    return out


def paired_folders(
    img_dir: Path, mask_dir: Path, decode: Decoder, multi: bool = False, mask_suffix: str = ""
) -> list[ImageItem]:
    """Pair ``img_dir/<stem>.*`` with ``mask_dir/<stem><mask_suffix>.*`` by stem.

    An image without a mask, or a mask without an image, becomes an item that fails with a
    clear message when evaluated (so it is listed in the run's ``errors``).
    """
    imgs, masks = _stems(img_dir), _stems(mask_dir, suffix=mask_suffix)
    items = []
    for stem in sorted(set(imgs) | set(masks)):
        src = MaskSource(stem, masks.get(stem), decode, multi)
        items.append(ImageItem(stem, imgs.get(stem), [src]))
    return merge_identical_images(items)


def _first_pair(root: Path, pairs: list[tuple[str, str]]) -> tuple[Path, Path] | None:
    for a, b in pairs:
        if (root / a).is_dir() and (root / b).is_dir():
            return root / a, root / b
    return None


def grabcut(root: Path) -> list[ImageItem]:
    """GrabCut, 50 objects (Rother et al. 2004), RITM layout ``data_GT/`` + ``boundary_GT/``
    (or ``images/`` + ``masks/``). Masks: 0 background, 255 object, 128 = ignore band.
    Get it from the RITM repository's ``datasets/GrabCut`` (github.com/SamsungLabs/
    ritm_interactive_segmentation)."""
    d = _first_pair(root, [("data_GT", "boundary_GT"), ("images", "masks")])
    return paired_folders(
        *_need(d, root, "data_GT/+boundary_GT/ or images/+masks/"), decode_ritm_band
    )


def berkeley(root: Path) -> list[ImageItem]:
    """Berkeley, 100 objects in 96 images (McGuinness & O'Connor 2010), ``images/`` + ``masks/``.
    RGB masks, channel 0: ==128 ignore, >128 object. RITM's ``datasets/Berkeley`` masks, images
    from BSDS500."""
    d = _first_pair(root, [("images", "masks"), ("img", "gt")])
    return paired_folders(*_need(d, root, "images/+masks/"), decode_ritm_band)


def davis(root: Path) -> list[ImageItem]:
    """DAVIS-345 (BRS subset of DAVIS 2016/2017), ``images/`` + ``masks/`` (or ``img/`` + ``gt/``).
    Palette PNGs; every id > 0 (including 255) is merged into one object, as RITM does."""
    d = _first_pair(root, [("images", "masks"), ("img", "gt")])
    return paired_folders(*_need(d, root, "images/+masks/"), decode_any_nonzero)


def coco_mval(root: Path) -> list[ImageItem]:
    """COCO-MVal, 800 instances (f-BRS), ``images/`` + ``masks/`` (or ``img/`` + ``gt/``).
    L PNG 0/255 one instance per file; names contain spaces. From RITM's ``datasets/COCO_MVal``."""
    d = _first_pair(root, [("images", "masks"), ("img", "gt")])
    return paired_folders(*_need(d, root, "images/+masks/"), decode_any_nonzero)


def folder(root: Path) -> list[ImageItem]:
    """Generic ``images/`` + ``masks/`` with matching stems; binary or instance-id masks."""
    d = _first_pair(root, [("images", "masks")])
    return paired_folders(*_need(d, root, "images/+masks/"), decode_folder, multi=True)


# Folder pairs of the HQ-SAM evaluation sets, as sam-hq's train.py names them (HR-SOD's
# masks_max255 before a plain masks/).
HQ_PAIRS = [
    ("im", "gt"),
    ("images_test", "masks_test"),
    ("images", "masks_max255"),
    ("images", "masks"),
]


def hqseg(root: Path) -> list[ImageItem]:
    """HQ-SAM's evaluation sets (HQSeg-44K release, one object per image, object = GT > 128):
    DIS5K ``DIS-VD/im/`` + ``gt/``; ThinObject-5K ``images_test/`` + ``masks_test/``; HR-SOD
    ``images/`` + ``masks_max255/``; COIFT ``images/`` + ``masks/``. Download: the HQ-SAM
    repository's data instructions (github.com/SysCV/sam-hq, ``data/`` layout)."""
    d = _first_pair(root, HQ_PAIRS)
    return paired_folders(
        *_need(d, root, " or ".join(f"{a}/+{b}/" for a, b in HQ_PAIRS)), decode_gt128
    )


def _split_ids(path: Path) -> list[str]:
    return [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]


def sbd(root: Path, split: str = "val") -> list[ImageItem]:
    """SBD (Hariharan et al. 2011) ``benchmark_RELEASE/dataset``: ``img/*.jpg``, ``inst/*.mat``,
    ``val.txt``; one sample per instance (6,671 in val). Needs scipy (``pip install scipy``).
    Download: http://home.bharathh.info/pubs/codes/SBD/download.html"""
    _need(root / f"{split}.txt" if (root / "inst").is_dir() else None, root, "img/, inst/, val.txt")
    try:
        import scipy.io  # noqa: F401
    except ImportError as e:
        raise DatasetError("the SBD loader reads .mat files with scipy: pip install scipy") from e
    return [
        ImageItem(
            s,
            root / "img" / f"{s}.jpg",
            [MaskSource(s, root / "inst" / f"{s}.mat", _decode_sbd, True)],
        )
        for s in _split_ids(root / f"{split}.txt")
    ]


def pascal_voc(root: Path, split: str = "val") -> list[ImageItem]:
    """PASCAL VOC 2012 ``VOC2012/``: ``JPEGImages/``, ``SegmentationObject/`` (palette ids,
    255 = ignore), ``ImageSets/Segmentation/<split>.txt``; one sample per object id."""
    lst = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    _need(lst if (root / "SegmentationObject").is_dir() else None, root, "SegmentationObject/")
    return [
        ImageItem(
            s,
            root / "JPEGImages" / f"{s}.jpg",
            [MaskSource(s, root / "SegmentationObject" / f"{s}.png", decode_instances, True)],
        )
        for s in _split_ids(lst)
    ]


MVTEC_EXCLUDED = (("transistor", "cut_lead"), ("transistor", "misplaced"))


def mvtec(root: Path, exclude: tuple[tuple[str, str], ...] = MVTEC_EXCLUDED) -> list[ImageItem]:
    """MVTec AD (Bergmann et al. 2019): ``<cat>/test/<defect>/<n>.png`` with
    ``<cat>/ground_truth/<defect>/<n>_mask.png``; ``good`` skipped; all defect regions of an
    image form one object (mask == 255). FocSAM excludes transistor/cut_lead and
    transistor/misplaced (``exclude``). Download: https://www.mvtec.com/company/research/datasets/mvtec-ad"""
    cats = sorted(p for p in root.iterdir() if (p / "test").is_dir()) if root.is_dir() else []
    _need(cats or None, root, "<category>/test/ and <category>/ground_truth/")
    items = []
    for cat in cats:
        for ddir in sorted(p for p in (cat / "test").iterdir() if p.is_dir()):
            if ddir.name == "good" or (cat.name, ddir.name) in exclude:
                continue
            gt_dir = cat / "ground_truth" / ddir.name
            masks = _stems(gt_dir, suffix="_mask") if gt_dir.is_dir() else {}
            for stem, img in _stems(ddir).items():
                sid = f"{cat.name}/{ddir.name}/{stem}"
                items.append(ImageItem(sid, img, [MaskSource(sid, masks.get(stem), decode_eq255)]))
    return items


def cod10k(root: Path) -> list[ImageItem]:
    """COD10K test set (Fan et al. 2020): ``Imgs/`` + ``GT/`` (SINet layout) or COD10K-v3
    ``Test/Image/`` + ``Test/GT_Object/``; restricted to ``Info/CAM_test.txt`` when present
    (FocSAM: 2,026 camouflaged images). Object = grey value 255."""
    d = _first_pair(root, [("Imgs", "GT"), ("Test/Image", "Test/GT_Object")])
    items = paired_folders(
        *_need(d, root, "Imgs/+GT/ or Test/Image/+Test/GT_Object/"), decode_eq255
    )
    cam = root / "Info" / "CAM_test.txt"
    if cam.is_file():
        keep = {Path(s).stem for s in _split_ids(cam)}
        items = [it for it in items if it.key in keep]
    return items


def _need(found, root: Path, what: str):
    if not found:
        raise LayoutError(f"{root} does not look like the expected dataset layout ({what})")
    return found


# name: (loader, conventional folder names under the data root, aliases)
REGISTRY: dict[str, tuple[Callable[[Path], list[ImageItem]], tuple[str, ...], tuple[str, ...]]] = {
    "grabcut": (grabcut, ("GrabCut",), ()),
    "berkeley": (berkeley, ("Berkeley",), ()),
    "davis": (davis, ("DAVIS345", "DAVIS"), ("davis345", "davis-345")),
    "coco_mval": (coco_mval, ("COCO_MVal",), ("coco-mval",)),
    "sbd": (sbd, ("SBD/benchmark_RELEASE/dataset", "benchmark_RELEASE/dataset", "SBD"), ()),
    "pascal_voc": (pascal_voc, ("VOCdevkit/VOC2012", "VOC2012"), ("voc", "pascal")),
    "mvtec": (mvtec, ("mvtec", "MVTec", "mvtec_anomaly_detection"), ("mvtec_ad",)),
    "cod10k": (cod10k, ("COD10K", "COD10K-v3", "TestDataset/COD10K"), ("cod10k-v3",)),
    "folder": (folder, (), ("generic",)),
    # HQ-SAM's four evaluation sets (Stable-SAM's benchmark), under sam-hq's data/ layout.
    "dis": (hqseg, ("DIS5K/DIS-VD", "DIS-VD"), ("dis5k", "dis5k-vd", "dis-vd")),
    "thinobject": (
        hqseg,
        ("thin_object_detection/ThinObject5K", "ThinObject5K"),
        ("thinobject5k", "thinobject5k-te", "thin"),
    ),
    "coift": (hqseg, ("thin_object_detection/COIFT", "COIFT"), ()),
    "hrsod": (hqseg, ("thin_object_detection/HRSOD", "HRSOD"), ("hr-sod",)),
}
LOADERS = {k: v[0] for k, v in REGISTRY.items()}
ALIASES = {a: k for k, v in REGISTRY.items() for a in v[2]}


def canonical_name(name: str) -> str:
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(LOADERS))}")
    return key


def require_images(ds: Dataset, name: str) -> None:
    """DatasetError when the dataset lists no image at all (an empty folder, masks only, an
    empty split list): a run would evaluate nothing."""
    if any(it.image_path is not None for it in ds.items):
        return
    masks = sum(1 for it in ds.items for m in it.masks if m.path is not None)
    extra = f" ({masks} mask files without an image)" if masks else ""
    raise DatasetError(f"dataset {name} at {ds.root} has no images{extra}")


def load_dataset(name: str, root: str | os.PathLike | None = None) -> Dataset:
    """List a dataset. ``root`` is the dataset folder or a folder holding it (``GrabCut/``...)."""
    key = canonical_name(name)
    base = Path(root) if root is not None else Path(os.environ.get("STEADYSAM_DATA", "data"))
    candidates = ([base] if root is not None or key == "folder" else []) + [
        base / d for d in REGISTRY[key][1]
    ]
    first_err: LayoutError | None = None
    for cand in candidates:
        if not cand.is_dir():
            continue
        try:
            return Dataset(key, cand, LOADERS[key](cand))
        except LayoutError as e:
            first_err = first_err or e
    if first_err is not None:
        raise first_err
    raise DatasetError(
        f"dataset {name!r} not found in {base} (tried {', '.join(str(c) for c in candidates)}); "
        "pass --data-root, or set STEADYSAM_DATA"
    )
