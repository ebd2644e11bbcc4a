"""torchrun with 2 CPU processes (gloo on loopback): ranks see different samples and their
parameters are identical after a few optimizer steps; rank 0 exports a loadable model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import PROCESS_TIMEOUT, free_port
from test_train_support import (
    CONFIGS,
    REPO,
    folder_dataset_override,
    make_folder_dataset,
    tiny_overrides,
)

from steadysam.train.build import build_train_model
from steadysam.train.config import load_config
from steadysam.weights.factory import build_model

pytestmark = pytest.mark.multiprocess


def test_two_process_training_stays_in_sync(tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=6)
    out = tmp_path / "run"
    ov = tiny_overrides(out, iters="3", **{"data.batch_size": "4"}) + folder_dataset_override(
        0, data
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "steadysam", "train", str(CONFIGS / "demo_tiny.yaml"), *ov,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=PROCESS_TIMEOUT)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = json.loads((out / "ranks.json").read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["digest"] == ranks[1]["digest"]  # in sync after 3 steps
    assert ranks[0]["first_keys"] != ranks[1]["first_keys"]  # sharded data
    trained = build_model(checkpoint=out / "final.safetensors").state_dict()
    init = build_train_model(load_config(CONFIGS / "demo_tiny.yaml", ov)).state_dict()
    assert any(not torch.equal(init[k], trained[k]) for k in trained)
