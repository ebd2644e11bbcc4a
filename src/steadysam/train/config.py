"""Training configuration: dataclasses, YAML files and ``key=value`` overrides.

A recipe is one YAML file whose sections mirror :class:`TrainConfig`; unknown keys and values of
the wrong type are errors that name the offending key. Overrides use dotted paths, list items by
index (``data.datasets.0.gamma=0.9``); values are parsed as YAML (``optim.betas=[0.9,0.99]``,
``data.cache=null``). Relative paths are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..models.config import PARTS, PLUGIN_PART

# What model.trainable may list: the model's parts and Stable-SAM's plugin, a part of its own
# although it lives inside the mask decoder.
TRAINABLE_PARTS = (*PARTS, PLUGIN_PART)
STAGES = ("sam", "refiner", "rts")
DATASET_TYPES = ("folder", "coco", "lvis")


class ConfigError(ValueError):
    """A bad training configuration (unknown key, wrong type, inconsistent settings)."""


# Paths a run writes to (or, for the cache, that `steadysam embed` fills): never inside the
# installed package, whose files (the shipped demo weights) a run must not replace.
OUTPUT_KEYS = ("run.out_dir", "run.export", "run.export_plugin", "data.cache")


def package_dir() -> Path:
    """The installed ``steadysam`` package folder, symlinks resolved."""
    import steadysam

    return Path(steadysam.__file__).resolve().parent


def inside_package(path: str | Path) -> bool:
    """Whether ``path`` (relative to the working directory; symlinks resolved, the path itself
    need not exist) is the package folder or inside it."""
    return Path(path).resolve().is_relative_to(package_dir())


def check_output_path(key: str, value: str | Path | None) -> None:
    """ConfigError when the output ``value`` of ``key`` lies inside the installed package."""
    if value is None or not inside_package(value):
        return
    raise ConfigError(
        f"{key} {str(value)!r} is inside the installed steadysam package ({package_dir()}): "
        "training and embedding never write there; choose a path outside it (to replace the "
        "shipped demo weights, copy trained files there yourself, as scripts/train_demo.sh does)"
    )


def check_outputs(cfg: TrainConfig) -> None:
    for key in OUTPUT_KEYS:
        section, name = key.split(".")
        check_output_path(key, getattr(getattr(cfg, section), name))


@dataclass
class DatasetConfig:
    """One training source. ``weight`` multiplies its size in the mixture: with all weights 1
    every image is equally likely (the official ConcatDataset); weight 2 visits this source's
    images twice as often."""

    type: str = "folder"  # folder | coco (instances or panoptic, auto-detected) | lvis
    name: str = ""  # label for logs; default "<type><index>"
    images: str = ""  # image folder
    masks: str = ""  # folder: masks; coco panoptic: PNG folder (default: JSON path sans .json)
    annotations: str = ""  # coco / lvis: annotation JSON
    mask_mode: str = "instance"  # folder: instance (each non-zero value is an object) | binary
    image_ext: str = ""  # folder: only images with this extension (e.g. ".jpg"); "" = any
    mask_ext: str = ""  # folder: only masks with this extension (e.g. ".png"); "" = any
    weight: float = 1.0
    # P(k simulated rounds) ∝ gamma^k, k = 0..sim.max_rounds (docs/focsam.md §7.3)
    gamma: float = 0.6
    # P(refine step = k) ∝ refine_gamma^k, k = 0..rounds (docs/focsam.md §7.4)
    refine_gamma: float = 0.6
    overlap_filter: float | None = None  # lvis: drop masks overlapping kept ones by > this (0.5)
    include_crowd: bool = True


@dataclass
class DataConfig:
    datasets: list[DatasetConfig] = field(default_factory=list)
    batch_size: int = 16  # global batch, split evenly over torchrun ranks
    num_workers: int = 4
    color_aug: bool = True  # PhotoMetricDistortion (docs/focsam.md §7.1)
    cache: str | None = None  # embedding cache folder (steadysam embed); needs a frozen encoder


@dataclass
class ModelConfig:
    """``name`` picks a registered architecture, ``arch`` overrides its SamConfig fields
    (``refiner`` / ``plugin``: null removes it, a mapping adds it or overrides its
    RefinerConfig / PluginConfig fields); weights come from ``checkpoint`` (any format
    ``build_model`` reads; a SAM checkpoint may initialise a FocSAM model, the refiner then
    starts from its init (docs/focsam.md §4.9), and a model with a Stable-SAM plugin, which then
    starts from its identity init)."""

    name: str = "focsam_vit_h"
    arch: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    trainable: list[str] = field(default_factory=lambda: ["mask_decoder"])
    # From-scratch runs only (ignored with a checkpoint): "zeros" keeps SAM's init of the ViT
    # position embedding, "sincos" starts it from MAE's fixed 2-D sin-cos table (SAM's encoder
    # was initialised from MAE): the decoder then finds positions from the first iterations.
    pos_embed_init: str = "zeros"


@dataclass
class SimConfig:
    max_rounds: int = 20  # simulated rounds k drawn in 0..max_rounds -> up to 21 clicks
    first_inner_k: float = 1.0  # first click: the interior-most pixel (docs/focsam.md §5.1)
    inner_k: float = 1.7  # later clicks: random pixel with DT > max / 1.7
    expand_ratio: tuple[float, float] = (1.0, 1.4)  # focus-box expansion ~ U per axis
    # Stage sam only: probability that a sample's first prompt is its jittered GT box instead of
    # the first click (SAM's own training mixes boxes and clicks); the box stays in every round.
    box_prob: float = 0.0


@dataclass
class RtsConfig:
    """Stable-SAM's robust training strategy (docs/stable-sam.md, "RTS: robust training"): one
    prompt per sample, drawn by ``steadysam.prompts.rts_prompt``, and BCE + Dice on
    uncertainty-sampled points of the single-mask logits against the whole-object mask (HQ-SAM's
    loss)."""

    # Relative weights (normalised) of the GT box, a noisy box and k random points.
    probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    noise_range: tuple[float, float] = (0.0, 0.5)  # noisy-box scale ~ U(low, high) (DN-DETR)
    k_range: tuple[int, int] = (1, 10)  # k ~ U{low..high} random positive points
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    # Points per mask for 256 x 256 low-res logits (1024 px input; HQ-SAM: 112 x 112); other
    # logit sizes use the same fraction of their pixels (64 x 64 logits: 784 points).
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75


@dataclass
class LossConfig:
    nfl_weight: float = 1.0
    nfl_alpha: float = 0.5
    nfl_gamma: float = 2.0
    eps: float = 1.19e-7
    ptl_weight: float = 0.0  # point loss; 1.0 in FocSAM stage 2


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    warmup_iters: int = 1500
    warmup_start_factor: float = 1e-6
    grad_clip: float | None = None  # max grad norm; None = no clipping (official)
    # Linear decay to 0 after the warm-up (FocSAM's PolyLR); false: constant (HQ-SAM's StepLR
    # drops at epoch 10, so Stable-SAM's one epoch runs at a constant rate).
    decay: bool = True


@dataclass
class RunConfig:
    out_dir: str = "runs/train"
    checkpoint_every: int = 20000
    keep_checkpoints: int = 2
    log_every: int = 10
    export: str | None = None  # also copy the final safetensors here
    export_plugin: str | None = None  # models with a plugin: also copy plugin.safetensors here
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True
    plot: bool = True
    threads: int = 0  # torch CPU threads per process; 0 = leave torch's default


@dataclass
class TrainConfig:
    # sam: decoder / SAM training (NFL) | refiner: FocSAM stage 2 (NFL + PTL) |
    # rts: Stable-SAM plugin, robust training strategy (BCE + Dice)
    stage: str = "sam"
    iters: int = 320000
    # When set, replaces ``iters``: ceil(epochs * samples per epoch / data.batch_size), where an
    # epoch is one pass of the data stream (sum over sources of round(weight * images)).
    epochs: float | None = None
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    rts: RtsConfig = field(default_factory=RtsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> TrainConfig:
        """Cross-field checks; returns self. Raises ConfigError."""
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, not {self.stage!r}")
        if self.model.pos_embed_init not in ("zeros", "sincos"):
            raise ConfigError("model.pos_embed_init must be zeros or sincos")
        bad = sorted(set(self.model.trainable) - set(TRAINABLE_PARTS))
        if bad:
            raise ConfigError(
                f"model.trainable: unknown parts {bad}; known: {list(TRAINABLE_PARTS)}"
            )
        if not self.model.trainable:
            raise ConfigError("model.trainable is empty: nothing to train")
        arch = self.arch()
        if self.stage == "refiner" and arch.refiner is None:
            raise ConfigError("stage refiner needs a model with a refiner (e.g. focsam_vit_h)")
        if "refiner" in self.model.trainable and arch.refiner is None:
            raise ConfigError("model.trainable lists 'refiner' but the model has none")
        if self.stage == "rts" and arch.plugin is None:
            raise ConfigError(
                "stage rts needs a model with a Stable-SAM plugin (e.g. stable_sam_vit_l, or "
                "model.arch.plugin: {})"
            )
        if PLUGIN_PART in self.model.trainable and arch.plugin is None:
            raise ConfigError("model.trainable lists 'plugin' but the model has none")
        if self.run.export_plugin and arch.plugin is None:
            raise ConfigError("run.export_plugin is set but the model has no Stable-SAM plugin")
        if self.data.cache and "image_encoder" in self.model.trainable:
            raise ConfigError("data.cache needs a frozen image encoder (remove it from trainable)")
        if not self.data.datasets:
            raise ConfigError("data.datasets is empty")
        for i, d in enumerate(self.data.datasets):
            if d.type not in DATASET_TYPES:
                raise ConfigError(f"data.datasets.{i}.type must be one of {DATASET_TYPES}")
            if d.weight <= 0 or not 0 < d.gamma or not 0 < d.refine_gamma:
                raise ConfigError(f"data.datasets.{i}: weight, gamma, refine_gamma must be > 0")
            d.name = d.name or f"{d.type}{i}"
        if self.data.batch_size < 1 or self.iters < 1 or self.sim.max_rounds < 0:
            raise ConfigError("data.batch_size and iters must be >= 1, sim.max_rounds >= 0")
        lo, hi = self.sim.expand_ratio
        if not 0 < lo <= hi:
            raise ConfigError(f"sim.expand_ratio must be (low, high), 0 < low <= high: {lo, hi}")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"epochs must be > 0 (or null to use iters), not {self.epochs}")
        if not 0 <= self.sim.box_prob <= 1:
            raise ConfigError(f"sim.box_prob must be in [0, 1], not {self.sim.box_prob}")
        if self.sim.box_prob > 0 and self.stage != "sam":
            raise ConfigError("sim.box_prob is used by stage sam only: set it to 0")
        self._validate_rts()
        check_outputs(self)
        return self

    def _validate_rts(self) -> None:
        r = self.rts
        if any(p < 0 for p in r.probs) or sum(r.probs) <= 0:
            raise ConfigError(f"rts.probs must be >= 0 with a positive sum: {list(r.probs)}")
        if not 0 <= r.noise_range[0] <= r.noise_range[1]:
            raise ConfigError(f"rts.noise_range must satisfy 0 <= low <= high: {r.noise_range}")
        if not 1 <= r.k_range[0] <= r.k_range[1]:
            raise ConfigError(f"rts.k_range must satisfy 1 <= low <= high: {r.k_range}")
        if r.num_points < 1 or r.oversample_ratio < 1 or not 0 <= r.importance_sample_ratio <= 1:
            raise ConfigError(
                "rts: num_points >= 1, oversample_ratio >= 1, 0 <= importance_sample_ratio <= 1"
            )

    def arch(self):
        """The model's SamConfig: the named architecture with ``model.arch`` applied."""
        from ..models.config import SamConfig
        from ..weights.registry import sam_config

        try:
            base = sam_config(self.model.name).to_dict()
        except KeyError as e:
            raise ConfigError(f"model.name: {e.args[0]}") from None
        arch = dict(self.model.arch)
        for name in ("refiner", "plugin"):
            if name in arch:
                base[name] = _sub_config(name, base.get(name), arch.pop(name))
        unknown = sorted(set(arch) - set(base))
        if unknown:
            raise ConfigError(f"model.arch: unknown SamConfig fields {unknown}")
        base.update(arch)
        try:
            return SamConfig.from_dict(base)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.arch: {e}") from None


def _sub_config(name: str, current: dict | None, value: Any) -> dict | None:
    """``model.arch.<name>`` (refiner / plugin) applied to the architecture's own setting:
    null removes the part, a mapping adds it (from the dataclass defaults) or overrides
    fields of the one the architecture has."""
    from ..models.config import PluginConfig, RefinerConfig

    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"model.arch.{name} must be null or a mapping")
    cls = {"refiner": RefinerConfig, "plugin": PluginConfig}[name]
    merged = dict(current or dataclasses.asdict(cls()), **value)
    known = {f.name for f in dataclasses.fields(cls)}
    if set(merged) - known:
        raise ConfigError(f"model.arch.{name}: unknown fields {sorted(set(merged) - known)}")
    return merged


# -- dict <-> dataclass with type checking ----------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against (and lightly converted to) the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: bad value {value!r}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}.{i}") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(_coerce(v, a, f"{key}.{i}") for i, (v, a) in pairs)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp in (int, float, str) and (not isinstance(value, tp) or isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Dataclass ``cls`` from a (nested) mapping; unknown keys and bad types raise ConfigError."""
    hints = _hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!s} (known in {prefix or 'the top level'}: "
            f"{', '.join(hints)})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def apply_override(cfg: TrainConfig, text: str) -> None:
    """Apply one ``dotted.key=value`` override in place (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. optim.lr=3e-4")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has no key before '=', e.g. optim.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value{yaml_error(e, lines=False)}") from None
    parts = key.strip().split(".")
    obj: Any = cfg
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(obj):
            hints = _hints(type(obj))
            if part not in hints:
                raise ConfigError(f"unknown config key {path!r} (known: {', '.join(hints)})")
            if last:
                setattr(obj, part, _coerce(value, hints[part], path))
            else:
                obj = getattr(obj, part)
        elif isinstance(obj, list):
            if not part.isdigit() or int(part) >= len(obj):
                raise ConfigError(f"{path!r}: index out of range (list has {len(obj)} items)")
            if last:
                raise ConfigError(f"{path!r}: set fields of list items, e.g. {path}.weight=2")
            obj = obj[int(part)]
        elif isinstance(obj, dict):  # free-form mapping (model.arch): checked in validate()
            if last:
                obj[part] = value
            else:
                obj = obj.setdefault(part, {})
                if not isinstance(obj, dict):
                    raise ConfigError(f"{path!r} is not a mapping")
        else:
            raise ConfigError(f"{path!r}: {'.'.join(parts[:i])} has no fields")


def yaml_error(e: yaml.YAMLError, lines: bool = True) -> str:
    """One line for a YAML parse error: where (line, column, 1-based) and what, e.g.
    `` line 3, column 5: not valid YAML: mapping values are not allowed here``."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None and lines else ""
    if mark is not None and not lines:
        where = f" at character {mark.column + 1}"
    context = getattr(e, "context", None)
    cmark = getattr(e, "context_mark", None)
    if context and cmark is not None and lines:
        context = f"{context} started at line {cmark.line + 1}, column {cmark.column + 1}"
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def _errno(e: OSError) -> str:
    """An OSError's reason without the errno number and path: 'permission denied'."""
    return (e.strerror or type(e).__name__).lower()


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) is replaced."""
    out = dict(base)
    for k, v in child.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML recipe as a mapping; ``base: other.yaml`` (relative to this file) is read first
    and this file's keys are merged over it."""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "no such file"
        raise FileNotFoundError(f"training config {str(path)!r}: {what}")
    if path.resolve() in seen:
        raise ConfigError(f"{str(path)!r}: circular 'base' chain")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{str(path)!r} is not a UTF-8 text file ({e.reason} at byte {e.start})"
        ) from None
    except OSError as e:
        raise ConfigError(f"training config {str(path)!r}: cannot read it ({_errno(e)})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{str(path)!r}{yaml_error(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{str(path)!r}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{str(path)!r}: 'base' must be a file name")
    return _merge(_read_yaml(path.parent / base, (*seen, path.resolve())), data)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML recipe (or the defaults when ``path`` is None), apply overrides, validate.

    A recipe may start from another with ``base: other.yaml`` (mappings are merged)."""
    data = _read_yaml(Path(path)) if path is not None else {}
    try:
        cfg = from_dict(TrainConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    for text in overrides:
        apply_override(cfg, text)
    return cfg.validate()


def dump_config(cfg: TrainConfig) -> str:
    """YAML text of a config (tuples as lists)."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False)


# -- resuming: which settings may change between the runs of one run folder -------------------
# Settings that do not change what a run computes: a resumed run may change them freely. Every
# other setting (stage, iters, seed, model, data, sim, rts, loss, optim) changes the result, so
# resuming with a different value is an error (resume_differences). ``epochs`` is compared
# through the iterations it resolves to. Device and threads do not change the result beyond
# floating-point rounding (a run moved to another device or thread count is no longer bit for
# bit the run that was never stopped).
RESUME_FREE_KEYS = (
    "epochs",
    "data.num_workers",
    "run.out_dir",
    "run.checkpoint_every",
    "run.keep_checkpoints",
    "run.log_every",
    "run.export",
    "run.export_plugin",
    "run.device",
    "run.progress",
    "run.plot",
    "run.threads",
)


_ABSENT = "<absent>"


def _diff(a: Any, b: Any, key: str, out: list[tuple[str, Any, Any]]) -> None:
    """Append (dotted key, a, b) for every differing leaf; mappings (and equally long lists of
    mappings, by index) are walked, anything else is compared whole."""
    if key and _free(key):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*b, *(k for k in a if k not in b)]:  # the new config's order, then the rest
            _diff(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{key}.{k}" if key else str(k), out)
    elif (
        isinstance(a, list)
        and isinstance(b, list)
        and len(a) == len(b)
        and all(isinstance(v, dict) for v in a + b)
    ):
        for i, (va, vb) in enumerate(zip(a, b, strict=True)):
            _diff(va, vb, f"{key}.{i}", out)
    elif a != b:
        out.append((key, a, b))


def _plain(cfg: TrainConfig) -> dict[str, Any]:
    """The config as the YAML of config.yaml reads back (tuples as lists), with ``model.arch``
    replaced by the architecture it resolves to (``{}`` and ``{refiner: null}`` on a model
    without refiner are the same model)."""
    data = yaml.safe_load(dump_config(cfg))
    data["model"]["arch"] = yaml.safe_load(yaml.safe_dump(_as_lists(cfg.arch().to_dict())))
    return data


def _as_lists(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _as_lists(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_as_lists(v) for v in x]
    return x


def resume_differences(saved: dict[str, Any], cfg: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(key, saved value, new value) for every setting that changes results and differs
    between a run folder's saved config (config.yaml, iterations resolved) and ``cfg`` (also
    resolved). Keys of RESUME_FREE_KEYS are ignored; a key only one side has counts as
    differing (its value on the other side shows as ``<absent>``)."""
    try:
        old = _plain(from_dict(TrainConfig, saved))
    except (ConfigError, KeyError, TypeError, ValueError):  # a config of another version
        old = saved
    new = _plain(cfg)
    diffs: list[tuple[str, Any, Any]] = []
    _diff(old, new, "", diffs)
    if any(k == "iters" for k, _, _ in diffs) and old.get("epochs") != new.get("epochs"):
        diffs.append(("epochs", old.get("epochs"), new.get("epochs")))  # where iters come from
    return diffs


def _free(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in RESUME_FREE_KEYS)


def show_value(v: Any) -> str:
    """A config value as it would be written in an override: null, true, 3e-4, [a, b], 'x'."""
    if isinstance(v, str) and v != _ABSENT:
        return repr(v)
    if isinstance(v, (list, dict, bool)) or v is None:
        return (
            yaml.safe_dump(v, default_flow_style=True, width=10**6)
            .strip()
            .removesuffix("\n...")
            .removesuffix("...")
            .strip()
        )
    return str(v)
