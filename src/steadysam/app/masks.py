"""Binary masks to and from the encodings label files use: COCO run-length encoding (RLE) and
polygons.

RLE is lossless. Polygons are made so that they are lossless too wherever the reader fills them
the way COCO does (``pycocotools``: ``frPyObjects`` + ``decode``, an even-odd fill that samples
each pixel inside the pixel):

* **Pixel edges, not pixel centres.** ``cv2.findContours`` returns the centres of the boundary
  pixels; a polygon through them cuts half a pixel off all around (a 1-pixel object becomes a
  point, a 3-pixel-wide stroke loses two thirds of its area). That is the lossy mask-to-polygon
  export annotators complain about. We trace the *cracks between pixels* instead: vertices are
  pixel corners in COCO's convention (pixel ``(row, col)`` covers ``[col, col+1] x [row,
  row+1]``, so coordinates are integers), and only the corners where the boundary turns are kept.
  The polygon's area is the pixel count and an axis-aligned rectangle is its 4 corners.
* **Connectivity.** Foreground is 8-connected (as OpenCV's outer contours, and
  ``cv2.connectedComponents(connectivity=8)`` which groups the rings): where two object pixels
  touch only at a corner, one ring passes through that corner twice rather than splitting.
* **Holes.** COCO merges an annotation's polygons by *union*, so a hole written as a polygon of
  its own would be filled. Each hole is instead joined to its component's outer ring by a
  zero-width cut: the ring walks from its vertex nearest the hole to the hole, around the hole and
  back along the same segment. Under an even-odd fill (COCO, ``cv2.fillPoly``) the cut's two
  traversals cancel, so the hole stays empty; the outer ring and its holes run in opposite
  directions, so a nonzero-winding fill leaves the hole empty too. One polygon per 8-connected
  component; an island inside a hole is a component (polygon) of its own.

:func:`polygon_iou` measures what a polygon encoding keeps: it fills the polygons as COCO does
and compares with the mask (1.0 means lossless).

Torch-free; pycocotools and OpenCV only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "decode_rle",
    "encode_rle",
    "mask_bbox",
    "mask_to_polygons",
    "polygon_iou",
    "polygons_to_mask",
]

# Directions of travel along pixel edges, image coordinates (x right, y down), in clockwise order
# on screen: index + 1 turns right, index + 3 turns left.
_DX = np.array([1, 0, -1, 0])  # E, S, W, N
_DY = np.array([0, 1, 0, -1])


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a mask.

    Arguments:
        mask: H x W bool (or 0/1 integer) array.

    Returns ``{"size": [H, W], "counts": str}``, JSON-ready (pycocotools gives bytes).
    """
    m = _as_mask(mask)
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """H x W bool mask of a COCO RLE: compressed (``counts`` a str or bytes) or uncompressed
    (``counts`` a list of run lengths, starting with background, column-major as COCO's).

    Raises ValueError when the RLE is malformed: missing or wrong ``size``/``counts``, or run
    lengths that do not add up to H * W (checked before decoding, since pycocotools would read
    or write past its buffers).
    """
    if not isinstance(rle, dict):
        raise ValueError(f"RLE must be a dict with 'size' and 'counts', got {type(rle).__name__}")
    for key in ("size", "counts"):
        if key not in rle:
            raise ValueError(f"RLE has no {key!r} (keys: {sorted(rle)})")
    size = rle["size"]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(f"RLE size must be [height, width] of positive ints, got {size!r}")
    h, w = int(size[0]), int(size[1])
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ValueError("uncompressed RLE counts must be non-negative ints")
        runs = counts
    elif isinstance(counts, (str, bytes)):
        raw = counts.encode() if isinstance(counts, str) else counts
        runs = _string_counts(raw)
        counts = raw
    else:
        raise ValueError(f"RLE counts must be a str, bytes or list, got {type(counts).__name__}")
    total = sum(runs)
    if total != h * w:
        raise ValueError(f"RLE counts add up to {total} pixels, but size {h} x {w} has {h * w}")
    if isinstance(counts, list):
        compressed = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        compressed = {"size": [h, w], "counts": counts}
    return mask_utils.decode(compressed).astype(bool)


def _string_counts(s: bytes) -> list[int]:
    """The run lengths of COCO's compressed counts string (pycocotools ``rleFrString``, in
    Python, so that a malformed string is an error instead of a crash)."""
    runs: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError("RLE counts string ends inside a number")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE counts string has an invalid character {chr(s[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise ValueError("RLE counts string decodes to a negative run length")
        runs.append(x)
    return runs


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO bbox ``[x, y, width, height]`` (pixel corners) of a mask; zeros when it is empty."""
    m = _as_mask(mask)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cols = np.flatnonzero(m.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[list[float]]:
    """COCO polygons of a mask: one flat ``[x1, y1, x2, y2, ...]`` list per 8-connected component,
    holes joined by zero-width cuts (see the module docstring).

    Arguments:
        mask: H x W bool (or 0/1 integer) array.
        tolerance: 0 (default) keeps every corner where the boundary turns: exact under COCO's
            fill. A positive value simplifies each ring with ``cv2.approxPolyDP`` (maximum
            distance in pixels) for smaller files, at the cost of exactness (measure it with
            :func:`polygon_iou`); rings that collapse are dropped.

    Returns an empty list for an empty mask. Coordinates are pixel corners (floats holding
    integers when ``tolerance`` is 0).
    """
    m = _as_mask(mask)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(m.any(axis=0))
    # Trace inside the bounding box only (a small object of a large image is cheap); corners
    # are shifted back to image coordinates below.
    y0, x0 = int(rows[0]), int(cols[0])
    rings, owners = _trace_rings(m[y0 : rows[-1] + 1, x0 : cols[-1] + 1])
    rings = [ring + (x0, y0) for ring in rings]
    outer: dict[int, np.ndarray] = {}
    holes: dict[int, list[np.ndarray]] = {}
    for ring, owner in zip(rings, owners, strict=True):
        if tolerance > 0:
            ring = _simplify(ring, tolerance)
            if ring is None:
                continue
        if _signed_area(ring) < 0:  # see _trace_rings: outer rings are negative
            outer[owner] = ring
        else:
            holes.setdefault(owner, []).append(ring)
    polygons = []
    # Components in raster order of their first pixel (labels of connectedComponents).
    for owner in sorted(outer):
        ring = _join_holes(outer[owner], holes.get(owner, []))
        polygons.append([float(v) for v in ring.reshape(-1)])
    return polygons


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """H x W bool mask of COCO polygons, filled as COCO fills them (pycocotools ``frPyObjects``
    per polygon, union of the polygons).

    Raises ValueError for a polygon with fewer than 3 points or an odd number of coordinates.
    """
    if len(polygons) == 0:
        return np.zeros((height, width), bool)
    for i, p in enumerate(polygons):
        if not isinstance(p, (list, tuple)) or len(p) < 6 or len(p) % 2:
            n = len(p) if isinstance(p, (list, tuple)) else type(p).__name__
            raise ValueError(
                f"polygon {i} must be a flat list of at least 3 x, y pairs, got {n} values"
            )
        arr = np.asarray(p)
        if arr.dtype.kind not in "iuf":
            raise ValueError(f"polygon {i} has coordinates that are not numbers")
        if not np.isfinite(arr).all():
            raise ValueError(f"polygon {i} has coordinates that are not finite")
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def polygon_iou(mask: np.ndarray, tolerance: float = 0.0) -> float:
    """IoU between a mask and its polygons (:func:`mask_to_polygons`) filled back as COCO does:
    1.0 when the polygon encoding is lossless. An empty mask scores 1.0 (nothing to lose)."""
    m = _as_mask(mask)
    back = polygons_to_mask(mask_to_polygons(m, tolerance), *m.shape)
    union = np.logical_or(m, back).sum()
    return 1.0 if union == 0 else float(np.logical_and(m, back).sum() / union)


def _as_mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {m.shape}")
    if m.dtype != np.bool_:
        if not np.issubdtype(m.dtype, np.integer) or not np.isin(m, (0, 1)).all():
            raise ValueError(f"mask must be bool or 0/1 integers, got dtype {m.dtype}")
        m = m.astype(bool)
    return m


def _trace_rings(m: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """The closed boundaries of a mask along pixel edges.

    Every edge between an object pixel and a background pixel (or the image border) is directed
    so that the object lies on its left (image coordinates, y down); each ring follows these
    edges. Outer rings then run counter-clockwise on screen (negative shoelace area in y-down
    coordinates), holes clockwise. Where two object pixels touch only at a corner, the walk turns
    right, which keeps them in one ring: 8-connected foreground.

    Returns the rings (K x 2 int arrays of the corners where the ring turns) and, per ring, the
    label of the 8-connected component it bounds.
    """
    h, w = m.shape
    p = np.pad(m, 1)
    # Horizontal edges at y = r (between rows r-1 and r), x from c to c+1, r in 0..h, c in 0..w-1.
    below, above = p[1:, 1:-1], p[:-1, 1:-1]
    # Vertical edges at x = c (between columns c-1 and c), y from r to r+1.
    right, left = p[1:-1, 1:], p[1:-1, :-1]
    # (edge exists, start corner offset (dx, dy) from (c, r), direction of travel)
    kinds = (
        (below & ~above, 1, 0, 2),  # object below: travel west, from (c+1, r)
        (above & ~below, 0, 0, 0),  # object above: travel east, from (c, r)
        (right & ~left, 0, 0, 1),  # object right: travel south, from (c, r)
        (left & ~right, 0, 1, 3),  # object left: travel north, from (c, r+1)
    )
    xs, ys, ds = [], [], []
    for edges, dx, dy, direction in kinds:
        r, c = np.nonzero(edges)
        xs.append(c + dx)
        ys.append(r + dy)
        ds.append(np.full(r.size, direction))
    x0, y0, d = (np.concatenate(a).astype(np.int64) for a in (xs, ys, ds))
    n = x0.size
    # Edges keyed by (start corner, direction), sorted, so that the edge leaving a corner in a
    # direction is found by binary search (memory grows with the boundary, not the image).
    key = (y0 * (w + 1) + x0) * 4 + d
    order = np.argsort(key)
    sorted_key = key[order]
    end = (y0 + _DY[d]) * (w + 1) + (x0 + _DX[d])
    nxt = np.full(n, -1, dtype=np.int64)
    for turn in (3, 0, 1):  # later assignments win: right turn > straight > left turn
        want = end * 4 + (d + turn) % 4
        pos = np.minimum(np.searchsorted(sorted_key, want), n - 1)
        found = sorted_key[pos] == want
        nxt = np.where(found, order[pos], nxt)
    if (nxt < 0).any():  # cannot happen for a closed boundary; a wrong polygon is worse
        raise RuntimeError("pixel-edge boundary is not closed (a bug in mask_to_polygons)")
    # Follow the successor permutation into cycles.
    rings = []
    owners_px = []
    succ = nxt.tolist()  # plain lists: the walk below is a Python loop over every edge
    seen = bytearray(n)
    for e0 in range(n):
        if seen[e0]:
            continue
        cycle = []
        e = e0
        while not seen[e]:
            seen[e] = 1
            cycle.append(e)
            e = succ[e]
        idx = np.asarray(cycle)
        turns = d[idx] != d[np.roll(idx, 1)]  # keep corners where the direction changes
        keep = idx[turns]
        rings.append(np.stack([x0[keep], y0[keep]], axis=1))
        owners_px.append(_left_pixel(x0[e0], y0[e0], d[e0]))
    _, labels = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
    owners = [int(labels[rr, cc]) for rr, cc in owners_px]
    return rings, owners


def _left_pixel(x: int, y: int, d: int) -> tuple[int, int]:
    """(row, col) of the object pixel on the left of the edge from corner (x, y) in direction d."""
    return {0: (y - 1, x), 1: (y, x), 2: (y, x - 1), 3: (y - 1, x - 1)}[int(d)]


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return float((x * np.roll(y, -1) - np.roll(x, -1) * y).sum() / 2)


def _simplify(ring: np.ndarray, tolerance: float) -> np.ndarray | None:
    approx = cv2.approxPolyDP(ring.astype(np.float32).reshape(-1, 1, 2), tolerance, True)
    approx = approx.reshape(-1, 2)
    if len(approx) < 3 or _signed_area(approx) == 0:
        return None
    return approx


def _join_holes(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """One ring of an outer ring and its holes: each hole is entered by a zero-width cut from
    the outer vertex nearest to the hole's first vertex, walked around and left by the same cut."""
    if not holes:
        return outer
    by_y = np.argsort(outer[:, 1], kind="stable")
    ys = outer[by_y, 1]
    inserts: dict[int, list[np.ndarray]] = {}
    for hole in holes:
        inserts.setdefault(_nearest(outer, by_y, ys, hole[0]), []).append(hole)
    parts = []
    start = 0
    for i in sorted(inserts):
        parts.append(outer[start : i + 1])
        v = outer[i : i + 1]
        for hole in inserts[i]:
            # v -> hole[0] -> ... -> hole[-1] -> hole[0] -> v, then on along the outer ring
            parts.extend([hole, hole[:1], v])
        start = i + 1
    parts.append(outer[start:])
    return np.concatenate(parts)


def _nearest(ring: np.ndarray, by_y: np.ndarray, ys: np.ndarray, p: np.ndarray) -> int:
    """Index of the vertex of ``ring`` nearest to ``p``, searching a band of rows around p that
    widens until the nearest vertex in it is provably the nearest of all (distance <= band)."""
    r = 8
    while True:
        lo, hi = np.searchsorted(ys, p[1] - r), np.searchsorted(ys, p[1] + r, side="right")
        if hi > lo:
            cand = by_y[lo:hi]
            dist = ((ring[cand] - p) ** 2).sum(axis=1)
            k = int(np.argmin(dist))
            if dist[k] <= r * r or (lo == 0 and hi == len(ys)):
                return int(cand[k])
        r *= 2
