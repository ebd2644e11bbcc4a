"""Interactive-segmentation evaluation: datasets, NoC/NoF/mIoU/SPC/stability, resumable runs;
prompt-robustness evaluation (Stable-SAM protocol: GT box, noisy boxes, random points).

Python API::

    from steadysam.eval import evaluate, evaluate_prompts
    summary = evaluate(model="demo_focsam", dataset="GrabCut", data_root="data", clicks=20)
    summary = evaluate_prompts(model="demo_sam", dataset="GrabCut", data_root="data",
                               prompts="gt-box,noisy-box:0.4,points:1,points:3", draws=10)

See docs/eval.md for the protocol details and the run-directory layout. This package never
imports ``steadysam.train`` or torch (the predictor imports it when a model is built).
"""

from steadysam.eval.datasets import Dataset, DatasetError, ImageItem, ObjectGT, load_dataset
from steadysam.eval.metrics import boundary_iou, iou, mean_pairwise_iou, noc, summarize
from steadysam.eval.prompt_runner import PromptEvalConfig, evaluate_prompts
from steadysam.eval.report import finalize, read_records, report
from steadysam.eval.runner import EvalConfig, NoResultsError, RunError, evaluate

__all__ = [
    "Dataset",
    "DatasetError",
    "EvalConfig",
    "ImageItem",
    "NoResultsError",
    "ObjectGT",
    "PromptEvalConfig",
    "RunError",
    "boundary_iou",
    "evaluate",
    "evaluate_prompts",
    "finalize",
    "iou",
    "load_dataset",
    "mean_pairwise_iou",
    "noc",
    "read_records",
    "report",
    "summarize",
]
