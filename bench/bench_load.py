"""Encoder speed under CPU contention: official segment-anything vs steadysam, same weights,
side by side in one process, with one busy competing process per core.

    python bench/bench_load.py                        # OMP_WAIT_POLICY passive, active, unset
    python bench/bench_load.py --policies PASSIVE --threads 1 2 --repeats 3

For every (OpenMP wait policy, thread count) a fresh process (the policy is read when the
OpenMP runtime starts) builds both ViT-B encoders, times them interleaved without load, then
starts one busy process per core (a pure-Python spin loop, or ``--load numpy``: a
single-threaded numpy matmul loop) and times them interleaved again. Prints min-of-N wall
times, ours / official, and how much each slowed down.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SPIN = {
    "python": "while True:\n    pass\n",
    "numpy": (
        "import numpy as np\n"
        "a = np.random.rand(512, 512)\n"
        "while True:\n"
        "    a = a @ a\n"
        "    a /= np.abs(a).max()\n"
    ),
}


def start_load(n: int, kind: str) -> list[subprocess.Popen]:
    """n busy processes (single-threaded: BLAS / OpenMP limited to one thread)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen([sys.executable, "-c", SPIN[kind]], env=env, stdout=subprocess.DEVNULL)
        for _ in range(n)
    ]
    time.sleep(1.0)  # let them start spinning
    return procs


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def child(threads: int, repeats: int, load: int, kind: str, size: int) -> dict:
    """Runs in the fresh process: both encoders, unloaded then loaded, interleaved."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from official_sam import build_official_sam

    from steadysam import build_model
    from steadysam.memory import retain_freed_memory

    torch.set_num_threads(threads)
    retain_freed_memory()  # both run with the Predictor's malloc settings (bench_sam.py)
    official = build_official_sam(768, 12, 12, (2, 5, 8, 11)).eval()
    ours = build_model("sam_vit_b", random_init=True).eval()
    ours.load_state_dict(official.state_dict())
    x = torch.randn(1, 3, size, size)

    def timed(model) -> float:
        t = time.perf_counter()
        model.image_encoder(x)
        return time.perf_counter() - t

    res = {}
    with torch.inference_mode():
        timed(ours), timed(official)  # warm-up (oneDNN primitives, allocator)
        for phase in ("idle", "loaded"):
            procs = start_load(load, kind) if phase == "loaded" else []
            try:
                t_off = t_ours = float("inf")
                for _ in range(repeats):
                    t_off = min(t_off, timed(official))
                    t_ours = min(t_ours, timed(ours))
            finally:
                stop_load(procs)
            res[phase] = {"official_s": t_off, "ours_s": t_ours, "ratio": t_ours / t_off}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--policies",
        nargs="+",
        default=["PASSIVE", "ACTIVE", "unset"],
        help="OMP_WAIT_POLICY values; unset = the runtime's default",
    )
    ap.add_argument("--threads", type=int, nargs="+", default=[min(2, os.cpu_count() or 1)])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--load", type=int, default=os.cpu_count() or 1, help="busy processes")
    ap.add_argument("--kind", choices=sorted(SPIN), default="python")
    ap.add_argument("--size", type=int, default=1024, help="input side in pixels")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        out = child(args.threads[0], args.repeats, args.load, args.kind, args.size)
        print(json.dumps(out))
        return
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.load} busy {args.kind} processes, ViT-B {args.size}^2, min of {args.repeats}",
        flush=True,
    )
    results = []
    for policy in args.policies:
        for threads in args.threads:
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy != "unset":  # unset: the OpenMP runtime's default (spin, then sleep)
                env["OMP_WAIT_POLICY"] = policy
            cmd = [sys.executable, __file__, "--child", "--threads", str(threads)]
            cmd += ["--repeats", str(args.repeats), "--load", str(args.load)]
            cmd += ["--kind", args.kind, "--size", str(args.size)]
            run = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"child failed ({policy}, {threads} threads):\n{run.stderr}")
            r = json.loads(run.stdout.strip().splitlines()[-1])
            r.update(policy=policy, threads=threads)
            results.append(r)
            idle, loaded = r["idle"], r["loaded"]
            print(
                f"OMP_WAIT_POLICY={policy:7s} threads {threads}: idle official "
                f"{idle['official_s']:.2f} s, ours {idle['ours_s']:.2f} s ({idle['ratio']:.2f}x) | "
                f"loaded official {loaded['official_s']:.2f} s, ours {loaded['ours_s']:.2f} s "
                f"(**{loaded['ratio']:.2f}x**) | slowdown official "
                f"{loaded['official_s'] / idle['official_s']:.1f}x, ours "
                f"{loaded['ours_s'] / idle['ours_s']:.1f}x",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
