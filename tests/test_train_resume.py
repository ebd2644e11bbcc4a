"""A training run SIGKILLed mid-run resumes from its last checkpoint and ends bit-identical to
an uninterrupted run (weights, optimiser-driven updates, log rows)."""

from __future__ import annotations

import csv
import os

import pytest
import torch
from conftest import sigkill_at
from test_train_support import (
    CONFIGS,
    REPO,
    folder_dataset_override,
    make_folder_dataset,
    tiny_overrides,
)

import steadysam.train.loop as loop
from steadysam.train.config import load_config
from steadysam.train.loop import train
from steadysam.train.state import list_checkpoints
from steadysam.weights.factory import build_model

pytestmark = pytest.mark.multiprocess

ITERS = 24
KILL_AFTER = 10  # log rows (run.log_every 1): checkpoints at 4 and 8, rows 9 and 10 past them


def _rows(path):
    keep = ("iter", "loss", "nfl", "iou", "lr")  # timing columns differ, of course
    with path.open() as f:
        return [tuple(r[k] for k in keep) for r in csv.DictReader(f)]


def test_sigkill_then_resume_is_identical(tmp_path, monkeypatch):
    data = make_folder_dataset(tmp_path / "data", n=5)

    def overrides(out):
        ov = tiny_overrides(out, iters=str(ITERS), **{"run.checkpoint_every": "4"})
        return ov + folder_dataset_override(0, data)

    ref = train(load_config(CONFIGS / "demo_tiny.yaml", overrides(tmp_path / "ref")))

    # `steadysam train` in its own process, SIGKILLed right after it logged iteration 10: a
    # fixed point between two checkpoints, however fast or slow the machine is.
    run = tmp_path / "run"
    argv = ["train", str(CONFIGS / "demo_tiny.yaml"), *overrides(run)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    sigkill_at("steadysam.train.loop:CsvLog.write", KILL_AFTER, tmp_path / "child", argv,
               module="steadysam", env=env, cwd=REPO)  # fmt: skip
    assert [i for i, _ in list_checkpoints(run / "checkpoints")][-1] == 8
    assert not (run / "final.safetensors").exists()
    assert [int(r[0]) for r in _rows(run / "log.csv")] == list(range(1, KILL_AFTER + 1))

    steps = []
    forward = loop.TrainStep.forward
    monkeypatch.setattr(loop.TrainStep, "forward", lambda *a: steps.append(1) or forward(*a))
    final = train(load_config(CONFIGS / "demo_tiny.yaml", overrides(run)))
    assert len(steps) == ITERS - 8  # resumed at the checkpoint, not started over
    a = build_model(checkpoint=ref).state_dict()
    b = build_model(checkpoint=final).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(run / "log.csv") == _rows(ref.parent / "log.csv")
    assert len(_rows(run / "log.csv")) == ITERS  # rows 9 and 10 written once, not twice
