"""The exported folder's layout and its JSON sidecars: one place that writes the format
version and checks a folder before anything is run from it (torch-free).

A folder holds ``model.json`` (the manifest: format, model, the graphs) and, per graph,
``<graph>.onnx`` with its sidecar ``<graph>.json``: input / output names, shapes (strings for
dynamic axes), dtypes, what they mean, and the facts needed to use the graph (preprocessing,
model name, weights digest, steadysam version, opset)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMAT = "steadysam-onnx"
FORMAT_VERSION = 1
MANIFEST = "model.json"
# Graph names; ``decoder_int8`` is the optional dynamically quantised decoder, ``hq_fusion``
# HQ-SAM's once-per-image global-local fusion.
GRAPHS = ("encoder", "hq_fusion", "decoder", "refiner", "decoder_int8")


class OnnxFolderError(ValueError):
    """An exported folder that cannot be used (missing or damaged files, another format
    version, graphs that disagree with their sidecars)."""


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise OnnxFolderError(
            f"{path}: missing {what} (export the model with `steadysam "
            "export-onnx --out DIR` and pass that folder)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OnnxFolderError(f"{path}: unreadable {what}: {e}") from None
    if not isinstance(data, dict):
        raise OnnxFolderError(f"{path}: {what} must be a JSON object")
    return data


def check_version(data: dict[str, Any], path: Path) -> None:
    """The format name and version must be exactly this reader's."""
    if data.get("format") != FORMAT:
        raise OnnxFolderError(
            f"{path}: not a steadysam ONNX sidecar (format {data.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    if data.get("format_version") != FORMAT_VERSION:
        raise OnnxFolderError(
            f"{path}: sidecar format version {data.get('format_version')!r}, this steadysam "
            f"reads version {FORMAT_VERSION}: export the model again with this version"
        )


def read_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Check an exported folder -> (manifest, {graph: sidecar}) for the graphs it lists.

    Raises OnnxFolderError naming the file and what is wrong: no folder, a missing manifest,
    graph or sidecar, another format version, a sidecar of another graph or other weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OnnxFolderError(f"{folder}: not a folder (expected a `steadysam export-onnx` output)")
    manifest_path = folder / MANIFEST
    manifest = read_json(manifest_path, "manifest")
    check_version(manifest, manifest_path)
    graphs = manifest.get("graphs")
    if not isinstance(graphs, list) or "encoder" not in graphs or "decoder" not in graphs:
        raise OnnxFolderError(f"{manifest_path}: 'graphs' must list at least encoder and decoder")
    sidecars = {}
    for name in graphs:
        if name not in GRAPHS:
            raise OnnxFolderError(f"{manifest_path}: unknown graph {name!r} (known: {GRAPHS})")
        path = folder / f"{name}.json"
        sidecar = read_json(path, f"sidecar of graph {name!r}")
        check_version(sidecar, path)
        if sidecar.get("graph") != name:
            raise OnnxFolderError(f"{path}: describes graph {sidecar.get('graph')!r}, not {name!r}")
        for key in ("weights_digest", "model"):
            if sidecar.get(key) != manifest.get(key):
                raise OnnxFolderError(
                    f"{path}: {key} {sidecar.get(key)!r} differs from the manifest's "
                    f"{manifest.get(key)!r} (files of different exports mixed in one folder)"
                )
        onnx_path = folder / sidecar.get("file", f"{name}.onnx")
        if not onnx_path.is_file():
            raise OnnxFolderError(f"{onnx_path}: missing ONNX graph {name!r}")
        sidecars[name] = sidecar
    if manifest.get("refiner") and "refiner" not in sidecars:
        raise OnnxFolderError(f"{manifest_path}: the model has a refiner but no refiner graph")
    if manifest.get("hq") and "hq_fusion" not in sidecars:
        raise OnnxFolderError(f"{manifest_path}: the model is HQ-SAM but has no hq_fusion graph")
    return manifest, sidecars


def io_spec(name: str, shape: list[int | str], dtype: str, meaning: str) -> dict[str, Any]:
    """One input / output entry of a sidecar (str dims are dynamic axes)."""
    return {"name": name, "shape": shape, "dtype": dtype, "description": meaning}
