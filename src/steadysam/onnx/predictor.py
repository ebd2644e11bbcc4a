"""Interactive prediction with onnxruntime and numpy only: ``steadysam.Predictor`` /
``ObjectSession`` on an exported folder (``steadysam export-onnx``), importable without torch.

Same protocol as the PyTorch predictor (docs/focsam.md §1.2): per-object sessions with the
previous low-res logits as mask prompt, single-mask output (``focsam``) or the best-IoU mask
of the multimask outputs (``sam-best``), FocSAM's refiner run once per object at its 2nd
click on the coarse pass of that click, and ``undo`` restoring the unrefined embedding.

HQ-SAM exports (an ``hq_fusion`` graph in the folder): ``set_image`` also runs the fusion graph
on the encoder's (embedding, early feature) once per image and feeds its output to every
decoder run on that image; ``hq_token_only`` defaults to the model's (the sidecar's
``hq.token_only``), as in ``steadysam.Predictor``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..datafiles import to_rgb
from ..interaction import Interaction, InteractionState
from ..modes import MODES
from .frame import NpFrame, focus_box, focus_grid
from .sidecar import OnnxFolderError, read_folder

DECODERS = ("fp32", "int8")


class OnnxPredictor:
    """Computes an image's embedding once with the exported encoder and answers prompts.

    Arguments:
        folder: a ``steadysam export-onnx`` output (checked: manifest, sidecars, graphs).
        decoder: ``fp32`` (``decoder.onnx``) or ``int8`` (``decoder_int8.onnx``, exported with
            ``--int8``).
        preprocess: ``sam`` or ``focsam``; default the convention in the sidecar.
        threads: onnxruntime intra-op threads (None: onnxruntime's default, all cores).
        cache_size: image embeddings kept in memory (LRU), keyed by image content.
        providers: onnxruntime execution providers (default CPU).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        decoder: str = "fp32",
        preprocess: str | None = None,
        threads: int | None = None,
        cache_size: int = 4,
        providers: list[str] | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # an optional dependency
            raise ImportError(
                "OnnxPredictor needs onnxruntime: pip install 'steadysam[onnx]'"
            ) from e
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ValueError(f"threads must be a positive integer or None, not {threads!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, not {decoder!r}")
        self.folder = Path(folder)
        self.manifest, self.sidecars = read_folder(self.folder)
        graph = "decoder" if decoder == "fp32" else "decoder_int8"
        if graph not in self.sidecars:
            raise OnnxFolderError(
                f"{self.folder}: no int8 decoder in this export (export again with --int8)"
            )
        pre = self.sidecars["encoder"]["preprocessing"]
        self.convention = preprocess or pre["convention"]
        self.image_size = int(pre["image_size"])
        NpFrame.create(self.convention, (1, 1), self.image_size)  # validates the name early
        self.pixel_mean = np.asarray(pre["pixel_mean"], np.float32)
        self.pixel_std = np.asarray(pre["pixel_std"], np.float32)
        self.mask_threshold = float(self.sidecars["decoder"]["mask_threshold"])
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = providers or ["CPUExecutionProvider"]
        self._sessions = {
            name: self._session(ort, name, options, providers)
            for name in ("encoder", "hq_fusion", graph, "refiner")
            if name in self.sidecars
        }
        self._encoder = self._sessions["encoder"]
        self._decoder = self._sessions[graph]
        self._refiner = self._sessions.get("refiner")
        # HQ-SAM: the fusion graph and the model's hq_token_only default.
        self._hq_fusion = self._sessions.get("hq_fusion")
        hq = self.sidecars["decoder"].get("hq")
        if (self._hq_fusion is None) != (hq is None):
            raise OnnxFolderError(
                f"{self.folder}: the decoder sidecar's 'hq' entry and the hq_fusion graph "
                "must come together (files of different exports mixed?)"
            )
        self.hq_token_only = None if hq is None else bool(hq["token_only"])
        mask_spec = self.sidecars["decoder"]["inputs"][3]["shape"]
        self.mask_input_size = (int(mask_spec[2]), int(mask_spec[3]))
        emb_spec = self.sidecars["encoder"]["outputs"][0]["shape"]
        self.embedding_shape = tuple(int(v) for v in emb_spec)
        self.cache_size = cache_size
        # key -> (embedding, HQ-SAM fusion or None)
        self._memory: OrderedDict[str, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self.last_encoder_seconds = 0.0
        self.reset_image()

    def _session(self, ort: Any, name: str, options: Any, providers: list[str]) -> Any:
        sidecar = self.sidecars[name]
        path = self.folder / sidecar["file"]
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise OnnxFolderError(f"{path}: onnxruntime cannot load graph {name!r}: {e}") from e
        for kind, got in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
            names = [v.name for v in got]
            want = [s["name"] for s in sidecar[kind]]
            if names != want:
                raise OnnxFolderError(
                    f"{path}: graph {kind} {names} do not match its sidecar's {want}"
                )
        return session

    # -- image -----------------------------------------------------------------------------
    def reset_image(self) -> None:
        self.is_image_set = False
        self.features: np.ndarray | None = None
        self.hq_features: np.ndarray | None = None  # HQ-SAM: the image's fusion
        self.frame: NpFrame | None = None

    @property
    def original_size(self) -> tuple[int, int]:
        return self._require_frame().original_size

    @property
    def input_size(self) -> tuple[int, int]:
        return self._require_frame().input_size

    def set_image(self, image: Any, image_format: str = "RGB") -> None:
        """Compute (or fetch from the cache) the embedding of ``image``: a path (decoded by
        OpenCV as everywhere in steadysam), a PIL image or an H x W [x 1|3|4] array (RGB
        unless image_format is "BGR"); ``ImageError`` otherwise."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', not {image_format!r}")
        rgb = to_rgb(image)
        if image_format == "BGR":
            rgb = np.ascontiguousarray(rgb[:, :, ::-1])
        frame = NpFrame.create(self.convention, rgb.shape[:2], self.image_size)
        h = hashlib.sha256(f"{rgb.shape}|{self.convention}".encode())
        h.update(rgb.tobytes())
        key = h.hexdigest()
        self.last_encoder_seconds = 0.0
        cached = self._memory.get(key)
        if cached is None:
            start = time.perf_counter()
            x = frame.image_to_input(rgb, self.pixel_mean, self.pixel_std)
            outs = self._encoder.run(None, {"image": x})
            fusion = None
            if self._hq_fusion is not None:  # once per image, as Predictor
                feeds = {"image_embeddings": outs[0], "early_features": outs[1]}
                fusion = self._hq_fusion.run(None, feeds)[0]
            cached = (outs[0], fusion)
            self.last_encoder_seconds = time.perf_counter() - start
        self._memory[key] = cached
        self._memory.move_to_end(key)
        while len(self._memory) > max(self.cache_size, 1):
            self._memory.popitem(last=False)
        self.features, self.hq_features = cached
        self.frame, self.is_image_set = frame, True

    def get_image_embedding(self) -> np.ndarray:
        """The current image's 1 x C x h x w embedding."""
        return self._require_features()

    # -- sessions and SamPredictor-style prediction ------------------------------------------
    def new_object(self, mode: str = "focsam", refine_at: int | None = 1) -> OnnxObjectSession:
        """Start a new object on the current image (``Predictor.new_object``)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        return OnnxObjectSession(self, mode, refine_at)

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As ``SamPredictor.predict``: points N x 2 (x, y) with labels N (1, 0, -1), a box
        (x0, y0, x1, y1), all in original pixels, a 1 x h x w low-res mask prompt -> (masks
        C x H x W, IoU predictions C, low-res logits C x h x w). At least a point or a box.

        HQ-SAM exports answer as ``Predictor.predict`` on HQ-SAM: one mask (C = 1; with
        multimask_output, SAM's best token by predicted IoU), ``hq_token_only`` True the HQ
        mask alone, False SAM's plus HQ's logits, None the model's default. Other exports take
        only None."""
        if hq_token_only is not None:
            if self._hq_fusion is None:
                raise ValueError(
                    f"hq_token_only={hq_token_only!r}: this model is not HQ-SAM (leave it None)"
                )
            if not isinstance(hq_token_only, (bool, np.bool_)):
                raise TypeError(f"hq_token_only must be True, False or None, not {hq_token_only!r}")
        frame = self._require_frame()
        clicks: list[tuple[float, float, float]] = []
        if (point_coords is None) != (point_labels is None):
            raise ValueError("pass point_coords and point_labels together (one label per point)")
        if point_coords is not None:
            pc = np.asarray(point_coords, dtype=np.float64)
            pl = np.asarray(point_labels, dtype=np.float64)
            if pc.ndim != 2 or pc.shape[1] != 2 or pl.shape != (pc.shape[0],):
                raise ValueError(
                    f"point_coords must be N x 2 and point_labels N, got shapes {pc.shape} "
                    f"and {pl.shape}"
                )
            bad = ~np.isin(pl, (-1.0, 0.0, 1.0))
            if bad.any():
                raise ValueError(f"point_labels[{int(np.flatnonzero(bad)[0])}] must be 1, 0 or -1")
            for (x, y), lab in zip(pc, pl, strict=True):
                if lab != -1:
                    _check_point(x, y, frame.original_size, "point_coords")
                elif not (np.isfinite(x) and np.isfinite(y)):
                    raise ValueError("point_coords of a padding point must be finite")
                clicks.append((float(x), float(y), float(lab)))
        b = None
        if box is not None:
            b = np.asarray(box, dtype=np.float64).reshape(-1)
            if b.shape != (4,):
                raise ValueError(f"box must be (x0, y0, x1, y1), got shape {np.shape(box)}")
            _check_box(b, frame.original_size, inclusive=True)
        if not clicks and b is None:
            raise ValueError("give at least one point or a box")
        mask = None
        if mask_input is not None:
            mask = np.asarray(mask_input, dtype=np.float32)
            if mask.shape != (1, *self.mask_input_size) or not np.isfinite(mask).all():
                raise ValueError(
                    f"mask_input must be finite 1 x {self.mask_input_size[0]} x "
                    f"{self.mask_input_size[1]} logits, got shape {mask.shape}"
                )
            mask = mask[None]
        low, iou, _ = self.decode(self._require_features(), clicks, b, mask, hq_token_only)
        sel = slice(1, None) if multimask_output else slice(0, 1)
        low, iou = low[0, sel], iou[0, sel]
        masks = np.stack([frame.logits_to_original(m) for m in low])
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou, low

    # -- the graphs ----------------------------------------------------------------------------
    def decode(
        self,
        embeddings: np.ndarray,
        clicks: list[tuple[float, float, float]],
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        hq_token_only: bool | None = None,
        hq_features: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The decoder graph on clicks (x, y, label) and a box in original pixels, laid out as
        ``Sam.decode`` lays out prompts -> (low-res logits 1 x (K+1) x h x w, IoUs 1 x (K+1),
        mask tokens 1 x (K+1) x C) of every mask token.

        HQ-SAM: (low-res logits 1 x 2 x h x w, IoUs 1 x 2, None): index 0 the single-mask
        answer, 1 the multimask one, with ``hq_features`` (None: the current image's fusion)
        and ``hq_token_only`` (None: the model's default)."""
        frame = self._require_frame()
        coords = [frame.coords_to_model(np.array(c[:2])) for c in clicks]
        labels = [c[2] for c in clicks]
        if box is None:
            coords.append(np.zeros(2))  # the padding point segment-anything appends
            labels.append(-1.0)
        else:
            coords.extend(frame.boxes_to_model(np.asarray(box)).reshape(2, 2))
            labels.extend((2.0, 3.0))
        has = mask_input is not None
        feeds = {
            "image_embeddings": embeddings,
            "point_coords": np.asarray(coords, np.float32)[None],
            "point_labels": np.asarray(labels, np.float32)[None],
            "mask_input": mask_input
            if has
            else np.zeros((1, 1, *self.mask_input_size), np.float32),
            "has_mask_input": np.array([1.0 if has else 0.0], np.float32),
        }
        if self._hq_fusion is None:
            return tuple(self._decoder.run(None, feeds))
        if hq_features is None:
            self._require_frame()
            hq_features = self.hq_features
        token_only = self.hq_token_only if hq_token_only is None else hq_token_only
        feeds["hq_features"] = hq_features
        feeds["hq_token_only"] = np.array([1.0 if token_only else 0.0], np.float32)
        low, iou = self._decoder.run(None, feeds)
        return low, iou, None

    def refine(
        self, embeddings: np.ndarray, coarse_logits: np.ndarray, query_token: np.ndarray
    ) -> np.ndarray:
        """``Sam.refine``: the focus box of the coarse 1 x 1 x h x w logits (numpy), then the
        refiner graph -> the refined 1 x C x h x w embedding."""
        if self._refiner is None:
            raise RuntimeError("this export has no focus refiner (the model is plain SAM)")
        focus = self.sidecars["refiner"]["focus"]
        box = focus_box(coarse_logits[0, 0], int(focus["input_size"]), focus["expand_ratio"])
        grid = focus_grid(box, int(focus["input_size"]), int(focus["grid_size"][0]))
        feeds = {
            "image_embeddings": embeddings,
            "focus_grid": grid,
            "query_token": np.ascontiguousarray(query_token, np.float32),
        }
        return self._refiner.run(None, feeds)[0]

    @property
    def has_refiner(self) -> bool:
        return self._refiner is not None

    def _require_frame(self) -> NpFrame:
        if self.frame is None:
            raise RuntimeError("no image is set: call set_image(image) first")
        return self.frame

    def _require_features(self) -> np.ndarray:
        self._require_frame()
        assert self.features is not None
        return self.features


def _check_point(x: float, y: float, size: tuple[int, int], name: str) -> None:
    H, W = size
    if not (np.isfinite(x) and np.isfinite(y)):
        raise ValueError(f"{name} ({x}, {y}) is not finite")
    if not (0 <= x < W and 0 <= y < H):
        raise ValueError(
            f"{name} ({x:g}, {y:g}) is outside the {W} x {H} image (0 <= x < {W}, 0 <= y < {H})"
        )


def _check_box(b: np.ndarray, size: tuple[int, int], inclusive: bool) -> None:
    H, W = size
    x0, y0, x1, y1 = (float(v) for v in b)
    if not np.isfinite(b).all():
        raise ValueError(f"box {tuple(b)} is not finite")
    empty = (x1 < x0 or y1 < y0) if inclusive else (x1 <= x0 or y1 <= y0)
    if empty:
        raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or inverted")
    if x1 < 0 or y1 < 0 or x0 >= W or y0 >= H:
        raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {W} x {H} image")


class OnnxObjectSession(Interaction):
    """One object's interaction (``steadysam.ObjectSession``): ``click`` / ``set_box`` return
    the H x W bool mask, ``undo`` restores the previous state exactly."""

    def __init__(self, predictor: OnnxPredictor, mode: str, refine_at: int | None) -> None:
        super().__init__()
        self.predictor = predictor
        self.frame = predictor._require_frame()
        self.features = predictor._require_features()
        self.hq_features = predictor.hq_features  # HQ-SAM: this image's fusion (else None)
        self.mode = mode
        self.refine_at = refine_at if predictor.has_refiner else None
        self.timings = {"decoder": 0.0, "refiner": 0.0}

    def _check_click(self, x: float, y: float) -> None:
        _check_point(x, y, self.frame.original_size, "click")

    def _check_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        b = np.array([x0, y0, x1, y1], dtype=np.float64)
        _check_box(b, self.frame.original_size, inclusive=False)

    def _predict(
        self, clicks: tuple[tuple[float, float, bool], ...], box: tuple[float, ...] | None
    ) -> np.ndarray:
        p, prev = self.predictor, self._state
        points = [(x, y, 1.0 if pos else 0.0) for x, y, pos in clicks]
        b = None if box is None else np.asarray(box)
        embedding = prev.embedding
        start = time.perf_counter()
        if embedding is None and self.refine_at is not None and len(clicks) == self.refine_at + 1:
            coarse, _, tokens = p.decode(self.features, points, b, prev.logits)
            assert tokens is not None  # a refiner export (not HQ-SAM) has mask tokens
            embedding = p.refine(self.features, coarse[:, :1], tokens[:, :1])
            self.timings["refiner"] += time.perf_counter() - start
            start = time.perf_counter()
        low, iou, _ = p.decode(
            self.features if embedding is None else embedding,
            points,
            b,
            prev.logits,
            hq_features=self.hq_features,
        )
        if self.mode == "sam-best":
            best = 1 + int(np.argmax(iou[0, 1:]))
            low_res = low[:, best : best + 1]
        else:
            low_res = low[:, :1]
        low_res = np.ascontiguousarray(low_res)
        mask = p.frame.logits_to_original(low_res[0, 0]) > p.mask_threshold
        self.timings["decoder"] += time.perf_counter() - start
        self._history.append(InteractionState(clicks, box, low_res, embedding, mask))
        return mask
