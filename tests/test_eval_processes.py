"""Real processes: SIGKILL mid-run + restart, and a 2-rank torchrun (gloo on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROCESS_TIMEOUT, free_port, sigkill_at
from test_eval_support import FakePredictor, make_folder, strip_timing

from steadysam.eval import EvalConfig, evaluate, read_records
from steadysam.eval.report import read_jsonl

pytestmark = pytest.mark.multiprocess

TESTS = Path(__file__).resolve().parent
SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from test_eval_support import FakePredictor
from steadysam.eval.runner import EvalConfig, evaluate
cfg = EvalConfig(**json.loads(sys.argv[1]))
evaluate(cfg, predictor_factory=lambda c: FakePredictor(radius=6))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _script(tmp_path: Path) -> Path:
    p = tmp_path / "run_eval.py"
    p.write_text(SCRIPT.format(tests=str(TESTS)))
    return p


def _config(data: Path, out: Path, **kw) -> dict:
    d = dict(
        dataset="folder", data_root=str(data), model="fake", out=str(out), clicks=5, progress=False
    )
    d.update(kw)
    return d


def test_sigkill_then_restart_loses_and_duplicates_nothing(tmp_path):
    data = make_folder(tmp_path / "d", n=16)
    out = tmp_path / "run"
    script = _script(tmp_path)
    conf = json.dumps(_config(data, out))
    part = out / "parts" / "rank-000.jsonl"
    # SIGKILLed right after the 4th sample line was written (not "after a while": on a fast
    # machine the run would be over, on a slow one not started).
    sigkill_at("steadysam.eval.runner:JsonlAppender.write", 4, tmp_path / "child", [conf],
               script=script, env=_env())  # fmt: skip
    n_before = len(read_jsonl(part))
    assert n_before == 4 and not (out / "summary.json").exists()
    with open(part, "ab") as f:  # as if the kill had hit the middle of a write
        f.write(b'{"id": "s0')
    subprocess.run(
        [sys.executable, str(script), conf], env=_env(), check=True, timeout=PROCESS_TIMEOUT
    )
    recs = read_records(out)
    assert [r["id"] for r in recs] == [f"s{i:03d}" for i in range(16)]
    lines = read_jsonl(part)
    assert len(lines) == 16 and len({r["id"] for r in lines}) == 16  # nothing evaluated twice
    ref = evaluate(EvalConfig(**_config(data, tmp_path / "ref")), predictor=FakePredictor(radius=6))
    assert strip_timing(recs) == strip_timing(read_records(tmp_path / "ref"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["noc"] == ref["noc"] and summary["miou"] == ref["miou"]
    assert len(json.loads((out / "config.json").read_text())["invocations"]) == 2


def test_torchrun_two_ranks_equals_single_process(tmp_path):
    data = make_folder(tmp_path / "d", n=7)
    out = tmp_path / "dist"
    conf = json.dumps(_config(data, out, clicker="focsam", clicks=4))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--nnodes",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(_script(tmp_path)),
        conf,
    ]
    r = subprocess.run(cmd, env=_env(), timeout=PROCESS_TIMEOUT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    parts = sorted(p.name for p in (out / "parts").iterdir())
    assert parts == ["rank-000.jsonl", "rank-001.jsonl"]
    assert [len(read_jsonl(out / "parts" / p)) for p in parts] == [4, 3]  # images 0,2,4,6 / 1,3,5
    single = evaluate(
        EvalConfig(**_config(data, tmp_path / "single", clicker="focsam", clicks=4)),
        predictor=FakePredictor(radius=6),
    )
    merged = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert strip_timing(merged) == strip_timing(read_records(tmp_path / "single"))
    summary = json.loads((out / "summary.json").read_text())
    for k in ("noc", "nof", "nof_ritm", "miou", "stability", "num_samples"):
        assert summary[k] == single[k], k
