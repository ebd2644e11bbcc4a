"""Training hardening: nothing a run writes lands in the installed package; checkpoints carry
their model config; resuming with other settings, a damaged checkpoint, an unwritable run folder,
a bad YAML or an unknown override are one-line errors (exit code 2) naming what is wrong; the
weights hashes are ``state_digest``. Data-file errors: test_train_hardening_data.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PROCESS_TIMEOUT, free_port
from test_train_support import (
    CONFIGS,
    REPO,
    TINY_REFINER,
    folder_dataset_override,
    make_folder_dataset,
    tiny_overrides,
)

import steadysam
from steadysam.cli import main as cli_main
from steadysam.models.build import build_sam
from steadysam.models.config import SamConfig
from steadysam.train.build import build_train_model
from steadysam.train.config import (
    OUTPUT_KEYS,
    RESUME_FREE_KEYS,
    ConfigError,
    load_config,
)
from steadysam.train.embed_cache import VERSION, CacheError
from steadysam.train.loop import train
from steadysam.train.state import (
    ResumeError,
    list_checkpoints,
    load_latest,
    save_state,
)
from steadysam.weights.digest import state_digest
from steadysam.weights.files import load_checkpoint

DEMO = CONFIGS / "demo_tiny.yaml"
PACKAGE = Path(steadysam.__file__).resolve().parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("data"), n=6)


def _ov(out: Path, data: Path, **extra: str) -> list[str]:
    return tiny_overrides(out, **extra) + folder_dataset_override(0, data)


def _cli(args: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of ``steadysam ...`` (stdout dropped)."""
    capsys.readouterr()
    rc = cli_main([str(a) for a in args])
    return rc, capsys.readouterr().err


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "Errno" not in err
    return lines[0]


def _tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (bytecode caches left out: Python writes those)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# -- 1. nothing is written into the installed package ----------------------------------------
def _inside_package(value) -> bool:
    return Path(value).resolve().is_relative_to(PACKAGE)


@pytest.mark.parametrize("recipe", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_no_shipped_recipe_writes_into_the_package(recipe, monkeypatch):
    monkeypatch.chdir(REPO)  # recipe paths are relative to the working directory
    raw = yaml.safe_load((CONFIGS / recipe).read_text())
    run = raw.get("run") or {}
    for key in ("export", "export_plugin"):  # the recipes leave exporting to the user
        assert run.get(key) is None, f"{recipe}: run.{key} is set to {run.get(key)!r}"
    cfg = load_config(CONFIGS / recipe)  # with its base chain; refused if it wrote there
    for key in OUTPUT_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        assert value is None or not _inside_package(value), f"{recipe}: {key} = {value!r}"


def test_a_demo_smoke_run_leaves_the_package_untouched(data, tmp_path, monkeypatch):
    """The three demo recipes, run for real (tiny model, a few iterations) from the repository
    root with their own run.export* settings: every file under src/steadysam is unchanged."""
    monkeypatch.chdir(REPO)
    before = _tree_hashes(PACKAGE)

    def ov(out, **extra):  # tiny, but the recipe's own export settings (no run.export* keys)
        return [o for o in _ov(tmp_path / out, data, **extra) if not o.startswith("run.export")]

    final1 = train(load_config(DEMO, ov("s1", iters="2")))
    extra = {"model.checkpoint": str(final1), "data.cache": "null", "iters": "2"}
    stage2 = {**extra, "model.arch.refiner": TINY_REFINER}
    train(load_config(CONFIGS / "demo_tiny_stage2.yaml", ov("s2", **stage2)))
    rts = {**extra, "model.arch.plugin": "{}", "epochs": "null"}
    train(load_config(CONFIGS / "demo_tiny_rts.yaml", ov("rts", **rts)))
    assert (tmp_path / "rts" / "plugin.safetensors").is_file()
    after = _tree_hashes(PACKAGE)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    # Edited Python sources are left out: a checkout shared with people editing it changes them
    # during the run, and a training run writes no Python. New or removed files of any kind and
    # every other file (weights, JSON, ...) count.
    changed = [k for k in changed if not (k.endswith(".py") and k in before and k in after)]
    assert not changed, f"files under {PACKAGE} changed: {changed}"


@pytest.mark.parametrize("key", OUTPUT_KEYS)
@pytest.mark.parametrize("where", ["relative", "absolute", "symlink", "package itself"])
def test_outputs_inside_the_package_are_refused(key, where, data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    target = {
        "relative": "src/steadysam/weights/demo_sam.safetensors",
        "absolute": str(PACKAGE / "weights" / "new.safetensors"),
        "symlink": str(tmp_path / "link" / "weights" / "demo_sam.safetensors"),
        "package itself": str(PACKAGE),
    }[where]
    (tmp_path / "link").symlink_to(PACKAGE, target_is_directory=True)
    ov = _ov(tmp_path / "run", data, iters="2", **{key: target})
    if key == "run.export_plugin":
        ov.append("model.arch.plugin={}")
    if key == "data.cache":
        ov.append("model.trainable=[mask_decoder]")  # a cache needs a frozen encoder
    with pytest.raises(ConfigError) as e:
        load_config(DEMO, ov)
    assert f"{key} {target!r} is inside the installed steadysam package" in str(e.value)
    rc, err = _cli(["train", DEMO, *ov], capsys)
    assert rc == 2 and target in _one_line_error(err)
    assert not (tmp_path / "run").exists()  # refused before anything was created


def test_paths_beside_the_package_are_allowed(data):
    # a sibling whose name starts with the package's is not inside it (nothing is written here)
    beside = PACKAGE.parent / f"{PACKAGE.name}_runs"
    ov = _ov(beside / "run", data, **{"run.export": str(beside / "x.safetensors")})
    frozen = ["model.trainable=[refiner]", "model.arch.refiner={}", "stage=refiner"]
    cfg = load_config(DEMO, [*ov, *frozen, "sim.box_prob=0", f"data.cache={beside / 'cache'}"])
    assert cfg.run.export == str(beside / "x.safetensors")


def test_embed_out_inside_the_package_is_refused(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    ov = _ov(tmp_path / "run", data, **{"model.trainable": "[mask_decoder]"})
    rc, err = _cli(["embed", DEMO, *ov, "--out", "src/steadysam/cache", "--no-progress"], capsys)
    assert rc == 2 and "--out 'src/steadysam/cache' is inside the installed" in err
    assert not (PACKAGE / "cache").exists()


def test_train_demo_script_copies_the_weights_itself():
    text = (REPO / "scripts" / "train_demo.sh").read_text()
    commands = "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#"))
    assert "run.export" not in commands  # refused into the package: the script copies instead
    for src, dst in [
        ('"$stage1"', "demo_sam.safetensors"),
        ('"$RUN/stage2/final.safetensors"', "demo_focsam.safetensors"),
        ('"$RUN/rts/plugin.safetensors"', "demo_stable_plugin.safetensors"),
    ]:
        assert f'publish {src} "$WEIGHTS/{dst}"' in text


@pytest.mark.multiprocess
def test_train_demo_script_is_valid_bash():
    res = subprocess.run(["bash", "-n", str(REPO / "scripts" / "train_demo.sh")])
    assert res.returncode == 0


# -- 2. checkpoints carry their model config -------------------------------------------------
def test_training_checkpoints_carry_the_model_config(data, tmp_path):
    cfg = load_config(DEMO, _ov(tmp_path / "run", data, iters="2", **{"epochs": "1"}))
    final = train(cfg)
    ((_, path),) = list_checkpoints(final.parent / "checkpoints")[-1:]
    state = _state(path)
    arch = cfg.arch()
    assert state["config"] == arch.to_dict()  # the model's SamConfig, not the training config
    assert SamConfig.from_dict(state["config"]) == arch
    model = build_sam(SamConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"], strict=True)  # the file is a model of its own
    assert state["train_config"]["iters"] == 3  # epochs 1 x 6 images / batch 2, resolved
    assert state["train_config"]["model"]["name"] == "focsam_tiny"
    assert state_digest(model) == state_digest(load_checkpoint(final)[0])


def test_save_state_unwraps_a_ddp_model(data, tmp_path):
    class Wrapped(torch.nn.Module):  # DistributedDataParallel keeps the model as .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    cfg = load_config(DEMO, _ov(tmp_path / "run", data))
    model = build_train_model(cfg)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    extra = {"config": "the caller's", "world_size": 2}  # cannot replace the model's config
    path = save_state(tmp_path / "ck", 7, Wrapped(model), opt, sched, extra)
    state = _state(path)
    assert state["config"] == model.config.to_dict() and state["world_size"] == 2
    assert set(state["model"]) == set(model.state_dict())  # no "module." prefixes
    assert state["iteration"] == 7


# -- 3. resuming with changed settings --------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    """A finished 4-iteration run (checkpoints at 2 and 4) and its overrides."""
    out = tmp_path_factory.mktemp("finished") / "run"
    ov = _ov(out, data, iters="4")
    train(load_config(DEMO, ov))
    return out, ov


def _folder_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "changes, listed",
    [
        (["optim.lr=3e-4"], ["optim.lr: 0.001 -> 0.0003"]),
        (["seed=1"], ["seed: 42 -> 1"]),
        (["iters=6"], ["iters: 4 -> 6"]),
        (["model.arch.encoder_depth=3"], ["model.arch.encoder_depth: 2 -> 3"]),
        (["model.trainable=[mask_decoder]"],
         ["model.trainable: [image_encoder, prompt_encoder, mask_decoder] -> [mask_decoder]"]),
        (["data.batch_size=4"], ["data.batch_size: 2 -> 4"]),
        (["data.color_aug=false"], ["data.color_aug: true -> false"]),
        (["data.datasets.0.gamma=0.9"], ["data.datasets.0.gamma: 0.6 -> 0.9"]),
        (["sim.max_rounds=2"], ["sim.max_rounds: 3 -> 2"]),
        (["loss.nfl_gamma=1.5"], ["loss.nfl_gamma: 2.0 -> 1.5"]),
        (["rts.k_range=[1, 5]"], ["rts.k_range: [1, 10] -> [1, 5]"]),
        (["model.pos_embed_init=zeros"], ["model.pos_embed_init: 'sincos' -> 'zeros'"]),
        (["optim.lr=3e-4", "seed=7", "optim.betas=[0.8, 0.9]"],
         ["seed: 42 -> 7", "optim.lr: 0.001 -> 0.0003", "optim.betas: [0.9, 0.999] -> [0.8, 0.9]"]),
    ],
)  # fmt: skip
def test_resume_with_changed_settings_is_refused(finished, changes, listed, capsys):
    out, ov = finished
    before = _folder_hashes(out)
    with pytest.raises(ConfigError) as e:
        train(load_config(DEMO, [*ov, *changes]))
    msg = str(e.value)
    for item in listed:
        assert item in msg
    assert msg.count(" -> ") == len(listed)  # exactly the changed settings
    assert "--no-resume" in msg and "run.out_dir" in msg and str(out) in msg
    rc, err = _cli(["train", DEMO, *ov, *changes], capsys)
    assert rc == 2 and listed[0] in _one_line_error(err)
    assert _folder_hashes(out) == before  # config.yaml, checkpoints, log: untouched


def test_resume_may_change_run_settings_and_stays_identical(data, tmp_path, capsys):
    """A run killed at iteration 4 of 6 resumes with other progress / logging / checkpoint /
    worker / export settings and ends bit for bit where the uninterrupted run ended."""
    out = tmp_path / "run"
    ov = _ov(out, data, iters="6", **{"run.keep_checkpoints": "5"})
    final = train(load_config(DEMO, ov))
    ref = load_checkpoint(final)[0]
    (out / "checkpoints" / "iter_0000006.pt").unlink()  # as if killed after iteration 4
    final.unlink()
    free = {
        "run.log_every": "3", "run.checkpoint_every": "5", "run.keep_checkpoints": "1",
        "run.progress": "true", "run.plot": "false", "data.num_workers": "1",
        "run.export": str(tmp_path / "exported.safetensors"), "run.device": "cpu",
        "run.out_dir": str(out) + "/",  # spelled differently
    }  # fmt: skip
    assert all(any(k == f or k.startswith(f + ".") for f in RESUME_FREE_KEYS) for k in free)
    capsys.readouterr()
    again = train(load_config(DEMO, [*ov, *(f"{k}={v}" for k, v in free.items())]))
    # resumed, not started over (which would end at the same weights too)
    assert "(iteration 4 of 6)" in capsys.readouterr().out
    assert state_digest(load_checkpoint(again)[0]) == state_digest(ref)
    assert (tmp_path / "exported.safetensors").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["log_every"] == 3


def test_epochs_are_compared_as_the_iterations_they_resolve_to(data, tmp_path):
    out = tmp_path / "run"
    ov = _ov(out, data, **{"epochs": "1", "iters": "999"})  # 6 images / batch 2: 3 iterations
    train(load_config(DEMO, ov))
    assert yaml.safe_load((out / "config.yaml").read_text())["iters"] == 3
    train(load_config(DEMO, [*ov, "epochs=null", "iters=3"]))  # the same run: resumes
    train(load_config(DEMO, [*ov, "iters=5"]))  # iters is replaced by epochs: the same run
    with pytest.raises(ConfigError, match=r"iters: 3 -> 6; epochs: 1\.0 -> 2\.0"):
        train(load_config(DEMO, [*ov, "epochs=2"]))


def test_no_resume_starts_over_and_drops_the_old_checkpoints(data, tmp_path, capsys):
    out = tmp_path / "run"
    ov = _ov(out, data, iters="6", **{"run.keep_checkpoints": "5"})
    train(load_config(DEMO, ov))
    assert [i for i, _ in list_checkpoints(out / "checkpoints")] == [2, 4, 6]
    capsys.readouterr()
    assert cli_main(["train", str(DEMO), *ov, "iters=2", "optim.lr=3e-4", "--no-resume"]) == 0
    assert "removed the 3 checkpoint(s) of the previous run" in capsys.readouterr().out
    found = list_checkpoints(out / "checkpoints")
    assert [i for i, _ in found] == [2]  # only the new run's: the old 4 and 6 are gone
    state = _state(found[0][1])
    assert state["train_config"]["iters"] == 2 and state["train_config"]["optim"]["lr"] == 3e-4
    train(load_config(DEMO, [*ov, "iters=2", "optim.lr=3e-4"]))  # and it resumes as itself


def test_missing_config_yaml_falls_back_to_the_checkpoints_copy(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    (out / "config.yaml").unlink()
    ov = [*finished[1], f"run.out_dir={out}"]
    with pytest.raises(ConfigError, match=r"iter_0000004\.pt.*optim\.lr: 0\.001 -> 0\.0003"):
        train(load_config(DEMO, [*ov, "optim.lr=3e-4"]))
    train(load_config(DEMO, ov))


def test_unreadable_config_yaml_is_refused(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    (out / "config.yaml").write_text("iters: [\n")
    with pytest.raises(ConfigError, match="cannot be read as a run config.*--no-resume"):
        train(load_config(DEMO, [*finished[1], f"run.out_dir={out}"]))


# -- 5. a damaged newest checkpoint -----------------------------------------------------------
def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif how == "not a training checkpoint":
        torch.save({"weights": torch.zeros(2)}, path)


@pytest.fixture(scope="module")
def six(tmp_path_factory, data):
    """A finished 6-iteration run with checkpoints 2, 4, 6 and its final weights' digest."""
    out = tmp_path_factory.mktemp("six") / "run"
    ov = _ov(out, data, iters="6", **{"run.keep_checkpoints": "3"})
    final = train(load_config(DEMO, ov))
    return out, ov, state_digest(load_checkpoint(final)[0])


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "not a training checkpoint"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(six, how, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(six[0], out)
    bad = out / "checkpoints" / "iter_0000006.pt"
    _damage(bad, how)
    (out / "final.safetensors").unlink()
    capsys.readouterr()
    assert cli_main(["train", str(DEMO), *six[1], f"run.out_dir={out}"]) == 0
    err = capsys.readouterr().err
    assert f"warning: checkpoint {str(bad)!r} cannot be read (" in err
    assert "moved aside to 'iter_0000006.pt.corrupt'" in err and "iter_0000004.pt" in err
    assert (out / "checkpoints" / "iter_0000006.pt.corrupt").is_file()  # kept for inspection
    assert state_digest(load_checkpoint(out / "final.safetensors")[0]) == six[2]  # identical
    assert [i for i, _ in list_checkpoints(out / "checkpoints")] == [2, 4, 6]


def test_no_readable_checkpoint_is_one_error_naming_them(six, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(six[0], out)
    ck = out / "checkpoints"
    for (_, p), how in zip(list_checkpoints(ck), ["garbage", "empty", "truncated"], strict=True):
        _damage(p, how)
    rc, err = _cli(["train", DEMO, *six[1], f"run.out_dir={out}"], capsys)
    line = _one_line_error(err)
    assert rc == 2 and "none of the 3 checkpoints" in line and str(ck) in line
    for name in ("iter_0000002.pt", "iter_0000004.pt", "iter_0000006.pt"):
        assert f"{name}: " in line and (ck / name).is_file()  # named, and nothing moved
    assert "an empty file" in line and "no zip index" in line and "--no-resume" in line
    with pytest.raises(ResumeError):
        load_latest(ck)


def test_load_latest_prefers_the_newest_readable(tmp_path):
    ck = tmp_path / "ck"
    assert load_latest(ck) is None
    cfg = load_config(DEMO, tiny_overrides(tmp_path / "x"))
    model = build_train_model(cfg)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    for it in (1, 2, 3):
        save_state(ck, it, model, opt, sched, {}, keep=3)
    _damage(ck / "iter_0000003.pt", "truncated")
    _damage(ck / "iter_0000002.pt", "garbage")
    warnings: list[str] = []
    it, path, state = load_latest(ck, move_aside=False, warn=warnings.append)
    assert (it, path.name, state["iteration"]) == (1, "iter_0000001.pt", 1)
    assert len(warnings) == 2 and "iter_0000003.pt" in warnings[0]
    assert not list(ck.glob("*.corrupt"))  # move_aside=False (the other ranks) moves nothing


@pytest.mark.multiprocess
def test_two_process_resume_after_a_damaged_checkpoint(data, tmp_path):
    """torchrun: rank 0 moves the damaged newest checkpoint aside (and says so once), both ranks
    resume from the previous one and end in sync; ranks.json holds state_digest of the final
    weights. (The checkpoints come from a one-process run, to save a torchrun launch.)"""
    out = tmp_path / "run"
    ov = _ov(out, data, iters="4", **{"data.batch_size": "4", "run.keep_checkpoints": "3"})
    train(load_config(DEMO, ov))
    _damage(out / "checkpoints" / "iter_0000004.pt", "truncated")
    (out / "final.safetensors").unlink()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "steadysam", "train", str(DEMO), *ov,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    res = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("cannot be read") == 1  # rank 0 reports it, once
    # Both ranks resumed from checkpoint 2 of the one-process run (a fresh start would end in
    # sync with the same checkpoint list too): rank 0 says so, and the files changed hands.
    first = out / "checkpoints" / "iter_0000002.pt"
    assert f"resuming from {str(first)!r} (iteration 2 of 4)" in res.stdout, res.stdout[-2000:]
    assert "warning: resuming a 1-process run on 2" in res.stderr
    assert _state(first)["world_size"] == 1
    assert _state(out / "checkpoints" / "iter_0000004.pt")["world_size"] == 2
    assert (out / "checkpoints" / "iter_0000004.pt.corrupt").is_file()
    ranks = json.loads((out / "ranks.json").read_text())
    final = state_digest(load_checkpoint(out / "final.safetensors")[0])
    assert ranks[0]["digest"] == ranks[1]["digest"] == final
    assert [i for i, _ in list_checkpoints(out / "checkpoints")] == [2, 4]


# -- 6. messages ------------------------------------------------------------------------------
def test_unusable_run_folders_are_one_line_errors(data, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    cases = [
        (blocker / "run", f"run.out_dir {str(blocker / 'run')!r}: cannot create the folder "
                          f"({str(blocker)!r} is a file)"),
        (blocker, f"run.out_dir {str(blocker)!r} exists and is not a folder"),
    ]  # fmt: skip
    for out, message in cases:
        rc, err = _cli(["train", DEMO, *_ov(out, data, iters="1")], capsys)
        assert rc == 2 and _one_line_error(err) == f"error: {message}"


@pytest.mark.parametrize("failing", ["mkdir", "write"])
def test_permission_errors_on_the_run_folder(failing, data, tmp_path, monkeypatch, capsys):
    import steadysam.train.loop as loop

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "run"))

    if failing == "mkdir":
        monkeypatch.setattr(Path, "mkdir", deny)
    else:
        monkeypatch.setattr(loop.tempfile, "mkstemp", deny)
    rc, err = _cli(["train", DEMO, *_ov(tmp_path / "run", data, iters="1")], capsys)
    what = "create the folder" if failing == "mkdir" else "write into the folder"
    assert rc == 2
    assert _one_line_error(err) == (
        f"error: run.out_dir {str(tmp_path / 'run')!r}: cannot {what} (permission denied)"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_parent_folder(data, tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        rc, err = _cli(["train", DEMO, *_ov(parent / "run", data, iters="1")], capsys)
    finally:
        parent.chmod(0o755)
    assert rc == 2 and "permission denied" in _one_line_error(err)


@pytest.mark.parametrize(
    "value, message",
    [
        ("{tmp}/afile/x.safetensors", "run.export '{tmp}/afile/x.safetensors': cannot create "
                                      "it ('{tmp}/afile' is a file)"),
        ("{tmp}", "run.export '{tmp}' is a folder; give a file name (.safetensors)"),
    ],
)  # fmt: skip
def test_bad_export_paths_fail_before_training(value, message, data, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    value, message = value.format(tmp=tmp_path), message.format(tmp=tmp_path)
    out = tmp_path / "run"
    rc, err = _cli(["train", DEMO, *_ov(out, data, iters="2"), f"run.export={value}"], capsys)
    assert rc == 2 and _one_line_error(err) == f"error: {message}"
    assert not list_checkpoints(out / "checkpoints")  # refused before the first iteration


def test_unwritable_export_folder_fails_before_training(data, tmp_path, monkeypatch, capsys):
    import steadysam.train.loop as loop

    real = os.access
    monkeypatch.setattr(
        loop.os, "access", lambda p, mode: False if Path(p) == tmp_path / "w" else real(p, mode)
    )
    (tmp_path / "w").mkdir()
    export = tmp_path / "w" / "x.safetensors"
    rc, err = _cli(["train", DEMO, *_ov(tmp_path / "run", data), f"run.export={export}"], capsys)
    assert rc == 2
    assert _one_line_error(err) == f"error: run.export {str(export)!r}: cannot write there " \
                                   "(permission denied)"  # fmt: skip


@pytest.mark.parametrize(
    "text, message",
    [
        ("stage: sam\nmodel:\n  name: x\n   arch: 1\n",
         "line 4, column 8: not valid YAML: mapping values are not allowed here"),
        ("stage: sam\noptim: {lr: [1, 2}\n",
         "line 2, column 18: not valid YAML: expected ',' or ']', but got '}' (while parsing a "
         "flow sequence started at line 2, column 13)"),
        ("iters: 'x\n", "not valid YAML: found unexpected end of stream (while scanning a "
                        "quoted scalar started at line 1, column 8)"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        (b"stage: \xff\xfe\n", "is not a UTF-8 text file (invalid start byte at byte 7)"),
    ],
)  # fmt: skip
def test_bad_yaml_is_one_line_with_its_position(text, message, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    rc, err = _cli(["train", bad], capsys)
    line = _one_line_error(err)
    assert rc == 2 and message in line and str(bad) in line
    child = tmp_path / "child.yaml"  # an error in a base file names the base file
    child.write_text("base: bad.yaml\niters: 3\n")
    rc, err = _cli(["train", child], capsys)
    assert rc == 2 and message in _one_line_error(err) and str(bad) in err


def test_config_path_errors(tmp_path, capsys):
    for path, message in [
        (tmp_path / "nope.yaml", f"training config {str(tmp_path / 'nope.yaml')!r}: no such file"),
        (tmp_path, f"training config {str(tmp_path)!r}: is a folder, not a file"),
    ]:
        rc, err = _cli(["train", path], capsys)
        assert rc == 2 and _one_line_error(err) == f"error: {message}"


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr' (known: lr, betas"),
        ("bogus.x=1", "unknown config key 'bogus' (known: stage, iters"),
        ("data.datasets.0.imgs=x", "unknown config key 'data.datasets.0.imgs' (known: type"),
        ("run.out_dir.x=1", "'run.out_dir.x': run.out_dir has no fields"),
        ("data.datasets.3.gamma=1", "'data.datasets.3': index out of range (list has 1 items)"),
        ("model.arch.encoder_dept=4", "model.arch: unknown SamConfig fields ['encoder_dept']"),
        ("=3", "override '=3' has no key before '='"),
        ("optim.lr", "override 'optim.lr' must look like key=value"),
        ("optim.betas=[0.9,", "override 'optim.betas=[0.9,': the value at character 6: not "
                              "valid YAML: expected the node content"),
        ("iters=many", "iters: expected int, got 'many'"),
    ],
)  # fmt: skip
def test_bad_overrides_are_one_line_errors(override, message, tmp_path, capsys):
    rc, err = _cli(["train", DEMO, f"run.out_dir={tmp_path / 'run'}", override], capsys)
    assert rc == 2 and message in _one_line_error(err)
    assert not (tmp_path / "run").exists()


def test_missing_dataset_folders(tmp_path, data, capsys):
    for key in ("images", "masks"):
        ov = [*_ov(tmp_path / "run", data), f"data.datasets.0.{key}={tmp_path / 'nowhere'}"]
        rc, err = _cli(["train", DEMO, *ov], capsys)
        assert rc == 2 and _one_line_error(err) == (
            f"error: dataset 'coco_mval' {key} {str(tmp_path / 'nowhere')!r}: no such folder"
        )
        assert not list_checkpoints(tmp_path / "run" / "checkpoints")


# -- 7. one weights hash ----------------------------------------------------------------------
def test_cache_fingerprint_is_state_digest_and_old_caches_are_refused(data, tmp_path, capsys):
    cache = tmp_path / "cache"
    ov = _ov(tmp_path / "run", data, iters="1", **{
        "model.trainable": "[mask_decoder]", "data.cache": str(cache)})  # fmt: skip
    embed = ["embed", DEMO, *ov, "--out", cache, "--no-progress"]
    assert _cli(embed, capsys)[0] == 0
    cfg = load_config(DEMO, ov)
    meta = json.loads((cache / "meta.json").read_text())
    assert VERSION == 2 and meta["version"] == 2
    assert meta["encoder"] == state_digest(build_train_model(cfg).image_encoder)
    train(cfg)  # the meta check accepts it
    for name in ("meta.json", "index.json"):  # a cache written by the old fingerprint
        doc = json.loads((cache / name).read_text())
        (doc if name == "meta.json" else doc["meta"])["version"] = 1
        (cache / name).write_text(json.dumps(doc))
    with pytest.raises(CacheError, match="format version 1, this steadysam reads version 2"):
        train(load_config(DEMO, [*ov, f"run.out_dir={tmp_path / 'run2'}"]))
    rc, err = _cli(embed, capsys)
    assert rc == 2 and "format version 1" in _one_line_error(err)


def test_the_training_code_has_one_weights_hash():
    src = PACKAGE / "train"
    for name in ("loop.py", "embed_cache.py"):
        text = (src / name).read_text()
        assert "state_digest" in text and "sha256" not in text, name
