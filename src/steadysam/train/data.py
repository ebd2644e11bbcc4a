"""The training data stream: weighted mixture of sources, per-visit object sampling, colour
augmentation, resize + pad into the model frame, and a batch sampler sharded over ranks.

Every sample is a pure function of (seed, global sample index): the mixture order is a seeded
permutation per virtual epoch, and each sample's object choice and colour draw come from
``default_rng([seed, index])``. A resumed run therefore sees exactly the batches it would have
seen, with no loader state to save, whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..datafiles import DatasetError, ImageError, first_line, image_size, read_image
from ..preprocess import Frame, image_to_tensor
from .config import DataConfig
from .sources import Source, build_source
from .transforms import color_augment_rgb, mask_to_frame

__all__ = [
    "DatasetError",
    "Mixture",
    "TrainSamples",
    "IterationBatches",
    "collate",
    "build_sources",
    "cache_key",
]


def build_sources(cfg: DataConfig) -> list[Source]:
    return [build_source(d) for d in cfg.datasets]


def cache_key(path: Path) -> str:
    """Embedding-cache key of an image file: readable stem + hash of the resolved path (COCO and
    LVIS name the same train2017 files, so they share entries, as in the official cache)."""
    import hashlib

    full = str(Path(path).resolve())
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(path).stem)[:40]
    return f"{stem}-{hashlib.sha1(full.encode()).hexdigest()[:12]}"


class Mixture:
    """Weighted concatenation of sources walked in a seeded random order.

    A virtual epoch holds ``round(weight * len(source))`` slots per source (at least one);
    slot ``j`` of a source maps to its image ``j % len``. Global index ``n`` falls in epoch
    ``n // L`` at position ``n % L`` of that epoch's permutation (an infinite shuffled sampler
    that needs no state)."""

    def __init__(self, sizes: list[int], weights: list[float], seed: int) -> None:
        self.sizes = sizes
        slots = [max(1, int(round(w * s))) for w, s in zip(weights, sizes, strict=True)]
        self.offsets = np.cumsum([0] + slots)
        self.length = int(self.offsets[-1])
        self.seed = seed
        self._epoch = -1
        self._perm: np.ndarray | None = None

    def locate(self, n: int) -> tuple[int, int]:
        """Global sample index -> (source index, image index)."""
        epoch, pos = divmod(n, self.length)
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, 7, epoch]).permutation(self.length)
            self._epoch = epoch
        slot = int(self._perm[pos])
        d = int(np.searchsorted(self.offsets, slot, side="right") - 1)
        return d, (slot - int(self.offsets[d])) % self.sizes[d]


@dataclass
class ImageSpec:
    """What the model needs to know about the image pipeline."""

    image_size: int
    preprocess: str  # 'sam' | 'focsam' (steadysam.preprocess conventions)
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]


class TrainSamples(Dataset):
    """Index ``n`` -> one training sample (a dict):

    ``image``  3 x S x S float32 normalised model input (absent with a cache),
    ``embed``  C x h x w float32 cached embedding (only with a cache),
    ``gt``     S x S bool object mask in the model frame,
    ``size``   (h, w) of the image inside the frame (the rest is padding),
    ``source`` int source index, ``key`` cache key of the image.
    """

    def __init__(
        self,
        sources: list[Source],
        weights: list[float],
        spec: ImageSpec,
        seed: int,
        color_aug: bool = True,
        cache=None,
    ) -> None:
        self.sources = sources
        self.mixture = Mixture([len(s) for s in sources], weights, seed)
        self.spec = spec
        self.seed = seed
        self.color_aug = color_aug
        self.cache = cache  # embed_cache.EmbeddingCache or None
        self.mean = torch.tensor(spec.pixel_mean)
        self.std = torch.tensor(spec.pixel_std)

    def __len__(self) -> int:  # one virtual epoch (the stream itself is unbounded)
        return self.mixture.length

    def load_image(self, d: int, i: int, rng: np.random.Generator | None) -> torch.Tensor:
        """Image ``i`` of source ``d`` -> 3 x S x S model input; colour-augmented with ``rng``."""
        return self._to_input(self._read_rgb(d, i), rng)

    def _read_rgb(self, d: int, i: int) -> np.ndarray:
        src = self.sources[d]
        try:
            return read_image(src.paths[i])  # the decoder evaluation uses (steadysam.datafiles)
        except Exception as e:  # ImageError names the file already; say which dataset
            raise DatasetError(f"dataset {src.name!r}: {first_line(e)}") from e

    def _to_input(self, rgb: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
        if rng is not None:
            rgb = color_augment_rgb(rgb, rng)
        frame = Frame.create(self.spec.preprocess, rgb.shape[:2], self.spec.image_size)
        return image_to_tensor(rgb, frame, self.mean, self.std)[0]

    def _sample_object(self, d: int, i: int, rng: np.random.Generator) -> np.ndarray:
        src = self.sources[d]
        try:
            return src.sample_object(i, rng)
        except DatasetError:
            raise
        except Exception as e:  # PIL / pycocotools fail in many ways on a damaged file
            why = e.reason if isinstance(e, ImageError) else first_line(e)  # the label names it
            raise DatasetError(
                f"dataset {src.name!r}: cannot read the {src.mask_label(i)} of image "
                f"{str(src.paths[i])!r} ({why})"
            ) from e

    def _image_size(self, d: int, i: int) -> tuple[int, int]:
        """(H, W) of an image file as it decodes, from its header (images are not decoded with
        a cache)."""
        path = self.sources[d].paths[i]
        try:
            return image_size(path)
        except Exception as e:
            raise DatasetError(
                f"dataset {self.sources[d].name!r}: cannot read image {str(path)!r} "
                f"({first_line(e)})"
            ) from e

    def __getitem__(self, n: int) -> dict:
        rng = np.random.default_rng([self.seed, 11, n])
        empty: list[str] = []
        for attempt in range(100):
            d, i = self.mixture.locate(n + attempt * self.mixture.length // 7 + attempt)
            obj = self._sample_object(d, i, rng)
            if obj.any():
                break
            empty.append(self.sources[d].mask_label(i))
        else:
            shown = ", ".join(dict.fromkeys(empty[:3]))
            raise DatasetError(
                f"100 draws near sample {n} found only empty objects (e.g. {shown}): are the "
                "masks empty (all zero)?"
            )
        src = self.sources[d]
        rgb = None if self.cache is not None else self._read_rgb(d, i)
        size = self._image_size(d, i) if rgb is None else rgb.shape[:2]
        if tuple(size) != obj.shape:
            raise DatasetError(
                f"dataset {src.name!r}: the {src.mask_label(i)} is {_hw(obj.shape)} but its "
                f"image {str(src.paths[i])!r} is {_hw(size)} (H x W); masks must have their "
                "image's size (fix the pair, then run the same command again: it resumes "
                "from the last checkpoint)"
            )
        frame = Frame.create(self.spec.preprocess, obj.shape, self.spec.image_size)
        out = {
            "gt": mask_to_frame(obj, frame),
            "size": frame.input_size,
            "source": d,
            "key": cache_key(src.paths[i]),
        }
        if self.cache is not None:
            out["embed"] = self.cache.load(out["key"])
        else:
            image = self._to_input(rgb, rng if self.color_aug else None)
            if tuple(image.shape[-2:]) != (self.spec.image_size,) * 2:
                raise DatasetError(f"{src.paths[i]}: unexpected model input {image.shape}")
            out["image"] = image
        return out


def _hw(shape) -> str:
    return f"{shape[0]} x {shape[1]}"


def collate(samples: list[dict]) -> dict:
    """List of samples -> batch: ``image``/``embed`` B x ..., ``gt`` B x S x S bool,
    ``size`` B x 2 int64 (h, w), ``source`` B int64, ``key`` list."""
    batch = {
        "gt": torch.stack([s["gt"] for s in samples]),
        "size": torch.tensor([s["size"] for s in samples]),
        "source": torch.tensor([s["source"] for s in samples]),
        "key": [s["key"] for s in samples],
    }
    for k in ("image", "embed"):
        if k in samples[0]:
            batch[k] = torch.stack([s[k] for s in samples])
    return batch


class IterationBatches(Sampler):
    """Batches of global sample indices for iterations ``start..iters-1``: iteration ``t``
    covers indices ``t * B .. t * B + B - 1`` of the global batch B, and rank ``r`` takes its
    contiguous share (DistributedSampler-like sharding, no padding: B divides by the world)."""

    def __init__(self, start: int, iters: int, batch_size: int, rank: int, world: int) -> None:
        if batch_size % world:
            raise ValueError(
                f"data.batch_size {batch_size} is not divisible by the {world} processes"
            )
        self.start, self.iters = start, iters
        self.batch, self.local = batch_size, batch_size // world
        self.rank = rank

    def __len__(self) -> int:
        return max(0, self.iters - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for t in range(self.start, self.iters):
            base = t * self.batch + self.rank * self.local
            yield list(range(base, base + self.local))
