"""Interactive prediction: one image embedding, many objects, each with its own click history.

``Predictor`` mirrors segment-anything's ``SamPredictor`` (set_image / predict) and adds
per-object sessions that follow the FocSAM protocol (spec §1.2): single-mask output, the previous
low-res logits as mask prompt, and the focus refiner run once per object.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path
from .memory import retain_freed_memory
from .models.sam import Sam
from .preprocess import Frame, image_to_tensor, load_image

MODES = ("focsam", "sam-best")


class Predictor:
    """Computes an image's embedding once and answers prompts on it.

    Arguments:
        model: a SAM or FocSAM model (``steadysam.build_model``).
        preprocess: ``sam`` or ``focsam``; defaults to the convention the model was trained with.
        cache_size: image embeddings kept in memory (LRU), keyed by image content.
        cache_dir: optional folder for an on-disk embedding cache, keyed by image content,
            model weights and preprocessing.

    Creating a Predictor tunes glibc's malloc for this workload (``steadysam.memory``;
    ``STEADYSAM_MALLOC_TUNING=0`` turns that off).
    """

    def __init__(
        self,
        model: Sam,
        preprocess: str | None = None,
        cache_size: int = 4,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        retain_freed_memory()
        self.model = model.eval()
        self.convention = preprocess or model.config.preprocess
        Frame.create(self.convention, (1, 1), model.image_size)  # validates the name early
        self.cache_size = cache_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._model_key: str | None = None
        self.last_encoder_seconds = 0.0
        self.reset_image()

    # -- image ---------------------------------------------------------------------------
    def reset_image(self) -> None:
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.frame: Frame | None = None

    @property
    def original_size(self) -> tuple[int, int]:
        return self._require_frame().original_size

    @property
    def input_size(self) -> tuple[int, int]:
        return self._require_frame().input_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    def set_image(self, image: Any, image_format: str = "RGB") -> None:
        """Compute (or fetch from cache) the embedding of ``image``: a path, a PIL image or an
        H x W [x 3|4] array (uint8, uint16 or float), RGB unless image_format is "BGR"."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', not {image_format!r}")
        rgb = load_image(image)
        if image_format == "BGR":
            rgb = np.ascontiguousarray(rgb[:, :, ::-1])
        frame = Frame.create(self.convention, rgb.shape[:2], self.model.image_size)
        key = self._image_key(rgb)
        self.last_encoder_seconds = 0.0
        features = self._memory.get(key)
        if features is None and self.cache_dir is not None:
            features = self._load_cached(key)
        if features is None:
            start = time.perf_counter()
            x = image_to_tensor(
                rgb, frame, self.model.pixel_mean, self.model.pixel_std, self.device
            )
            with torch.inference_mode():
                features = self.model.encode(x)
            self.last_encoder_seconds = time.perf_counter() - start
            if self.cache_dir is not None:
                self._store_cached(key, features)
        self._memory[key] = features
        self._memory.move_to_end(key)
        while len(self._memory) > max(self.cache_size, 1):
            self._memory.popitem(last=False)
        self.features, self.frame, self.is_image_set = features, frame, True

    def set_embedding(self, features: torch.Tensor, original_size: tuple[int, int]) -> None:
        """Use a precomputed 1 x C x h x w embedding of an image of size (H, W)."""
        # Channels-last, like encode()'s output: the decoder then reads it without a copy.
        self.features = features.to(self.device).contiguous(memory_format=torch.channels_last)
        self.frame = Frame.create(self.convention, tuple(original_size), self.model.image_size)
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        return self._require_features()

    # -- per-object sessions --------------------------------------------------------------
    def new_object(self, mode: str = "focsam", refine_at: int | None = 1) -> ObjectSession:
        """Start a new object on the current image. ``refine_at`` is the 0-based click index at
        which a FocSAM model runs its refiner (None: never)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        return ObjectSession(self, mode, refine_at)

    # -- SamPredictor-compatible API ----------------------------------------------------
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As ``SamPredictor.predict``: prompts in original pixels -> (masks C x H x W,
        IoU predictions C, low-res logits C x h x w)."""
        frame = self._require_frame()
        coords = labels = box_t = mask_t = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied with point_coords")
            pc = np.asarray(point_coords, dtype=np.float64).reshape(-1, 2)
            pl = np.asarray(point_labels).reshape(-1)
            if len(pc) != len(pl):
                raise ValueError(f"{len(pc)} point_coords but {len(pl)} point_labels")
            coords = torch.as_tensor(
                frame.coords_to_model(pc), dtype=torch.float, device=self.device
            )
            coords, labels = (
                coords[None],
                torch.as_tensor(pl, dtype=torch.int, device=self.device)[None],
            )
        if box is not None:
            b = np.asarray(box, dtype=np.float64).reshape(-1, 4)[:1]
            box_t = torch.as_tensor(frame.boxes_to_model(b), dtype=torch.float, device=self.device)
        if mask_input is not None:
            mask_t = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)
            mask_t = mask_t.reshape(1, 1, *mask_t.shape[-2:])
        masks, iou, low_res = self.predict_torch(
            coords, labels, box_t, mask_t, multimask_output, return_logits
        )
        return masks[0].cpu().numpy(), iou[0].cpu().numpy(), low_res[0].cpu().numpy()

    @torch.inference_mode()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``SamPredictor.predict_torch``: prompts already in the model frame, batched."""
        features = self._require_features()
        points = (point_coords, point_labels) if point_coords is not None else None
        low_res, iou = self.model.decode(features, points, boxes, mask_input, multimask_output)
        masks = self.frame.logits_to_original(low_res)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    # -- internals ------------------------------------------------------------------------
    def _require_frame(self) -> Frame:
        if self.frame is None:
            raise RuntimeError("no image is set: call set_image(image) first")
        return self.frame

    def _require_features(self) -> torch.Tensor:
        self._require_frame()
        assert self.features is not None
        return self.features

    def _image_key(self, rgb: np.ndarray) -> str:
        h = hashlib.sha256()
        h.update(f"{rgb.shape}|{self.convention}|{self.model.image_size}".encode())
        h.update(rgb.tobytes())
        return h.hexdigest()

    def _disk_key(self, key: str) -> str:
        if self._model_key is None:
            # The disk cache outlives the process, so it must also know which weights made it.
            h = hashlib.sha256()
            for name, t in self.model.image_encoder.state_dict().items():
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            self._model_key = h.hexdigest()[:16]
        return f"{self._model_key}-{key[:32]}"

    def _load_cached(self, key: str) -> torch.Tensor | None:
        path = self.cache_dir / f"{self._disk_key(key)}.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location=self.device, weights_only=True)
        except Exception:
            return None  # a damaged cache entry is recomputed and overwritten

    def _store_cached(self, key: str, features: torch.Tensor) -> None:
        with atomic_path(self.cache_dir / f"{self._disk_key(key)}.pt") as tmp:
            torch.save(features.cpu(), tmp)


@dataclass
class _State:
    clicks: tuple[tuple[float, float, bool], ...] = ()
    box: tuple[float, float, float, float] | None = None
    logits: torch.Tensor | None = None  # 1 x 1 x h x w low-res logits of the last prediction
    embedding: torch.Tensor | None = None  # refined embedding (FocSAM), None before the refiner
    mask: np.ndarray | None = None


class ObjectSession:
    """One object's interaction on the predictor's current image.

    ``click`` and ``set_box`` return the H x W boolean mask at original resolution; ``undo``
    restores the previous state exactly (including the unrefined embedding when it undoes the
    click that ran the refiner)."""

    def __init__(self, predictor: Predictor, mode: str, refine_at: int | None) -> None:
        self.predictor = predictor
        self.model = predictor.model
        self.frame = predictor._require_frame()
        self.features = predictor._require_features()
        self.mode = mode
        self.refine_at = refine_at if self.model.refiner is not None else None
        self.timings = {"decoder": 0.0, "refiner": 0.0}
        self._history: list[_State] = [_State()]

    @property
    def _state(self) -> _State:
        return self._history[-1]

    @property
    def clicks(self) -> list[tuple[float, float, bool]]:
        return list(self._state.clicks)

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        return self._state.box

    @property
    def logits(self) -> torch.Tensor | None:
        return self._state.logits

    @property
    def mask(self) -> np.ndarray | None:
        return self._state.mask

    @property
    def refined(self) -> bool:
        return self._state.embedding is not None

    def click(self, x: float, y: float, positive: bool = True) -> np.ndarray:
        """Add a click at (x, y) in original image pixels (column, row)."""
        H, W = self.frame.original_size
        if not (0 <= x < W and 0 <= y < H):
            raise ValueError(f"click ({x}, {y}) is outside the image (width {W}, height {H})")
        clicks = self._state.clicks + ((float(x), float(y), bool(positive)),)
        return self._predict(clicks, self._state.box)

    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Set (or replace) the object's box prompt, in original pixels (x0, y0, x1, y1)."""
        H, W = self.frame.original_size
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"empty box ({x0}, {y0}, {x1}, {y1}): need x1 > x0 and y1 > y0")
        if x1 <= 0 or y1 <= 0 or x0 >= W or y0 >= H:
            raise ValueError(f"box ({x0}, {y0}, {x1}, {y1}) lies outside the image ({W}x{H})")
        return self._predict(self._state.clicks, (float(x0), float(y0), float(x1), float(y1)))

    def undo(self) -> np.ndarray | None:
        """Remove the last interaction; returns the mask before it (None when back at start)."""
        if len(self._history) > 1:
            self._history.pop()
        return self._state.mask

    def reset(self) -> None:
        self._history = [_State()]

    @torch.inference_mode()
    def _predict(
        self, clicks: tuple[tuple[float, float, bool], ...], box: tuple[float, ...] | None
    ) -> np.ndarray:
        model, frame, prev = self.model, self.frame, self._state
        device = self.features.device
        points = None
        if clicks:
            xy = frame.coords_to_model(np.array([c[:2] for c in clicks], dtype=np.float64))
            coords = torch.as_tensor(xy, dtype=torch.float, device=device)[None]
            labels = torch.tensor([[int(c[2]) for c in clicks]], dtype=torch.int, device=device)
            points = (coords, labels)
        boxes = None
        if box is not None:
            b = frame.boxes_to_model(np.array(box, dtype=np.float64))
            boxes = torch.as_tensor(b, dtype=torch.float, device=device)[None]

        embedding = prev.embedding
        start = time.perf_counter()
        if embedding is None and self.refine_at is not None and len(clicks) == self.refine_at + 1:
            coarse, _, token = model.decode(
                self.features,
                points,
                boxes,
                prev.logits,
                multimask_output=False,
                return_tokens=True,
            )
            embedding = model.refine(self.features, coarse, token)
            self.timings["refiner"] += time.perf_counter() - start
            start = time.perf_counter()
        multimask = self.mode == "sam-best"
        low_res, iou = model.decode(
            self.features if embedding is None else embedding,
            points,
            boxes,
            prev.logits,
            multimask_output=multimask,
        )
        if multimask:
            best = int(iou[0].argmax())
            low_res = low_res[:, best : best + 1]
        mask = (frame.logits_to_original(low_res)[0, 0] > model.mask_threshold).cpu().numpy()
        self.timings["decoder"] += time.perf_counter() - start
        self._history.append(_State(clicks, box, low_res, embedding, mask))
        return mask
