"""Interactive prediction: one image embedding, many objects, each with its own click history.

``Predictor`` mirrors segment-anything's ``SamPredictor`` (set_image / predict) and adds
per-object sessions that follow the FocSAM protocol (docs/focsam.md §1.2): single-mask output,
the previous low-res logits as mask prompt, and the focus refiner run once per object.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path
from .interaction import Interaction, InteractionState
from .memory import retain_freed_memory
from .models.sam import Sam
from .modes import MODES
from .precision import DTYPES, check_precision, lowered, require_precision
from .preprocess import Frame, image_to_tensor, load_image
from .weights.digest import state_digest


class Predictor:
    """Computes an image's embedding once and answers prompts on it.

    Arguments:
        model: a SAM or FocSAM model (``steadysam.build_model``).
        preprocess: ``sam`` or ``focsam``; defaults to the convention the model was trained with.
        cache_size: image embeddings kept in memory (LRU), keyed by image content.
        cache_dir: optional folder for an on-disk embedding cache, keyed by image content,
            model weights, preprocessing and precision.
        precision: ``fp32`` (default) or ``bf16``: image encoder, focus refiner and mask
            decoder in bfloat16 (bf16 copies made here; the prompt encoder stays fp32, logits
            and masks come back in fp32). bf16 needs bf16 hardware (``steadysam.precision``):
            a ``PrecisionError`` naming the missing CPU flag otherwise.

    Creating a Predictor tunes glibc's malloc for this workload (``steadysam.memory``;
    ``STEADYSAM_MALLOC_TUNING=0`` turns that off).
    """

    def __init__(
        self,
        model: Sam,
        preprocess: str | None = None,
        cache_size: int = 4,
        cache_dir: str | os.PathLike | None = None,
        precision: str = "fp32",
    ) -> None:
        retain_freed_memory()
        self.precision = check_precision(precision)
        require_precision(self.precision, model.device)
        self.model = model.eval()
        # What runs: the model itself (fp32) or its bf16 twin (steadysam.precision.lowered).
        self.net = lowered(self.model, self.precision)
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
        # HQ-SAM: the encoder's early feature (1 x h x w x D) and, once a prompt needed it,
        # the image's global-local fusion (the same for every prompt on the image).
        self.early_features: torch.Tensor | None = None
        self._hq_features: torch.Tensor | None = None
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
        """Compute (or fetch from cache) the embedding of ``image``, RGB unless image_format
        is "BGR".

        ``SamPredictor`` takes an H x W x 3 uint8 array; so does this, and also (converted by
        ``steadysam.preprocess.load_image``, as for every other entry point, sessions
        included): a path, a PIL image, a torch tensor, any strides, H x W or H x W x 1
        grayscale (repeated to RGB), H x W x 4 (alpha dropped), bool, uint16, other integers
        and floats in [0, 1] or [0, 255]. Anything else (other shapes or channel counts, an
        empty image, NaN / inf, complex or object dtypes, other types) raises
        ``steadysam.datafiles.ImageError`` (a ValueError) naming the shape, dtype or type."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', not {image_format!r}")
        rgb = load_image(image)
        if image_format == "BGR":
            rgb = np.ascontiguousarray(rgb[:, :, ::-1])
        frame = Frame.create(self.convention, rgb.shape[:2], self.model.image_size)
        key = self._image_key(rgb)
        self.last_encoder_seconds = 0.0
        hq = self.model.is_hq
        features = self._memory.get(key)
        if features is None and self.cache_dir is not None:
            features = self._load_cached(key)
        if features is None:
            start = time.perf_counter()
            x = image_to_tensor(
                rgb, frame, self.model.pixel_mean, self.model.pixel_std, self.device
            )
            with torch.inference_mode():
                # HQ-SAM: (embedding, early ViT feature), cached together.
                features = self.net.encode(x, early_features=True) if hq else self.net.encode(x)
            self.last_encoder_seconds = time.perf_counter() - start
            if self.cache_dir is not None:
                self._store_cached(key, features)
        self._memory[key] = features
        self._memory.move_to_end(key)
        while len(self._memory) > max(self.cache_size, 1):
            self._memory.popitem(last=False)
        features, early = features if hq else (features, None)
        self.features, self.frame, self.is_image_set = features, frame, True
        self.early_features, self._hq_features = early, None

    def set_embedding(
        self,
        features: torch.Tensor,
        original_size: tuple[int, int],
        early_features: torch.Tensor | None = None,
    ) -> None:
        """Use a precomputed 1 x C x h x w embedding (as ``get_image_embedding`` returns; a
        tensor or array of finite floats, C x h x w fixed by the model) of an image of size
        (H, W) (two positive integers). HQ-SAM models also need the image's early features,
        1 x h x w x D (the ``early_features`` attribute after ``set_image``); other models take
        none. Raises TypeError / ValueError otherwise, leaving the current image set."""
        early = _early_features(early_features, self.model)
        if isinstance(features, np.ndarray):
            features = torch.from_numpy(features)
        if not isinstance(features, torch.Tensor):
            raise TypeError(
                f"features must be a torch.Tensor embedding, got {type(features).__name__}"
            )
        if not features.is_floating_point():
            raise TypeError(f"features must be a floating-point tensor, got {features.dtype}")
        pe = self.model.prompt_encoder
        expected = (1, pe.embed_dim, *pe.image_embedding_size)
        if tuple(features.shape) != expected:
            raise ValueError(
                f"features must have shape {expected} for this model (1 x C x h x w, as "
                f"get_image_embedding() returns), got {tuple(features.shape)}"
            )
        if not bool(torch.isfinite(features).all()):
            raise ValueError("features contains NaN or infinite values")
        size = tuple(original_size) if isinstance(original_size, (tuple, list)) else None
        if size is None or len(size) != 2 or not all(_is_int(v) and v > 0 for v in size):
            raise ValueError(
                f"original_size must be (H, W), two positive integers, got {original_size!r}"
            )
        size = (int(size[0]), int(size[1]))
        fp32 = self.precision == "fp32"
        dtype = pe.no_mask_embed.weight.dtype if fp32 else DTYPES[self.precision]
        # Channels-last, like encode()'s output: the decoder then reads it without a copy.
        self.features = features.to(self.device, dtype).contiguous(
            memory_format=torch.channels_last
        )
        self.early_features = None if early is None else early.to(self.device, dtype)
        self._hq_features = None
        self.frame = Frame.create(self.convention, size, self.model.image_size)
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
        hq_token_only: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As ``SamPredictor.predict``: prompts in original pixels -> (masks C x H x W,
        IoU predictions C, low-res logits C x h x w).

        HQ-SAM models answer as segment-anything-hq's ``SamPredictor.predict``: one mask
        (C = 1; with multimask_output, SAM's best token by predicted IoU), and
        ``hq_token_only`` True returns the HQ mask alone, False SAM's plus HQ's logits; None
        (the default) takes the model's ``config.hq.token_only`` (False, the official default,
        for the registered HQ-SAM models). Other models take only None.

        Arguments (checked before the model runs; numpy arrays, nested lists or CPU/GPU
        tensors of numbers; a wrong type raises TypeError, a wrong shape or value ValueError
        naming the argument):
            point_coords: N x 2 (x, y) in original pixels, each with 0 <= x < W and
                0 <= y < H (a point exactly on the right / bottom border is outside, as in
                ``ObjectSession.click``). Needs point_labels; N may be 0.
            point_labels: length-N labels: 1 foreground, 0 background, -1 a padding point
                that the model ignores (SAM's ``not_a_point`` embedding; the coordinates of a
                padding point must be finite but may lie anywhere). SAM's labels 2 and 3 are
                its internal box-corner embeddings, not part of ``SamPredictor``'s documented
                contract (official code silently gives such a point no label embedding):
                they are rejected, pass a box as ``box``. Integral floats and bools are read
                as integers.
            box: (x0, y0, x1, y1), shape 4 or 1 x 4, in original pixels. As SAM's own boxes
                (torchvision ``masks_to_boxes``, ``steadysam.prompts.mask_box``) the corners
                are pixel indices, so x0 == x1 (a one-pixel-wide object) is allowed; an
                inverted box (x1 < x0 or y1 < y0) is not, nor one entirely outside the image.
            mask_input: 1 x h x w float low-res logits, h x w the model's mask-input size
                (256 x 256 for SAM at 1024 px), typically ``low_res[best][None]`` of a
                previous call.
        """
        frame = self._require_frame()
        size = frame.original_size
        coords = labels = box_t = mask_t = None
        pc, pl = _checked_points(point_coords, point_labels, size, batched=False)
        if pl is not None:
            coords = torch.as_tensor(
                frame.coords_to_model(pc), dtype=torch.float, device=self.device
            )[None]
            labels = torch.as_tensor(pl, dtype=torch.int, device=self.device)[None]
        if box is not None:
            b = _numbers(box, "box")
            if b.shape not in ((4,), (1, 4)):
                raise ValueError(
                    f"box must be one (x0, y0, x1, y1) box of shape 4 or 1 x 4, got shape {b.shape}"
                )
            b = b.reshape(1, 4)
            _check_boxes(b, size, lambda i: "box", inclusive=True)
            box_t = torch.as_tensor(frame.boxes_to_model(b), dtype=torch.float, device=self.device)
        if mask_input is not None:
            m = _mask_logits(mask_input, "mask_input", (1, *self._mask_size))
            mask_t = torch.as_tensor(m, dtype=torch.float, device=self.device)[None]
        masks, iou, low_res = self._decode(
            coords, labels, box_t, mask_t, multimask_output, return_logits, hq_token_only
        )
        return masks[0].cpu().numpy(), iou[0].cpu().numpy(), low_res[0].cpu().numpy()

    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``SamPredictor.predict_torch``: prompts already in the model frame, batched
        (``hq_token_only`` as in ``predict``).

        Tensors (TypeError otherwise): point_coords B x N x 2 and point_labels B x N (labels
        and coordinate limits as in ``predict``, the limits being the image's extent in the
        model frame), boxes B x 4 or B x 1 x 4, mask_input B x 1 x h x w float logits; every
        given B must agree. They are moved to the model's device (labels as int, the rest as
        float, as ``predict`` does)."""
        frame = self._require_frame()
        # The image's extent in the model input frame (the rest of the S x S input is padding).
        ext_w, ext_h = frame.coords_to_model(np.array(frame.original_size[::-1], np.float64))
        size = (float(ext_h), float(ext_w))
        where = "the image's extent in the model input frame"
        batch: dict[str, int] = {}
        for name, t in (
            ("point_coords", point_coords),
            ("point_labels", point_labels),
            ("boxes", boxes),
            ("mask_input", mask_input),
        ):
            if t is not None and not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        pc, pl = _checked_points(point_coords, point_labels, size, batched=True, where=where)
        if pl is not None:
            batch["point_coords"] = pc.shape[0]
        if boxes is not None:
            b = _numbers(boxes, "boxes")
            if not (b.ndim in (2, 3) and b.shape[-1] == 4 and (b.ndim == 2 or b.shape[1] == 1)):
                raise ValueError(
                    f"boxes must be a B x 4 (or B x 1 x 4) tensor, got shape {b.shape}"
                )
            _check_boxes(b.reshape(-1, 4), size, lambda i: f"boxes[{i}]", True, where=where)
            batch["boxes"] = b.shape[0]
        if mask_input is not None:
            m = _mask_logits(mask_input, "mask_input", (None, 1, *self._mask_size))
            batch["mask_input"] = m.shape[0]
        if len(set(batch.values())) > 1:
            given = ", ".join(f"{k} {v}" for k, v in batch.items())
            raise ValueError(f"the prompts' batch sizes differ ({given}): they must be equal")

        def dev(t: torch.Tensor | None, dtype: torch.dtype = torch.float) -> torch.Tensor | None:
            return None if t is None else t.to(self.device, dtype)

        return self._decode(
            dev(point_coords),
            dev(point_labels, torch.int),
            dev(boxes),
            dev(mask_input),
            multimask_output,
            return_logits,
            hq_token_only,
        )

    @torch.inference_mode()
    def _decode(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        return_logits: bool,
        hq_token_only: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """predict_torch on prompts already checked."""
        features = self._require_features()
        points = (point_coords, point_labels) if point_coords is not None else None
        hq = self._hq_inputs(hq_token_only)
        low_res, iou = self.net.decode(
            features, points, boxes, mask_input, multimask_output, **hq
        )
        masks = self.frame.logits_to_original(low_res)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    # -- internals ------------------------------------------------------------------------
    def _hq_inputs(self, hq_token_only: bool | None = None) -> dict[str, Any]:
        """``decode``'s HQ-SAM arguments for the current image ({} for other models): the
        image's global-local fusion, computed on first use and kept until the image changes."""
        if not self.model.is_hq:
            if hq_token_only is not None:
                raise ValueError(
                    f"hq_token_only={hq_token_only!r}: this model is not HQ-SAM (leave it None)"
                )
            return {}
        if hq_token_only is not None and not isinstance(hq_token_only, (bool, np.bool_)):
            raise TypeError(f"hq_token_only must be True, False or None, not {hq_token_only!r}")
        if self._hq_features is None:
            if self.early_features is None:
                raise RuntimeError("HQ-SAM needs the image's early features: set_image first")
            with torch.inference_mode():
                self._hq_features = self.net.hq_features(
                    self._require_features(), self.early_features
                )
        out: dict[str, Any] = {"hq_features": self._hq_features}
        if hq_token_only is not None:
            out["hq_token_only"] = bool(hq_token_only)
        return out

    @property
    def _mask_size(self) -> tuple[int, int]:
        """(h, w) of the low-res mask prompt the model takes (4x its embedding grid)."""
        return tuple(self.model.prompt_encoder.mask_input_size)

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
        if self.precision != "fp32":  # fp32 keys as before: existing caches stay valid
            h.update(f"|{self.precision}".encode())
        h.update(rgb.tobytes())
        return h.hexdigest()

    def _disk_key(self, key: str) -> str:
        if self._model_key is None:
            # The disk cache outlives the process, so it must also know which weights made it.
            self._model_key = state_digest(self.model.image_encoder, length=16)
        # HQ-SAM shares SAM's encoder weights but caches (embedding, early feature) pairs.
        return f"{self._model_key}-{key[:32]}" + ("-early" if self.model.is_hq else "")

    def _load_cached(self, key: str) -> torch.Tensor | tuple[torch.Tensor, ...] | None:
        path = self.cache_dir / f"{self._disk_key(key)}.pt"
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location=self.device, weights_only=True)
        except Exception:
            return None  # a damaged cache entry is recomputed and overwritten
        if self.model.is_hq:
            pair = isinstance(entry, (tuple, list)) and len(entry) == 2
            ok = pair and all(isinstance(t, torch.Tensor) for t in entry)
            return tuple(entry) if ok else None
        return entry if isinstance(entry, torch.Tensor) else None

    def _store_cached(self, key: str, features: torch.Tensor | tuple[torch.Tensor, ...]) -> None:
        cpu = tuple(t.cpu() for t in features) if isinstance(features, tuple) else features.cpu()
        with atomic_path(self.cache_dir / f"{self._disk_key(key)}.pt") as tmp:
            torch.save(cpu, tmp)


def _early_features(value: Any, model: Sam) -> torch.Tensor | None:
    """set_embedding's ``early_features``, checked against the model (None for non-HQ)."""
    if not model.is_hq:
        if value is not None:
            raise ValueError("early_features: this model is not HQ-SAM (it takes none)")
        return None
    if value is None:
        raise ValueError(
            "this HQ-SAM model also needs early_features: the 1 x h x w x D encoder tokens "
            "after its first global block (Predictor.early_features after set_image)"
        )
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        what = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"early_features must be a floating-point tensor, got {what}")
    enc = model.image_encoder
    grid = model.prompt_encoder.image_embedding_size
    expected = (1, *grid, enc.patch_embed.proj.out_channels)
    if tuple(value.shape) != expected:
        raise ValueError(
            f"early_features must have shape {expected} for this model (1 x h x w x D), got "
            f"{tuple(value.shape)}"
        )
    if not bool(torch.isfinite(value).all()):
        raise ValueError("early_features contains NaN or infinite values")
    return value


# -- prompt checks: one place for the session API, predict and predict_torch ---------------
_LABELS = "1 (foreground), 0 (background) or -1 (padding point, ignored)"


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _numbers(value: Any, name: str, bool_ok: bool = False) -> np.ndarray:
    """``value`` (array, nested sequence, tensor) as a float64 array; TypeError when it does
    not hold real numbers (bools only where bool_ok), ValueError when it is ragged."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        value = value.to("cpu", torch.float64) if value.is_floating_point() else value.cpu()
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name} is not a regular array of numbers: {e}") from None
    if arr.dtype.kind not in ("biuf" if bool_ok else "iuf"):
        raise TypeError(
            f"{name} must hold real numbers, got dtype {arr.dtype}"
            + (f" ({type(value).__name__})" if not isinstance(value, np.ndarray) else "")
        )
    return arr.astype(np.float64)


def _point_labels(
    labels: Any, coords: Any, name: str, coords_name: str, ndim: int
) -> np.ndarray | None:
    """The checked labels as floats (None when neither points nor labels are given)."""
    if coords is None and labels is None:
        return None
    if coords is None:
        raise ValueError(f"{name} given without {coords_name}: pass both or neither")
    if labels is None:
        raise ValueError(f"{name} must be supplied with {coords_name}: one label per point")
    arr = _numbers(labels, name, bool_ok=True)
    if arr.ndim != ndim:
        want = "a length-N array" if ndim == 1 else "a B x N tensor"
        raise ValueError(f"{name} must be {want} of labels, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isin(arr.reshape(-1), (-1.0, 0.0, 1.0)))
    if bad.size:
        i = np.unravel_index(int(bad[0]), arr.shape)
        where = ", ".join(str(int(k)) for k in i)
        extra = " (2 and 3 are SAM's internal box corners: pass a box as box)"
        raise ValueError(
            f"{name}[{where}] = {arr[i]:g} is not a point label: use {_LABELS}"
            + (extra if arr[i] in (2.0, 3.0) else "")
        )
    return arr


def _checked_points(
    point_coords: Any,
    point_labels: Any,
    size: tuple[float, float],
    batched: bool,
    where: str = "the image",
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(coords, labels) after every check, or (None, None) without points: N x 2 and N, or
    (``batched``) B x N x 2 and B x N."""
    pl = _point_labels(
        point_labels, point_coords, "point_labels", "point_coords", ndim=2 if batched else 1
    )
    if pl is None:
        return None, None
    pc = _numbers(point_coords, "point_coords")
    if pc.ndim != pl.ndim + 1 or pc.shape[-1] != 2:
        want = "a B x N x 2 tensor of (x, y)" if batched else "an N x 2 array of (x, y) pixels"
        raise ValueError(f"point_coords must be {want}, got shape {pc.shape}")
    _same_length(pc.shape[:-1], pl.shape, "point_coords", "point_labels")
    n = pc.shape[-2]
    name = (lambda i: f"point_coords[{i // n}, {i % n}] =") if batched else None
    _check_points(
        pc.reshape(-1, 2),
        size,
        name or (lambda i: f"point_coords[{i}] ="),
        ignore=pl.reshape(-1) == -1,
        where=where,
    )
    return pc, pl


def _same_length(coords: tuple[int, ...], labels: tuple[int, ...], cn: str, ln: str) -> None:
    if tuple(coords) != tuple(labels):
        c, lab = " x ".join(map(str, coords)), " x ".join(map(str, labels))
        raise ValueError(f"{cn} has {c} points but {ln} has {lab} labels: need one per point")


def _check_points(
    xy: np.ndarray,
    size: tuple[float, float],
    name: Callable[[int], str],
    ignore: np.ndarray | None = None,
    where: str = "the image",
) -> None:
    """N x 2 (x, y) must be finite and in [0, W) x [0, H) (those flagged in ignore: finite)."""
    H, W = size
    x, y = xy[:, 0], xy[:, 1]
    finite = np.isfinite(xy).all(axis=1)
    ok = finite & (x >= 0) & (x < W) & (y >= 0) & (y < H)
    if ignore is not None:
        ok |= finite & ignore
    bad = np.flatnonzero(~ok)
    if bad.size:
        i = int(bad[0])
        point = f"{name(i)} ({x[i]}, {y[i]})"
        if not finite[i]:
            raise ValueError(f"{point} is not finite: x and y must be finite numbers")
        raise ValueError(
            f"{point} is outside {where} (width {W}, height {H}): "
            f"need 0 <= x < {W} and 0 <= y < {H}"
        )


def _check_boxes(
    boxes: np.ndarray,
    size: tuple[float, float],
    name: Callable[[int], str],
    inclusive: bool,
    where: str = "the image",
) -> None:
    """K x 4 (x0, y0, x1, y1) must be finite, not inverted and overlap [0, W) x [0, H).
    inclusive: corners are pixel indices (SAM's convention), so x0 == x1 is a one-pixel-wide
    box; otherwise (the session API) x1 > x0 and y1 > y0."""
    H, W = size
    x0, y0, x1, y1 = boxes.T
    finite = np.isfinite(boxes).all(axis=1)
    inverted = (x1 < x0) | (y1 < y0)
    empty = np.zeros_like(finite) if inclusive else (x1 == x0) | (y1 == y0)
    far = (x1 < 0) | (y1 < 0) if inclusive else (x1 <= 0) | (y1 <= 0)
    outside = far | (x0 >= W) | (y0 >= H)
    bad = np.flatnonzero(~finite | inverted | empty | outside)
    if bad.size:
        i = int(bad[0])
        b = f"({x0[i]}, {y0[i]}, {x1[i]}, {y1[i]})"
        need = "x0 <= x1 and y0 <= y1" if inclusive else "x1 > x0 and y1 > y0"
        if not finite[i]:
            raise ValueError(f"{name(i)} {b} is not finite: corners must be finite numbers")
        if inverted[i] or empty[i]:
            kind = "inverted" if inverted[i] else "empty"
            raise ValueError(f"{kind} {name(i)} {b}: need {need} (order x0, y0, x1, y1)")
        raise ValueError(f"{name(i)} {b} lies outside {where} (width {W}, height {H})")


def _mask_logits(value: Any, name: str, shape: tuple[int | None, ...]) -> Any:
    """A float mask-logit array / tensor of the given shape (None: any size), all finite."""
    is_tensor = isinstance(value, torch.Tensor)
    if not is_tensor:
        try:
            value = np.asarray(value)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{name} is not a regular array of numbers: {e}") from None
    if not (value.is_floating_point() if is_tensor else value.dtype.kind == "f"):
        raise TypeError(
            f"{name} must hold float mask logits (e.g. low-res logits a previous predict "
            f"returned), got dtype {value.dtype}"
        )
    got = tuple(value.shape)
    if len(got) != len(shape) or any(e not in (None, g) for g, e in zip(got, shape, strict=False)):
        want = " x ".join("B" if e is None else str(e) for e in shape)
        raise ValueError(f"{name} must have shape {want} for this model, got {got}")
    if not bool((torch.isfinite if is_tensor else np.isfinite)(value).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return value


class ObjectSession(Interaction):
    """One object's interaction on the predictor's current image (steadysam.interaction:
    ``click``, ``set_box``, ``undo``, ``reset`` and the state)."""

    def __init__(self, predictor: Predictor, mode: str, refine_at: int | None) -> None:
        super().__init__()
        self.predictor = predictor
        self.model = predictor.net  # what runs: the model or its bf16 twin
        self.frame = predictor._require_frame()
        self.features = predictor._require_features()
        # HQ-SAM: this image's global-local fusion (computed once per image, shared by its
        # objects; the model's hq_token_only default applies); {} for other models. Decoder
        # work: its time counts for the object that computed it.
        start = time.perf_counter()
        self._hq = predictor._hq_inputs()
        self.mode = mode
        self.refine_at = refine_at if self.model.refiner is not None else None
        self.timings = {"decoder": time.perf_counter() - start if self._hq else 0.0, "refiner": 0.0}

    def _check_click(self, x: float, y: float) -> None:
        _check_points(_numbers([[x, y]], "click"), self.frame.original_size, lambda i: "click")

    def _check_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        b = _numbers([[x0, y0, x1, y1]], "box")
        _check_boxes(b, self.frame.original_size, lambda i: "box", inclusive=False)

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
            **self._hq,
        )
        if multimask:
            best = int(iou[0].argmax())
            low_res = low_res[:, best : best + 1]
        mask = (frame.logits_to_original(low_res)[0, 0] > model.mask_threshold).cpu().numpy()
        self.timings["decoder"] += time.perf_counter() - start
        self._history.append(InteractionState(clicks, box, low_res, embedding, mask))
        return mask
