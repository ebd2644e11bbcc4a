"""ONNX export and a torch-free predictor.

``steadysam export-onnx`` (``steadysam.onnx.export.export_onnx``, needs torch) writes the
image encoder, the prompt encoder + mask decoder (with a Stable-SAM plugin inside), FocSAM's
refiner and optionally an int8 decoder, each with a JSON sidecar; ``OnnxPredictor(folder)``
runs them with onnxruntime and numpy only::

    from steadysam.onnx import OnnxPredictor   # does not import torch

    predictor = OnnxPredictor("onnx/demo_focsam")
    predictor.set_image("photo.jpg")
    obj = predictor.new_object()
    mask = obj.click(420, 310)

See docs/onnx.md.
"""

from __future__ import annotations

from ..lazy import lazy_exports
from .predictor import OnnxObjectSession, OnnxPredictor
from .sidecar import FORMAT_VERSION, OnnxFolderError

# Needs torch: loaded on first use only.
_EXPORTS = {"export_onnx": "steadysam.onnx.export", "OnnxExportError": "steadysam.onnx.export"}

__all__ = ["FORMAT_VERSION", "OnnxFolderError", "OnnxObjectSession", "OnnxPredictor"] + sorted(
    _EXPORTS
)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
