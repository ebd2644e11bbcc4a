"""A training run SIGKILLed mid-run resumes from its last checkpoint and ends bit-identical to
an uninterrupted run (weights, optimiser-driven updates, log rows)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import torch
from test_train_support import (
    CONFIGS,
    REPO,
    folder_dataset_override,
    make_folder_dataset,
    tiny_overrides,
)

from steadysam.train.config import load_config
from steadysam.train.loop import train
from steadysam.train.state import list_checkpoints
from steadysam.weights.factory import build_model

ITERS = 24


def _rows(path):
    keep = ("iter", "loss", "nfl", "iou", "lr")  # timing columns differ, of course
    with path.open() as f:
        return [tuple(r[k] for k in keep) for r in csv.DictReader(f)]


def test_sigkill_then_resume_is_identical(tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=5)

    def overrides(out):
        ov = tiny_overrides(out, iters=str(ITERS), **{"run.checkpoint_every": "4"})
        return ov + folder_dataset_override(0, data)

    ref = train(load_config(CONFIGS / "demo_tiny.yaml", overrides(tmp_path / "ref")))

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "steadysam", "train", str(CONFIGS / "demo_tiny.yaml"),
           *overrides(run)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 60
    try:
        while not list_checkpoints(run / "checkpoints"):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint within 60 s"
            time.sleep(0.01)
        time.sleep(0.05)  # somewhere inside the next iterations
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = list_checkpoints(run / "checkpoints")[-1][0]
    assert 4 <= done < ITERS and not (run / "final.safetensors").exists()

    final = train(load_config(CONFIGS / "demo_tiny.yaml", overrides(run)))
    a = build_model(checkpoint=ref).state_dict()
    b = build_model(checkpoint=final).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(run / "log.csv") == _rows(ref.parent / "log.csv")
    assert len(_rows(run / "log.csv")) == ITERS
