"""The one model registry: a record per model name with its architecture and where its weights
come from (published URL and sha256, a manual-download note, or a file shipped in the package).

``build_model``, the CLI (``--model``, ``download``, ``info``, ``models``), the hub and the tests
all read :data:`REGISTRY`; nothing else keys anything by model name.

A name means trained weights: its published file (from the cache), the shipped demo file, or,
for architectures without published weights, nothing until ``checkpoint=`` or an explicit
``random_init=True`` says otherwise (:func:`steadysam.build_model`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..models.build import FOCSAM, VIT_B, VIT_H, VIT_L, VIT_TINY
from ..models.config import HQConfig, PluginConfig, RefinerConfig, SamConfig

# The shipped demo weights live next to this module.
SHIPPED_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "demo_focsam"

HQ_SAM_URL = "https://huggingface.co/lkeab/hq-sam/resolve/main/"
FOCSAM_DRIVE_URL = "https://drive.google.com/file/d/1VOeMkY9LovfWYi66JMR8q79gFiC4n3Az/view"


@dataclass(frozen=True)
class ModelRecord:
    """One model name.

    Arguments:
        name: the registered name.
        summary: one line for listings.
        arch: the architecture; None for shipped models, whose file stores it.
        url, sha256: published weights (a sha256 only where one is published; without one a
            download is checked by its architecture only, as HQ-SAM's are).
        manual: how to get weights that no script can download (shown verbatim).
        filename: the weights' file name in the cache (default: the URL's last part).
        shipped: file name of weights shipped in the package (demo models).
        plugin_of: Stable-SAM names: the model whose decoder carries the plugin.
        shipped_plugin: file name of a shipped plugin file (demo Stable-SAM models).
    """

    name: str
    summary: str
    arch: Callable[[], SamConfig] | None = None
    url: str | None = None
    sha256: str | None = None
    manual: str | None = None
    filename: str | None = None
    shipped: str | None = None
    plugin_of: str | None = None
    shipped_plugin: str | None = None

    @property
    def weights(self) -> str:
        """Where trained weights come from: ``published`` (download), ``manual`` (by hand),
        ``shipped`` (in the package), ``plugin`` (a base model's weights plus a plugin file
        the user trains) or ``none`` (architecture only)."""
        if self.shipped or self.shipped_plugin:
            return "shipped"
        if self.plugin_of:
            return "plugin"
        return "published" if self.url else "manual" if self.manual else "none"

    @property
    def cache_name(self) -> str | None:
        """File name of the weights in the cache folder (published and manual weights)."""
        if self.filename:
            return self.filename
        return self.url.rsplit("/", 1)[-1] if self.url else None

    def shipped_path(self) -> Path | None:
        return SHIPPED_DIR / self.shipped if self.shipped else None

    def shipped_plugin_path(self) -> Path | None:
        return SHIPPED_DIR / self.shipped_plugin if self.shipped_plugin else None

    def config(self) -> SamConfig:
        """The architecture (for shipped models: read from the shipped file's header)."""
        if self.arch is not None:
            return self.arch()
        if self.plugin_of is not None:  # a shipped plugin on a shipped model
            from .files import read_plugin_checkpoint

            _, plugin, _ = read_plugin_checkpoint(self.shipped_plugin_path())
            return dataclasses.replace(model_record(self.plugin_of).config(), plugin=plugin)
        from .files import stored_config

        return stored_config(self.shipped_path())


_FOCSAM_MANUAL = f"""\
FocSAM-ViT-H weights are published only as a Google Drive zip (see the README of
github.com/YouHuang67/focsam, "FocSAM Pre-trained Weights"); no script can download them. By hand:
  1. open {FOCSAM_DRIVE_URL} in a browser and download the zip;
  2. unzip it; it contains iter_160000.pth (an mmengine checkpoint);
  3. either pass that file directly (no conversion needed):
       steadysam segment IMAGE --checkpoint /path/to/iter_160000.pth --click X,Y ...
       build_model("focsam_vit_h", checkpoint="/path/to/iter_160000.pth")
     or copy it to {{cache}} and use --model focsam_vit_h.
No sha256 is published for this file: it is checked by its architecture only."""


def _records() -> list[ModelRecord]:
    def arch(**kw) -> Callable[[], SamConfig]:
        return partial(SamConfig, **kw)

    sam_url = "https://dl.fbaipublicfiles.com/segment_anything/"
    # sha256 values as pinned by micro-sam (micro_sam/util.py, verified there by pooch on every
    # download) and independently by many other projects. The hex suffix in the file names is
    # the start of the files' MD5, not of their sha256.
    records = [
        ModelRecord(
            "sam_vit_b",
            "SAM ViT-B (Kirillov et al. 2023)",
            arch(**VIT_B),
            sam_url + "sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        ),
        ModelRecord(
            "sam_vit_l",
            "SAM ViT-L",
            arch(**VIT_L),
            sam_url + "sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        ),
        ModelRecord(
            "sam_vit_h",
            "SAM ViT-H",
            arch(**VIT_H),
            sam_url + "sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        ),
        ModelRecord(
            "focsam_vit_b",
            "FocSAM ViT-B architecture (no published weights; train it: configs/focsam_*.yaml)",
            arch(**VIT_B, **FOCSAM, refiner=RefinerConfig()),
        ),
        ModelRecord(
            "focsam_vit_l",
            "FocSAM ViT-L architecture (no published weights)",
            arch(**VIT_L, **FOCSAM, refiner=RefinerConfig()),
        ),
        ModelRecord(
            "focsam_vit_h",
            "FocSAM ViT-H (Huang et al. 2024), weights by manual download",
            arch(**VIT_H, **FOCSAM, refiner=RefinerConfig()),
            manual=_FOCSAM_MANUAL,
            filename="focsam_vit_h_iter_160000.pth",
        ),
        # HQ-SAM (Ke et al. 2023): SAM plus the HQ token and the global-local fusion. Its
        # authors publish the files on the Hugging Face hub (README of github.com/SysCV/sam-hq)
        # with no checksum of their own; they are checked by their architecture only.
        ModelRecord(
            "hq_sam_vit_b",
            "HQ-SAM ViT-B (Ke et al. 2023), published weights without a checksum",
            arch(**VIT_B, hq=HQConfig()),
            HQ_SAM_URL + "sam_hq_vit_b.pth",
        ),
        ModelRecord(
            "hq_sam_vit_l",
            "HQ-SAM ViT-L",
            arch(**VIT_L, hq=HQConfig()),
            HQ_SAM_URL + "sam_hq_vit_l.pth",
        ),
        ModelRecord(
            "hq_sam_vit_h",
            "HQ-SAM ViT-H",
            arch(**VIT_H, hq=HQConfig()),
            HQ_SAM_URL + "sam_hq_vit_h.pth",
        ),
        ModelRecord(
            "sam_tiny",
            "tiny SAM architecture for tests and the demo (256 px, 16x16 grid)",
            arch(**VIT_TINY),
        ),
        ModelRecord(
            "focsam_tiny",
            "tiny FocSAM architecture for tests and the demo",
            arch(
                **VIT_TINY,
                **FOCSAM,
                refiner=RefinerConfig(depth=2, num_heads=2, window_size=8),
            ),
        ),
        ModelRecord(
            "hq_sam_tiny",
            "tiny HQ-SAM architecture for tests (sam_tiny + HQ-SAM's additions)",
            arch(**VIT_TINY, hq=HQConfig()),
        ),
    ]
    # Stable-SAM: each architecture above with the plugin in its mask decoder (FocSAM +
    # Stable-SAM: the refiner on the embedding, the plugin in the decoder). Their weights are
    # the base's plus a plugin file trained with RTS: no Stable-SAM weights were published.
    for base in list(records):
        records.append(
            ModelRecord(
                f"stable_{base.name}",
                f"{base.name} + Stable-SAM plugin (weights: {base.name}'s + a plugin file)",
                partial(_with_plugin, base.arch),
                plugin_of=base.name,
            )
        )
    records += [
        ModelRecord(
            "demo_focsam",
            "built-in demo FocSAM (tiny, trained on 800 COCO-MVal objects on a CPU)",
            shipped="demo_focsam.safetensors",
        ),
        ModelRecord(
            "demo_sam",
            "built-in demo SAM (demo_focsam without the refiner)",
            shipped="demo_sam.safetensors",
        ),
        ModelRecord(
            "demo_stable_sam",
            "demo_sam + the built-in Stable-SAM plugin (RTS-trained)",
            plugin_of="demo_sam",
            shipped_plugin="demo_stable_plugin.safetensors",
        ),
        ModelRecord(
            "demo_stable_focsam",
            "demo_focsam + the built-in Stable-SAM plugin",
            plugin_of="demo_focsam",
            shipped_plugin="demo_stable_plugin.safetensors",
        ),
    ]
    return records


def _with_plugin(base: Callable[[], SamConfig]) -> SamConfig:
    return dataclasses.replace(base(), plugin=PluginConfig())


REGISTRY: dict[str, ModelRecord] = {r.name: r for r in _records()}


class UnknownModelError(KeyError):
    """A model name that is not registered; the message lists the registered ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def list_models(weights: str | None = None) -> list[str]:
    """Registered names, optionally only those whose weights come from ``weights``
    (``published``, ``manual``, ``shipped``, ``plugin``, ``none``)."""
    return [n for n, r in REGISTRY.items() if weights is None or r.weights == weights]


def model_record(name: str) -> ModelRecord:
    """The record of ``name``; :class:`UnknownModelError` naming the registered names."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownModelError(
            f"unknown model {name!r}; registered: {', '.join(REGISTRY)}"
        ) from None


def sam_config(name: str) -> SamConfig:
    """The architecture of a registered name."""
    return model_record(name).config()


def architecture_names() -> list[str]:
    """Names that define an architecture of their own (not the shipped demo models)."""
    return [n for n, r in REGISTRY.items() if r.arch is not None]
