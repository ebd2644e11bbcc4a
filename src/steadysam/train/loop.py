"""The training loop: prompts + loss in one module (DDP-wrapped under torchrun), AdamW with
warm-up + linear decay (or constant), tqdm / CSV / plot, atomic resumable checkpoints, final
export (+ the Stable-SAM plugin alone).

Determinism: the data stream and every random draw of an iteration (click counts, refine step,
expansion ratios, click positions, boxes, RTS prompts, loss points) are seeded by (seed,
iteration, rank), so a run killed at any point and resumed from its last checkpoint continues
exactly as if never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..datafiles import first_line
from ..distributed import Dist, init_distributed
from ..models.sam import Sam
from ..prompts import Prompt, rts_prompt
from ..weights.digest import state_digest
from .build import build_optimizer, build_scheduler, build_train_model
from .config import ConfigError, TrainConfig, dump_config, resume_differences, show_value
from .data import (
    DatasetError,
    ImageSpec,
    IterationBatches,
    Mixture,
    TrainSamples,
    build_sources,
    collate,
)
from .losses import mask_iou, normalized_focal_loss, point_loss, sampled_mask_loss
from .runlog import CsvLog, plot_losses
from .simulate import jittered_box, simulate, truncated_geometric
from .state import ResumeError, list_checkpoints, load_latest, save_state, set_rng_state


class TrainStep(nn.Module):
    """One training forward on a batch's embeddings (encoder with grad when trainable).

    Stages ``sam`` / ``refiner``: per-source click simulation (no_grad, eval), then the decoder
    (``sam``) or refiner + frozen decoder (``refiner``) with the simulated prompts -> NFL (+ PTL).
    Stage ``rts``: one Stable-SAM RTS prompt per sample, the decoder (single mask, no mask
    input) -> BCE + Dice on uncertainty-sampled points against the whole-object mask.

    forward(batch, rng, gen) -> dict of scalar tensors: ``loss`` (the total to minimise), its
    terms (``nfl``, ``ptl`` / ``bce``, ``dice``) and metrics ``iou`` (training prediction) /
    ``iou_coarse`` (stage 2).
    """

    def __init__(self, model: Sam, cfg: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.gammas = [(d.gamma, d.refine_gamma) for d in cfg.data.datasets]
        self.encoder_trainable = "image_encoder" in cfg.model.trainable

    def _ratios(self, gen: torch.Generator) -> tuple[float, float]:
        lo, hi = self.cfg.sim.expand_ratio
        r = torch.rand(2, generator=gen, dtype=torch.float64) * (hi - lo) + lo
        return float(r[0]), float(r[1])

    def forward(
        self, batch: dict[str, Any], rng: np.random.Generator, gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        m = self.model
        if "embed" in batch:
            emb = batch["embed"].to(m.device)
        else:
            with torch.set_grad_enabled(self.encoder_trainable and torch.is_grad_enabled()):
                emb = m.encode(batch["image"].to(m.device))
        if self.cfg.stage == "rts":
            return self._rts(batch, emb, rng, gen)
        return self._clicks(batch, emb, rng, gen)

    def _box_groups(
        self, idx: list[int], batch: dict[str, Any], rng: np.random.Generator
    ) -> list[tuple[list[int], torch.Tensor | None]]:
        """Split a source group into samples prompted by a jittered GT box first (probability
        ``sim.box_prob``, stage sam) and by a first click: [(indices, boxes or None)]."""
        p = self.cfg.sim.box_prob
        if p == 0 or self.cfg.stage != "sam":  # no draw: the stream stays as without boxes
            return [(idx, None)]
        use = rng.random(len(idx)) < p
        with_box = [i for i, u in zip(idx, use, strict=True) if u]
        boxes = [jittered_box(_valid(batch, i), rng, self.model.image_size) for i in with_box]
        groups = [(with_box, torch.tensor(boxes, device=self.model.device))] if with_box else []
        rest = [i for i, u in zip(idx, use, strict=True) if not u]
        return groups + ([(rest, None)] if rest else [])

    def _clicks(
        self,
        batch: dict[str, Any],
        emb: torch.Tensor,
        rng: np.random.Generator,
        gen: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        m, cfg = self.model, self.cfg
        gt = batch["gt"].to(m.device)
        gts_np = list(batch["gt"].cpu().numpy())
        refine = cfg.stage == "refiner"
        order, logits_all, coarse_all, coords_all, labels_all = [], [], [], [], []
        for src in sorted(set(batch["source"].tolist())):
            idx_src = [i for i, s in enumerate(batch["source"].tolist()) if s == src]
            gamma, refine_gamma = self.gammas[src]
            rounds = truncated_geometric(gamma, cfg.sim.max_rounds, rng)
            step = truncated_geometric(refine_gamma, rounds, rng) if refine else None
            for idx, boxes in self._box_groups(idx_src, batch, rng):
                e = emb[idx]
                sim = simulate(
                    m,
                    e.detach(),
                    [gts_np[i] for i in idx],
                    rounds,
                    rng,
                    refine_step=step,
                    expand_ratio=self._ratios(gen) if refine else (1.4, 1.4),
                    first_inner_k=cfg.sim.first_inner_k,
                    inner_k=cfg.sim.inner_k,
                    boxes=boxes,
                )
                if refine:  # new expansion draw for the pass with gradients
                    e = m.refine(e, sim.coarse_logits, sim.query_token, self._ratios(gen))
                    coarse_all.append(sim.coarse_logits)
                logits = m.decode(e, points=sim.points, boxes=boxes, mask_input=sim.prev_logits)
                logits_all.append(logits[0])
                order += idx
                coords_all.append(sim.coords)
                labels_all.append(sim.labels)
        gt = gt[order]
        logits = torch.cat(logits_all)
        lc = cfg.loss
        nfl = normalized_focal_loss(logits, gt, lc.nfl_alpha, lc.nfl_gamma, lc.eps)
        out = {"nfl": nfl, "iou": mask_iou(logits, gt)}
        total = lc.nfl_weight * nfl
        if lc.ptl_weight > 0:
            n = max(c.shape[1] for c in coords_all)
            pad = nn.functional.pad  # groups may differ in click count: pad with label -1
            coords = torch.cat([pad(c, (0, 0, 0, n - c.shape[1])) for c in coords_all])
            labels = torch.cat([pad(x, (0, n - x.shape[1]), value=-1) for x in labels_all])
            out["ptl"] = point_loss(logits, coords, labels, m.image_size)
            total = total + lc.ptl_weight * out["ptl"]
        if coarse_all:
            out["iou_coarse"] = mask_iou(torch.cat(coarse_all), gt)
        out["loss"] = total
        return out

    def _rts(
        self,
        batch: dict[str, Any],
        emb: torch.Tensor,
        rng: np.random.Generator,
        gen: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """Stable-SAM RTS: per sample a GT box, a noisy box or k random positive points drawn
        in the valid (unpadded) part of the frame; samples with the same kind of prompt
        (box, or the same k) are decoded together, so no padding point changes a prompt."""
        m, r = self.model, self.cfg.rts
        probs = tuple(p / sum(r.probs) for p in r.probs)  # relative weights in the config
        groups: dict[tuple[str, int], list[Prompt]] = {}
        members: dict[tuple[str, int], list[int]] = {}
        for i in range(len(batch["gt"])):
            p = rts_prompt(_valid(batch, i), rng, r.noise_range, r.k_range, probs)
            kind = ("box", 0) if p.box is not None else ("points", len(p.points))
            groups.setdefault(kind, []).append(p)
            members.setdefault(kind, []).append(i)
        order, logits_all = [], []
        for kind, prompts in groups.items():  # insertion order: reproducible
            idx = members[kind]
            logits_all.append(m.decode(emb[idx], **_prompt_tensors(prompts, m.device))[0])
            order += idx
        logits = torch.cat(logits_all)
        gt = batch["gt"].to(m.device)[order]
        h, w = logits.shape[-2:]
        n = rts_num_points(r.num_points, h, w)
        bce, dice = sampled_mask_loss(
            logits, gt, n, r.oversample_ratio, r.importance_sample_ratio, gen
        )
        total = r.bce_weight * bce + r.dice_weight * dice
        return {"loss": total, "bce": bce, "dice": dice, "iou": mask_iou(logits, gt)}


def rts_num_points(num_points: int, h: int, w: int) -> int:
    """Sampled points for h x w logits: ``num_points`` is set for 256 x 256 logits (1024 px
    input, HQ-SAM's 112 x 112) and scales with the logits' area."""
    return max(1, round(num_points * h * w / 256**2))


def _valid(batch: dict[str, Any], i: int) -> np.ndarray:
    """Sample i's mask cropped to the image inside the frame: prompts never land in padding.
    The crop starts at the frame's origin, so its coordinates are frame coordinates."""
    h, w = (int(v) for v in batch["size"][i])
    return batch["gt"][i, :h, :w].cpu().numpy()


def _prompt_tensors(prompts: list[Prompt], device: torch.device) -> dict[str, Any]:
    """``Sam.decode`` keyword arguments for prompts of one kind: all boxes, or all k points."""
    if prompts[0].box is not None:
        return {"boxes": torch.tensor([p.box for p in prompts], device=device)}
    coords = torch.tensor(np.stack([p.points for p in prompts]), dtype=torch.float32)
    labels = torch.tensor(np.stack([p.labels for p in prompts]), dtype=torch.long)
    return {"points": (coords.to(device), labels.to(device))}


def epoch_iters(epochs: float, samples_per_epoch: int, batch_size: int) -> int:
    """Iterations of ``epochs`` passes over the data stream at global batch ``batch_size``
    (the last, partial batch counts as one)."""
    return max(1, math.ceil(epochs * samples_per_epoch / batch_size - 1e-9))


def _iteration_rngs(seed: int, it: int, rank: int) -> tuple[np.random.Generator, torch.Generator]:
    rng = np.random.default_rng([seed, 3, it, rank])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, gen


def _loader(samples: TrainSamples, cfg: TrainConfig, start: int, dist: Dist):
    sampler = IterationBatches(start, cfg.iters, cfg.data.batch_size, dist.rank, dist.world)
    workers = cfg.data.num_workers
    return torch.utils.data.DataLoader(
        samples,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=dist.device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
    )


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # loader workers must not compete with the training threads


def _reduce_mean(values: dict[str, float], dist: Dist) -> dict[str, float]:
    if dist.world == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(t)
    return {k: float(v) / dist.world for k, v in zip(keys, t.tolist(), strict=True)}


def _quiet(_: str) -> None:
    pass


def _warn(text: str) -> None:
    print(text, file=sys.stderr)


def _batches(loader):
    """The loader's batches. A data error (DatasetError, CacheError) raised in a loader worker
    comes back from torch with the worker's whole traceback as its message; it is re-raised
    here as the same type with the original one-line message (a damaged or mismatched file
    names itself in one line). Other errors keep torch's message, traceback included."""
    from .embed_cache import CacheError

    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except BaseException as e:
            stop = getattr(it, "_shutdown_workers", None)  # the workers end now, not at exit
            if stop is not None:
                stop()
            short = _one_line(e) if isinstance(e, (DatasetError, CacheError)) else e
            if short is not e:
                raise short from None
            raise
        yield batch


def _one_line(e: Exception) -> Exception:
    """``e`` as torch re-raises it from a worker ("Caught X in DataLoader worker process 0.
    Original Traceback ...: X: message") -> the same type with the original message."""
    text = str(e).strip()
    if not (text.startswith("Caught ") and "DataLoader worker" in text):
        return e
    last = text.splitlines()[-1]
    try:
        return type(e)(last.partition(": ")[2] or last)
    except Exception:
        return e


def _reason(e: OSError) -> str:
    return (e.strerror or type(e).__name__).lower()


def prepare_out_dir(out: Path) -> None:
    """Create the run folder and check that files can be written in it; ConfigError naming
    ``run.out_dir`` and the reason otherwise (a parent that is a file, no permission)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"run.out_dir {str(out)!r} exists and is not a folder") from None
    except OSError as e:
        blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        why = f"{str(blocker)!r} is a file" if blocker is not None else _reason(e)
        raise ConfigError(f"run.out_dir {str(out)!r}: cannot create the folder ({why})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(
            f"run.out_dir {str(out)!r}: cannot write into the folder ({_reason(e)})"
        ) from None


def check_writable_file(key: str, value: str | None) -> None:
    """An output file the run writes at its end (run.export): checked when the run starts, so
    a bad path does not fail after hours of training. Creates nothing."""
    if not value:
        return
    path = Path(value)
    if path.is_dir():
        raise ConfigError(f"{key} {value!r} is a folder; give a file name (.safetensors)")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise ConfigError(f"{key} {value!r}: cannot create it ({str(parent)!r} is a file)")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{key} {value!r}: cannot write there (permission denied)")


def check_resume_config(
    out: Path, cfg: TrainConfig, saved: dict[str, Any] | None = None, where: Path | None = None
) -> None:
    """ConfigError when the run folder's saved config (config.yaml, or the checkpoint's copy)
    differs from ``cfg`` in a setting that changes results (config.RESUME_FREE_KEYS may
    change); each such setting is listed with its saved and new value."""
    import yaml

    source = where or out / "config.yaml"
    if saved is None:
        if not source.is_file():
            return
        try:
            saved = yaml.safe_load(source.read_text())
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            saved = None
        if not isinstance(saved, dict):
            raise ConfigError(
                f"{str(source)!r} cannot be read as a run config, so resuming this run cannot "
                "be checked; start over with --no-resume (deletes the checkpoints) or choose "
                "another run.out_dir"
            )
    diffs = resume_differences(saved, cfg)
    if not diffs:
        return
    listed = "; ".join(f"{k}: {show_value(a)} -> {show_value(b)}" for k, a, b in diffs)
    raise ConfigError(
        f"run.out_dir {str(out)!r} holds checkpoints of a run with other settings (saved in "
        f"{str(source)!r}), and resuming would mix the two: {listed}. To resume it, run with its "
        "saved settings; to start over in this folder, add --no-resume (deletes its "
        "checkpoints); or choose another run.out_dir"
    )


def train(cfg: TrainConfig, resume: bool = True) -> Path:
    """Run (or resume) a training run; returns the exported final ``.safetensors``.

    Writes into ``cfg.run.out_dir``: config.yaml, checkpoints/iter_<n>.pt, log.csv, loss.png,
    final.safetensors (+ a copy at ``cfg.run.export``); under torchrun also ranks.json (each
    rank's parameter digest, checked equal, and its first sample keys)."""
    threads = torch.get_num_threads()
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    try:
        return _train(cfg, resume)
    finally:
        torch.set_num_threads(threads)


def _check_sync(model: nn.Module, first_keys: list[str], out: Path, dist: Dist) -> None:
    """All ranks must end with identical weights (DDP keeps them in sync); written to
    ranks.json so the run records it."""
    mine = {"rank": dist.rank, "digest": state_digest(model), "first_keys": first_keys}
    gathered: list[Any] = [None] * dist.world
    torch.distributed.all_gather_object(gathered, mine)
    if dist.main:
        (out / "ranks.json").write_text(json.dumps(gathered, indent=1))
    if len({g["digest"] for g in gathered}) != 1:
        raise RuntimeError(f"parameters diverged across ranks: {gathered}")


def _train(cfg: TrainConfig, resume: bool) -> Path:
    from tqdm import tqdm

    from ..weights.files import save_checkpoint, save_plugin_checkpoint

    dist = init_distributed(cfg.run.device)
    out = Path(cfg.run.out_dir)
    ckdir = out / "checkpoints"
    if dist.main:  # before anything costly: a run that cannot write its results must not start
        prepare_out_dir(out)
        for key in ("export", "export_plugin"):
            check_writable_file(f"run.{key}", getattr(cfg.run, key))
    sources = build_sources(cfg.data)
    weights = [d.weight for d in cfg.data.datasets]
    if cfg.epochs is not None:
        per_epoch = Mixture([len(s) for s in sources], weights, cfg.seed).length
        cfg = dataclasses.replace(
            cfg, iters=epoch_iters(cfg.epochs, per_epoch, cfg.data.batch_size)
        )
        if dist.main:
            print(
                f"epochs {cfg.epochs:g} x {per_epoch} samples / batch {cfg.data.batch_size} "
                f"-> {cfg.iters} iterations"
            )
    for stale in ckdir.glob(".iter_*.tmp") if dist.main else ():  # left by a kill mid-write
        stale.unlink(missing_ok=True)
    state: dict[str, Any] | None = None
    resumed_from: Path | None = None
    if resume and list_checkpoints(ckdir):
        check_resume_config(out, cfg)  # the cheap check first: config.yaml
        latest = load_latest(ckdir, move_aside=dist.main, warn=_warn if dist.main else _quiet)
        if latest is not None:
            _, resumed_from, state = latest
            if not (out / "config.yaml").is_file() and "train_config" in state:
                check_resume_config(out, cfg, state["train_config"], resumed_from)
    elif not resume and dist.main:
        removed = list_checkpoints(ckdir)
        for _, path in removed:
            path.unlink(missing_ok=True)
        if removed:
            n = len(removed)
            print(f"--no-resume: removed the {n} checkpoint(s) of the previous run in {ckdir}")
    dist.barrier()
    if dist.main:
        (out / "config.yaml").write_text(dump_config(cfg))  # with the iterations resolved
    model = build_train_model(cfg).to(dist.device)  # after the checks: it may load GBs
    cache = None
    if cfg.data.cache:
        from .embed_cache import EmbeddingCache, unique_images

        cache = EmbeddingCache(cfg.data.cache)
        cache.check(model, [k for k, _, _ in unique_images(sources)])
    c = model.config
    spec = ImageSpec(c.image_size, c.preprocess, c.pixel_mean, c.pixel_std)
    samples = TrainSamples(sources, weights, spec, cfg.seed, cfg.data.color_aug, cache)

    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg)
    start = 0
    if dist.world > 1:  # every rank must resume from the same checkpoint
        its: list[Any] = [None] * dist.world
        torch.distributed.all_gather_object(its, -1 if state is None else int(state["iteration"]))
        if len(set(its)) != 1:
            raise ResumeError(f"the processes found different checkpoints to resume from: {its}")
    if state is not None:
        path = resumed_from
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = first_line(e)
            raise ResumeError(
                f"checkpoint {str(path)!r} does not fit this configuration ({first}); start "
                "over with --no-resume (deletes the checkpoints) or choose another run.out_dir"
            ) from None
        set_rng_state(state["rng"])
        start = int(state["iteration"])
        if state.get("world_size", dist.world) != dist.world and dist.main:
            _warn(f"warning: resuming a {state['world_size']}-process run on {dist.world}")
        if dist.main:
            print(f"resuming from {str(path)!r} (iteration {start} of {cfg.iters})")
    model.train()
    step: nn.Module = TrainStep(model, cfg)
    if dist.world > 1:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        step = nn.parallel.DistributedDataParallel(
            step, device_ids=ids, find_unused_parameters=True
        )
    trainable = [p for p in model.parameters() if p.requires_grad]

    log = CsvLog(out / "log.csv", start) if dist.main else None
    bar = tqdm(
        total=cfg.iters,
        initial=start,
        disable=not (dist.main and cfg.run.progress),
        dynamic_ncols=True,
        desc=f"train[{cfg.stage}]",
    )
    acc: dict[str, list[float]] = {}
    t_last, n_last = time.perf_counter(), start
    first_keys: list[str] = []
    for it, batch in enumerate(_batches(_loader(samples, cfg, start, dist)), start=start):
        first_keys = first_keys or list(batch["key"])
        rng, gen = _iteration_rngs(cfg.seed, it, dist.rank)
        losses = step(batch, rng, gen)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        values = _reduce_mean({k: float(v.detach()) for k, v in losses.items()}, dist)
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"iteration {it}: loss is {values['loss']}")
        for k, v in values.items():
            acc.setdefault(k, []).append(v)
        bar.update(1)
        bar.set_postfix(loss=f"{values['loss']:.4f}", iou=f"{values['iou']:.3f}", refresh=False)
        done = it + 1
        if done % cfg.run.log_every == 0 or done == cfg.iters:
            dt = time.perf_counter() - t_last
            speed = (done - n_last) / dt if dt > 0 else 0.0
            row = {k: float(np.mean(v)) for k, v in acc.items()}
            row.update(iter=done, lr=lr, it_per_s=speed, samples_per_s=speed * cfg.data.batch_size)
            if log is not None:
                log.write(row)
            acc, t_last, n_last = {}, time.perf_counter(), done
        if done % cfg.run.checkpoint_every == 0 or done == cfg.iters:
            if dist.main:
                extra = {"train_config": cfg.to_dict(), "world_size": dist.world}
                keep = cfg.run.keep_checkpoints
                save_state(ckdir, done, model, optimizer, scheduler, extra, keep)
                if cfg.run.plot and log is not None:
                    plot_losses(log, out / "loss.png", f"{out.name} ({cfg.stage})")
            dist.barrier()
    bar.close()
    if dist.world > 1:
        _check_sync(model, first_keys, out, dist)
    final = out / "final.safetensors"
    if dist.main:
        model.eval()
        save_checkpoint(model.cpu(), final)
        if cfg.run.export:
            save_checkpoint(model, cfg.run.export)
        if model.config.plugin is not None:  # Stable-SAM: the plugin alone, for any base file
            save_plugin_checkpoint(model, out / "plugin.safetensors")
            if cfg.run.export_plugin:
                save_plugin_checkpoint(model, cfg.run.export_plugin)
    dist.barrier()
    dist.close()
    return final
