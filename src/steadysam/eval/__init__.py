"""Interactive-segmentation evaluation: datasets, NoC/NoF/mIoU/SPC/stability, resumable runs.

Python API::

    from steadysam.eval import evaluate
    summary = evaluate(model="focsam_tiny", dataset="GrabCut", data_root="data", clicks=20)

See docs/eval.md for the protocol details and the run-directory layout. This package never
imports ``steadysam.train``.
"""

from steadysam.eval.datasets import Dataset, DatasetError, ImageItem, ObjectGT, load_dataset
from steadysam.eval.metrics import iou, noc, summarize
from steadysam.eval.report import finalize, read_records, report
from steadysam.eval.runner import EvalConfig, RunError, evaluate

__all__ = [
    "Dataset",
    "DatasetError",
    "EvalConfig",
    "ImageItem",
    "ObjectGT",
    "RunError",
    "evaluate",
    "finalize",
    "iou",
    "load_dataset",
    "noc",
    "read_records",
    "report",
    "summarize",
]
