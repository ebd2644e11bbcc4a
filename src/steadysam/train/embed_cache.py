"""Embedding cache (docs/focsam.md §7.2): frozen-encoder embeddings of every training image,
computed once.

Layout of a cache folder::

    meta.json        what made it: cache format version, encoder digest (state_digest of the
                     image encoder), image size, convention, image decoder, dtype, colour
                     augmentation + seed (a mismatch on reuse is an error)
    index.json       meta + the list of complete entries (written when a run finishes)
    embeds/<key>.npy C x h x w float16/float32, one per image, written atomically

Writing is sharded over torchrun ranks (rank r takes images r, r + W, ...) and resumable: entries
already on disk are skipped, so an interrupted ``steadysam embed`` just runs again. What caching
freezes: the colour augmentation is drawn ONCE per image, at caching time (seeded by the image's
key), so training sees one colour variant per image instead of a fresh draw per visit (the
official behaviour). Geometry is unaffected: there is no geometric augmentation in the recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path
from ..datafiles import IMAGE_DECODER, first_line
from ..models.sam import Sam
from ..weights.digest import state_digest
from .data import ImageSpec, TrainSamples, cache_key
from .sources import Source

# 2: the encoder fingerprint is steadysam.weights.digest.state_digest (1: a hash of its own)
VERSION = 2


class CacheError(ValueError):
    """A cache that is missing, incomplete or made for another model / setting."""


def cache_meta(model: Sam, dtype: str, color_aug: bool, seed: int) -> dict[str, Any]:
    return {
        "version": VERSION,
        "encoder": state_digest(model.image_encoder),
        "image_size": model.image_size,
        "preprocess": model.config.preprocess,
        # Caches written before images were read by steadysam.datafiles (OpenCV) have none:
        # their embeddings come from Pillow's decode, which differs on some files.
        "decoder": IMAGE_DECODER,
        "dtype": dtype,
        "color_aug": color_aug,
        "seed": seed,
    }


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=1)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


class EmbeddingCache:
    """Read side: ``load(key)`` -> C x h x w float32 tensor. Checks the folder's meta against
    the model it will be used with and that every needed key is present."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        index = self.folder / "index.json"
        if not index.is_file():
            raise CacheError(
                f"embedding cache {str(self.folder)!r} has no index.json: create it with "
                "`steadysam embed CONFIG.yaml --out FOLDER` (an interrupted run resumes)"
            )
        data = json.loads(index.read_text())
        self.meta = data["meta"]
        self.keys = set(data["keys"])

    def check(self, model: Sam, keys: list[str]) -> None:
        if self.meta.get("version") != VERSION:
            raise CacheError(
                f"cache {str(self.folder)!r} has format version {self.meta.get('version')!r}, "
                f"this steadysam reads version {VERSION}; re-create it (steadysam embed into a "
                "new --out folder, or delete this one first)"
            )
        want = {"image_size": model.image_size, "preprocess": model.config.preprocess}
        for k, v in want.items():
            if self.meta.get(k) != v:
                raise CacheError(f"cache {str(self.folder)!r}: {k} {self.meta.get(k)!r} != {v!r}")
        if self.meta.get("decoder") != IMAGE_DECODER:
            made = self.meta.get("decoder") or "Pillow (an older steadysam)"
            raise CacheError(
                f"cache {str(self.folder)!r} holds embeddings of images decoded by {made}; this "
                "steadysam decodes them with OpenCV, as evaluation does, and some files decode "
                "differently (EXIF-rotated, CMYK, 16-bit): re-create it "
                "(steadysam embed into a new --out folder, or delete this one first)"
            )
        if self.meta.get("encoder") != state_digest(model.image_encoder):
            raise CacheError(
                f"cache {str(self.folder)!r} was computed with a different image encoder; "
                "re-create it for this model (steadysam embed)"
            )
        missing = [k for k in keys if k not in self.keys]
        if missing:
            raise CacheError(
                f"cache {str(self.folder)!r} lacks {len(missing)} of {len(keys)} images "
                f"(e.g. {missing[0]!r}); run steadysam embed again to complete it"
            )

    def load(self, key: str) -> torch.Tensor:
        path = self.folder / "embeds" / f"{key}.npy"
        try:
            return torch.from_numpy(np.load(path)).float()
        except (OSError, ValueError, EOFError) as e:
            reason = first_line(e)
            raise CacheError(
                f"embedding cache entry {str(path)!r} cannot be read ({reason}); delete it and "
                "run steadysam embed again to re-create it"
            ) from e


def unique_images(sources: list[Source]) -> list[tuple[str, int, int]]:
    """Sorted (key, source, image) triples, one per distinct image file."""
    seen: dict[str, tuple[int, int]] = {}
    for d, s in enumerate(sources):
        for i, p in enumerate(s.paths):
            seen.setdefault(cache_key(p), (d, i))
    return [(k, d, i) for k, (d, i) in sorted(seen.items())]


def _key_seed(key: str) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest()[:15], 16)


@torch.no_grad()
def build_cache(
    model: Sam,
    sources: list[Source],
    out: str | os.PathLike,
    *,
    fp16: bool = False,
    color_aug: bool = True,
    seed: int = 42,
    batch_size: int = 8,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    barrier=None,
) -> dict[str, int]:
    """Write (this rank's share of) the cache; returns counts {written, skipped, total}.

    Rank 0 writes index.json after ``barrier()`` (all ranks done) lists every entry on disk."""
    from tqdm import tqdm

    out = Path(out)
    (out / "embeds").mkdir(parents=True, exist_ok=True)
    meta = cache_meta(model, "float16" if fp16 else "float32", color_aug, seed)
    meta_path = out / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        diff = sorted(k for k in meta if old.get(k) != meta[k])
        if old.get("version") != VERSION:
            raise CacheError(
                f"cache {str(out)!r} has format version {old.get('version')!r}, this steadysam "
                f"writes version {VERSION}; use another --out or delete it"
            )
        if diff:
            raise CacheError(
                f"cache {str(out)!r} was made with other settings ({', '.join(diff)}); "
                "use another --out or delete it"
            )
    elif rank == 0:
        _write_json(meta_path, meta)
    spec = ImageSpec(
        model.image_size, model.config.preprocess, model.config.pixel_mean, model.config.pixel_std
    )
    samples = TrainSamples(sources, [1.0] * len(sources), spec, seed, color_aug=False)
    items = unique_images(sources)
    mine = items[rank::world]
    todo = [it for it in mine if not (out / "embeds" / f"{it[0]}.npy").is_file()]
    dtype = np.float16 if fp16 else np.float32
    bar = tqdm(total=len(todo), desc=f"embed[{rank}]", disable=not progress, unit="img")
    model.eval()
    for b in range(0, len(todo), batch_size):
        chunk = todo[b : b + batch_size]
        images = []
        for key, d, i in chunk:
            rng = np.random.default_rng([seed, 13, _key_seed(key)]) if color_aug else None
            images.append(samples.load_image(d, i, rng))
        emb = model.encode(torch.stack(images).to(model.device)).float().cpu().numpy()
        for (key, _, _), e in zip(chunk, emb, strict=True):
            _save_npy(out / "embeds" / f"{key}.npy", e.astype(dtype))
        bar.update(len(chunk))
    bar.close()
    if barrier is not None:
        barrier()
    if rank == 0:
        done = [k for k, _, _ in items if (out / "embeds" / f"{k}.npy").is_file()]
        _write_json(out / "index.json", {"meta": meta, "keys": done})
    return {"written": len(todo), "skipped": len(mine) - len(todo), "total": len(items)}


@torch.no_grad()
def fp16_loss_effect(
    model: Sam,
    samples: TrainSamples,
    indices: list[int],
    rounds: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Same batch, same simulated prompts: NFL with fp32 embeddings vs fp16-rounded ones.

    The clicks are simulated once on the fp32 embeddings (``rounds`` rounds); both losses use
    those prompts. Returns loss_fp32, loss_fp16, abs_diff, rel_diff, emb_max_abs_err,
    emb_rel_rms_err."""
    from .data import collate
    from .losses import normalized_focal_loss
    from .simulate import simulate

    batch = collate([samples[i] for i in indices])
    model.eval()
    dev = model.device
    e32 = model.encode(batch["image"].to(dev)) if "image" in batch else batch["embed"].to(dev)
    e16 = e32.half().float()
    gts = list(batch["gt"].numpy())
    sim = simulate(model, e32, gts, rounds, np.random.default_rng(seed))
    gt = batch["gt"].to(dev)
    pts = (sim.coords, sim.labels)
    loss = {}
    for name, e in (("fp32", e32), ("fp16", e16)):
        logits = model.decode(e, points=pts, mask_input=sim.prev_logits)[0]
        loss[name] = float(normalized_focal_loss(logits, gt))
    err = (e16 - e32).abs()
    return {
        "loss_fp32": loss["fp32"],
        "loss_fp16": loss["fp16"],
        "abs_diff": abs(loss["fp16"] - loss["fp32"]),
        "rel_diff": abs(loss["fp16"] - loss["fp32"]) / max(abs(loss["fp32"]), 1e-12),
        "emb_max_abs_err": float(err.max()),
        "emb_rel_rms_err": float(err.pow(2).mean().sqrt() / e32.pow(2).mean().sqrt()),
    }
