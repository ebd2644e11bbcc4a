"""`steadysam eval` / `eval-prompts` must not trust their folder, weights, options or files.

Each test names the situation it guards against: a foreign --out, other weights behind the same
checkpoint path, runs that evaluate nothing, bad numeric options, damaged run files, an
unwritable --out. Models are fakes, or small random-weight checkpoint files.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval_support import (
    FakePredictor,
    make_folder,
    strip_timing,
    tiny_checkpoint,
    tiny_model,
)

from steadysam.cli import main
from steadysam.eval.metrics import summarize
from steadysam.eval.prompt_runner import PromptEvalConfig, evaluate_prompts
from steadysam.eval.report import dump_json, read_jsonl, read_records
from steadysam.eval.runner import EvalConfig, RunError, evaluate
from steadysam.weights.digest import state_digest

COMMANDS = ("eval", "eval-prompts")


class DiskFake:
    """A prompt-blind ``predict`` stand-in for eval-prompts: always the same disk."""

    def __init__(self, model=None) -> None:
        if model is not None:
            self.model = model
        self.size = (0, 0)
        self.last_encoder_seconds = 0.0

    def set_image(self, image):
        self.size = image.shape[:2]

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output=True):
        h, w = self.size
        yy, xx = np.mgrid[:h, :w]
        return ((yy - 14) ** 2 + (xx - 14) ** 2 <= 100)[None], np.ones(1), np.zeros((1, 4, 4))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> pathlib.Path:
    """Real (random, fixed) weights in a file: the CLI builds its own model from it."""
    return tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def argv(command: str, data, out, *extra: str, model=("--model", "m")) -> list[str]:
    """A CLI command line. The default model name does not exist: the checks under test must
    come before any model is built."""
    args = [command, *model, "--dataset", "folder", "--data-root", str(data), "--out", str(out)]
    if command == "eval-prompts":
        args += ["--prompts", "gt-box,points:1", "--draws", "2"]
    else:
        args += ["--clicks", "2"]
    return [*args, "--no-progress", "--device", "cpu", *extra]


def run(capsys, args: list[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def eval_cfg(tmp_path, data, **kw) -> EvalConfig:
    base = dict(dataset="folder", data_root=str(data), model="fake", out=str(tmp_path / "run"))
    return EvalConfig(**{**base, "clicks": 2, "progress": False, **kw})


def prompt_cfg(tmp_path, data, **kw) -> PromptEvalConfig:
    base = dict(dataset="folder", data_root=str(data), model="fake", out=str(tmp_path / "run"))
    return PromptEvalConfig(**{**base, "prompts": "gt-box,points:1", "draws": 2, **kw})


def strict_json(path: pathlib.Path):
    """Parse as strict JSON: NaN / Infinity are not JSON."""

    def bad(token):
        raise AssertionError(f"{path} holds {token}")

    return json.loads(path.read_text(), parse_constant=bad)


# -- 1. foreign run folders ------------------------------------------------------------------


def _png(path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)


FOREIGN = {
    "another tool's results": (
        {"summary.json": '{"accuracy": 0.93}', "model.pt": "weights"},
        "holds run results but no config.json",
    ),
    "a folder of user files": ({"notes.txt": "keep me"}, "not a steadysam run folder"),
    "a dataset": ({"images/a.png": None, "masks/a.png": None}, "looks like a dataset (images"),
    "loose images": ({"photo.jpg": "jpeg bytes"}, "looks like a dataset (photo.jpg"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", FOREIGN)
def test_foreign_out_folder_is_refused_and_left_untouched(tmp_path, capsys, command, case):
    data = make_folder(tmp_path / "d", n=2)
    out = tmp_path / "out"
    files, message = FOREIGN[case]
    for name, text in files.items():
        if text is None:
            _png(out / name)
        else:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(text)
    before = snapshot(out)
    code, err = run(capsys, argv(command, data, out))
    assert code == 2, err
    assert f"--out {out} is not empty" in err and message in err and "\n" not in err
    assert snapshot(out) == before  # nothing written, moved or deleted


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["the data root", "a new folder in the data root"])
def test_out_inside_the_dataset_is_refused(tmp_path, capsys, command, where):
    data = make_folder(tmp_path / "d", n=2)
    out = data if where == "the data root" else data / "runs" / "x"
    before = snapshot(data)
    code, err = run(capsys, argv(command, data, out))
    assert code == 2 and f"--out {out} is inside the dataset folder {data}" in err
    assert snapshot(data) == before and not (data / "runs").exists()


def test_hidden_files_do_not_make_a_folder_foreign(tmp_path):
    data = make_folder(tmp_path / "d", n=2)
    out = tmp_path / "run"
    out.mkdir()
    (out / ".gitkeep").write_text("")
    assert evaluate(eval_cfg(tmp_path, data), predictor=FakePredictor())["num_samples"] == 2
    assert (out / ".gitkeep").is_file()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "text, message",
    [
        ('{"kind": "eval", "config": {"clicks": 2', "config.json is not valid JSON (Expecting"),
        ("", "config.json is not valid JSON"),
        ('{"experiment": "mine", "lr": 0.1}', "config.json is not a steadysam run configuration"),
        ('["a", "list"]', "config.json is not a steadysam run configuration"),
        (b"\xc3\x28 not utf-8", "config.json: not UTF-8 text"),
    ],
)
def test_damaged_or_foreign_config_json_is_named(tmp_path, capsys, command, text, message):
    data = make_folder(tmp_path / "d", n=2)
    out = tmp_path / "out"
    out.mkdir()
    config = out / "config.json"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, err = run(capsys, argv(command, data, out))
    assert code == 2 and message in err and str(out) in err, err
    assert snapshot(out) == {"config.json": config.read_bytes()}


def test_the_other_commands_run_folder_is_refused(tmp_path, capsys):
    data = make_folder(tmp_path / "d", n=2)
    evaluate(eval_cfg(tmp_path, data, out=str(tmp_path / "clicks")), predictor=FakePredictor())
    evaluate_prompts(
        prompt_cfg(tmp_path, data, out=str(tmp_path / "prompts")), predictor=DiskFake()
    )
    for command, folder, other in (
        ("eval-prompts", "clicks", "`steadysam eval` run"),
        ("eval", "prompts", "`steadysam eval-prompts` run"),
    ):
        before = snapshot(tmp_path / folder)
        code, err = run(capsys, argv(command, data, tmp_path / folder))
        assert code == 2 and f"{tmp_path / folder} holds a {other}" in err, err
        assert snapshot(tmp_path / folder) == before


def test_differing_fields_are_listed_with_both_values(tmp_path, capsys):
    data = make_folder(tmp_path / "d", n=2)
    out = tmp_path / "run"
    evaluate(eval_cfg(tmp_path, data), predictor=FakePredictor())
    before = snapshot(out)
    code, err = run(capsys, argv("eval", data, out, "--clicks", "3", "--clicker", "focsam"))
    assert code == 2 and "different configuration" in err, err
    assert "clicks: 2 there, 3 now" in err and "clicker: 'ritm' there, 'focsam' now" in err
    assert snapshot(out) == before
    evaluate_prompts(prompt_cfg(tmp_path, data, out=str(tmp_path / "p")), predictor=DiskFake())
    code, err = run(capsys, argv("eval-prompts", data, tmp_path / "p", "--seed", "3"))
    assert code == 2 and "seed: 0 there, 3 now" in err, err


def test_a_run_folder_without_result_lines_takes_a_corrected_command(tmp_path):
    """Nothing to stay consistent with (say the model failed to load): config may change."""
    data = make_folder(tmp_path / "d", n=2)
    evaluate(eval_cfg(tmp_path, data), predictor=FakePredictor())
    (tmp_path / "run" / "parts" / "rank-000.jsonl").write_text("")
    s = evaluate(eval_cfg(tmp_path, data, clicks=3), predictor=FakePredictor())
    assert s["num_samples"] == 2 and s["clicks"] == 3
    doc = json.loads((tmp_path / "run" / "config.json").read_text())
    assert doc["config"]["clicks"] == 3 and len(doc["invocations"]) == 2


# -- 2. the weights behind a path ------------------------------------------------------------


def _linear(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def test_resume_with_other_weights_is_refused_same_weights_resume(tmp_path):
    data = make_folder(tmp_path / "d", n=4)
    a, b = _linear(0), _linear(1)
    evaluate(eval_cfg(tmp_path, data, limit=2), predictor=FakePredictor(model=a))
    before = snapshot(tmp_path / "run")
    with pytest.raises(RunError, match="holds results of other weights") as e:
        evaluate(eval_cfg(tmp_path, data), predictor=FakePredictor(model=b))
    assert state_digest(a) in str(e.value) and state_digest(b) in str(e.value)
    assert snapshot(tmp_path / "run") == before
    conf = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert conf["weights_digest"] == state_digest(a)
    s = evaluate(eval_cfg(tmp_path, data), predictor=FakePredictor(model=_linear(0)))
    assert s["num_samples"] == 4 and s["weights_digest"] == state_digest(a)
    # eval-prompts: the same rule.
    evaluate_prompts(
        prompt_cfg(tmp_path, data, out=str(tmp_path / "p"), limit=2), predictor=DiskFake(a)
    )
    with pytest.raises(
        RunError, match=f"weights digest {state_digest(a)} there, {state_digest(b)}"
    ):
        evaluate_prompts(prompt_cfg(tmp_path, data, out=str(tmp_path / "p")), predictor=DiskFake(b))


def test_a_predictor_without_a_model_records_no_digest(tmp_path):
    data = make_folder(tmp_path / "d", n=2)
    s = evaluate(eval_cfg(tmp_path, data, limit=1), predictor=FakePredictor())
    assert s["weights_digest"] is None
    conf = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert "weights_digest" in conf and conf["weights_digest"] is None
    assert evaluate(eval_cfg(tmp_path, data), predictor=FakePredictor())["num_samples"] == 2


@pytest.mark.parametrize("command", COMMANDS)
def test_checkpoint_file_replaced_between_runs_is_refused(tmp_path, capsys, command):
    data = make_folder(tmp_path / "d", n=3)
    weights = tmp_path / "model.safetensors"
    tiny_checkpoint(weights, seed=0)
    out = tmp_path / "run"
    model = ("--checkpoint", str(weights))
    code, err = run(capsys, argv(command, data, out, "--limit", "1", model=model))
    assert code == 0, err
    tiny_checkpoint(weights, seed=1)  # other weights, same path
    before = snapshot(out)
    code, err = run(capsys, argv(command, data, out, model=model))
    assert code == 2, err  # not a run merging the results of both weights
    assert "holds results of other weights" in err and f"checkpoint {weights}" in err
    first, second = state_digest(tiny_model(seed=0)), state_digest(tiny_model(seed=1))
    assert f"weights digest {first} there, {second} now" in err
    assert snapshot(out) == before
    assert json.loads(before["config.json"])["config"]["weights_digest"] == first


# -- 3. runs that evaluate nothing -----------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("masks", [0, 2])
def test_a_dataset_without_images_is_an_error(tmp_path, capsys, ckpt, command, masks):
    data = tmp_path / "empty"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for i in range(masks):
        _png(data / "masks" / f"m{i}.png")
    out = tmp_path / "run"
    code, err = run(capsys, argv(command, data, out, model=("--checkpoint", str(ckpt))))
    assert code == 2 and f"dataset folder at {data} has no images" in err, err
    if masks:
        assert "(2 mask files without an image)" in err
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("command, what", [("eval", "samples"), ("eval-prompts", "objects")])
def test_all_samples_failing_exits_1_with_the_first_error(tmp_path, capsys, ckpt, command, what):
    data = make_folder(tmp_path / "d", n=3)
    for mask in (data / "masks").iterdir():
        mask.write_bytes(b"not a png")
    out = tmp_path / "run"
    code, err = run(capsys, argv(command, data, out, model=("--checkpoint", str(ckpt))))
    assert code == 1, err
    assert f"error: all 3 {what} failed; first error: s000: " in err
    summary = strict_json(out / "summary.json")  # written, with the errors, and no NaN
    assert summary["num_samples"] == 0 and summary["num_errors"] == 3
    table = (out / ("results.md" if command == "eval" else "summary.md")).read_text()
    assert "–" in table and "nan" not in table.lower()
    if command == "eval":
        assert summary["noc"]["90"] is None and summary["miou"] == [None, None]


def test_masks_without_any_object_are_an_error(tmp_path):
    data = make_folder(tmp_path / "d", n=2)
    for mask in (data / "masks").iterdir():  # palette masks holding only the void label 255
        m = Image.new("P", (64, 48), 255)
        m.putpalette([v for i in range(256) for v in (i, i, i)])
        m.save(mask)
    with pytest.raises(RunError, match="masks of the images evaluated hold no object"):
        evaluate(eval_cfg(tmp_path, data), predictor=FakePredictor())


def test_limit_zero_is_refused_not_a_nan_summary(tmp_path):
    data = make_folder(tmp_path / "d", n=2)
    with pytest.raises(RunError, match="--limit must be an integer >= 1, not 0"):
        evaluate(eval_cfg(tmp_path, data, limit=0), predictor=FakePredictor())
    with pytest.raises(RunError, match="--limit must be an integer >= 1, not 0"):
        evaluate_prompts(prompt_cfg(tmp_path, data, limit=0), predictor=DiskFake())
    assert not (tmp_path / "run").exists()


def _walk(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)
    else:
        yield obj


def test_metrics_without_data_are_none_never_nan():
    s = summarize([], budget=3)
    assert not any(isinstance(v, float) and math.isnan(v) for v in _walk(s))
    assert s["noc"]["90"] is None and s["nof"]["90"] is None and s["miou"] == [None] * 3
    assert s["stability"]["mean_drop"] is None and s["stability"]["drop_rate"] is None
    # A 1-click budget has no click transition: no drop rate (not a rate of 0).
    one = {"id": "a", "image": "a", "ious": [0.5], "num_clicks": 1, "worst_drop": 0.0}
    one["timing"] = {k: 0.0 for k in ("encoder", "decoder", "refiner", "harness", "wall")}
    st = summarize([one], budget=1)["stability"]
    assert st["drop_rate"] is None and st["mean_drop"] is None and st["worst_drop_mean"] == 0.0
    assert json.loads(dump_json({"x": float("nan"), "y": [float("inf"), 1.0]})) == {
        "x": None,
        "y": [None, 1.0],
    }


# -- 4. numeric options ----------------------------------------------------------------------

NO_CUDA = not torch.cuda.is_available()
BAD_EVAL = [
    (["--clicks", "0"], "--clicks must be an integer >= 1, not 0"),
    (["--clicks", "-3"], "--clicks must be an integer >= 1, not -3"),
    (["--limit", "0"], "--limit must be an integer >= 1, not 0"),
    (["--limit", "-2"], "--limit must be an integer >= 1, not -2"),
    (["--seed", "-1"], "--seed must be an integer >= 0, not -1"),
    (["--inner-k", "0.5"], "--inner-k must be a number >= 1"),
    (["--inner-k", "nan"], "not nan"),
    (["--inner-k", "inf"], "not inf"),
    (["--refine-at", "2"], "--refine-at must be a 0-based click index from 0 to --clicks - 1"),
    (["--refine-at", "-1"], "or never (no refiner), not -1"),
    (["--device", "foo"], "--device 'foo' is not a device name; use cpu, cuda, cuda:N or mps"),
    (["--device", "cuda:99"], "--device 'cuda:99': "),
]
if NO_CUDA:
    BAD_EVAL.append(
        (["--device", "cuda"], "--device 'cuda': CUDA is not available on this machine")
    )
BAD_PROMPTS = [
    (["--draws", "1001"], "--draws must be an integer from 1 to 1000, not 1001"),
    (["--limit", "0"], "--limit must be an integer >= 1, not 0"),
    (["--seed", "-1"], "--seed must be an integer >= 0, not -1"),
    (["--device", "foo"], "--device 'foo' is not a device name"),
    (["--device", "cuda:99"], "--device 'cuda:99': "),
    (["--prompts", "noisy-box:0"], "'noisy-box:0'"),
    (["--prompts", "noisy-box:2.5"], "'noisy-box:2.5'"),
    (["--prompts", "noisy-box:nan"], "'noisy-box:nan'"),
    (["--prompts", "points:0"], "'points:0'"),
    (["--prompts", "points:101"], "'points:101'"),
]


CASES = [("eval", *c) for c in BAD_EVAL] + [("eval-prompts", *c) for c in BAD_PROMPTS]


@pytest.mark.parametrize("command, extra, message", CASES)
def test_bad_numbers_exit_2_with_one_line_naming_option_and_value(
    tmp_path, capsys, command, extra, message
):
    data = make_folder(tmp_path / "d", n=1)
    out = tmp_path / "out"
    code, err = run(capsys, argv(command, data, out, *extra))
    assert code == 2, err
    assert err.startswith("error:") and message in err and "\n" not in err, err
    assert "Traceback" not in err and not out.exists()


def test_config_objects_validate_types_and_ranges():
    for kw, message in (
        ({"clicks": 2.5}, "--clicks must be an integer >= 1, not 2.5"),
        ({"clicks": True}, "--clicks must be an integer >= 1, not True"),
        ({"seed": -5}, "--seed must be an integer >= 0, not -5"),
        ({"seed": "7"}, "--seed must be an integer >= 0, not '7'"),
        ({"limit": 0}, "--limit"),
        ({"inner_k": float("inf")}, "--inner-k"),
        ({"inner_k": "1"}, "--inner-k"),
        ({"refine_at": 20}, "--refine-at"),
        ({"refine_at": "1"}, "--refine-at"),
        ({"device": "gpu0"}, "--device 'gpu0' is not a device name"),
        ({"device": "meta"}, "--device 'meta': unsupported device type 'meta'"),
    ):
        with pytest.raises(RunError, match=message.replace("(", r"\(")):
            EvalConfig(dataset="folder", **kw).validate()
    for kw, message in (
        ({"draws": 0}, "--draws must be an integer from 1 to 1000, not 0"),
        ({"draws": 2.0}, "--draws must be an integer from 1 to 1000, not 2.0"),
        ({"seed": -1}, "--seed"),
        ({"limit": -1}, "--limit"),
        ({"device": "foo"}, "--device 'foo'"),
    ):
        with pytest.raises(RunError, match=message):
            PromptEvalConfig(dataset="folder", **kw).validate()
    EvalConfig(dataset="folder", clicks=1).validate()  # the default --refine-at 1 with 1 click
    EvalConfig(dataset="folder", clicks=5, refine_at=4, device="cpu").validate()
    PromptEvalConfig(dataset="folder", draws=1).validate()  # one draw: stability is null


def test_refine_at_never_disables_the_refiner(tmp_path):
    from steadysam.eval.cli import _refine_at

    assert _refine_at("never") is None and _refine_at("3") == 3
    data = make_folder(tmp_path / "d", n=2)
    evaluate(eval_cfg(tmp_path, data, clicks=3, refine_at=None), predictor=FakePredictor())
    assert all(r["timing"]["refiner"] == 0 for r in read_records(tmp_path / "run"))
    conf = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert conf["refine_at"] is None


# -- 6. damaged run files --------------------------------------------------------------------


def _reference(tmp_path, data) -> list[dict]:
    evaluate(eval_cfg(tmp_path, data, out=str(tmp_path / "ref")), predictor=FakePredictor())
    return read_records(tmp_path / "ref")


@pytest.mark.parametrize(
    "damage, warning",
    [
        ("cut", "rank-000.jsonl:4: dropping the incomplete last line"),
        ("no-newline", "rank-000.jsonl:4: dropping the incomplete last line"),
        ("not-utf8", "rank-000.jsonl:3: dropping a line that is not valid JSON"),
        ("not-a-record", "rank-000.jsonl:3: dropping a line that is not a sample record"),
        ("no-id", "rank-000.jsonl:3: dropping a line that is not a sample record"),
    ],
)
def test_damaged_part_lines_do_not_stop_a_resume(tmp_path, capsys, damage, warning):
    data = make_folder(tmp_path / "d", n=5)
    ref = _reference(tmp_path, data)
    evaluate(eval_cfg(tmp_path, data, limit=3), predictor=FakePredictor())
    part = tmp_path / "run" / "parts" / "rank-000.jsonl"
    lines = part.read_bytes().splitlines(keepends=True)
    s003 = json.dumps(ref[3]).encode()
    if damage == "cut":  # SIGKILL in the middle of writing sample 3
        part.write_bytes(b"".join(lines) + s003[:40])
    elif damage == "no-newline":  # ... or between its last byte and the newline
        part.write_bytes(b"".join(lines) + s003)
    else:
        bad = {"not-utf8": b"\xc3\x28 garbage\n", "not-a-record": b"[1, 2]\n"}
        bad["no-id"] = b'{"ious": [1.0]}\n'
        part.write_bytes(b"".join(lines[:2]) + bad[damage] + lines[2])
    capsys.readouterr()
    s = evaluate(eval_cfg(tmp_path, data), predictor=FakePredictor())
    err = capsys.readouterr().err
    assert f"warning: {part.parent / warning}" in err, err
    assert s["num_samples"] == 5 and s["num_errors"] == 0
    recs = read_records(tmp_path / "run")
    assert strip_timing(recs) == strip_timing(ref)
    ids = [r["id"] for r in read_jsonl(part)]
    assert sorted(ids) == [r["id"] for r in ref]  # nothing lost, nothing evaluated twice


def test_prompt_records_line_without_newline_is_evaluated_again(tmp_path):
    data = make_folder(tmp_path / "d", n=3)
    ref = evaluate_prompts(
        prompt_cfg(tmp_path, data, out=str(tmp_path / "ref")), predictor=DiskFake()
    )
    records = tmp_path / "run" / "records.jsonl"
    evaluate_prompts(prompt_cfg(tmp_path, data), predictor=DiskFake())
    records.write_bytes(records.read_bytes().rstrip(b"\n"))  # killed before the last newline
    s = evaluate_prompts(prompt_cfg(tmp_path, data), predictor=DiskFake())
    assert s["num_samples"] == 3 and s["settings"] == ref["settings"]
    assert len(read_jsonl(records)) == 3


# -- unwritable --out ------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_out_under_a_file_or_a_file_is_refused_by_name(tmp_path, capsys, command):
    data = make_folder(tmp_path / "d", n=1)
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    code, err = run(capsys, argv(command, data, blocker / "run"))
    assert code == 2, err
    assert f"run folder {blocker / 'run'} cannot be created: {blocker} is a file" in err
    code, err = run(capsys, argv(command, data, blocker))
    assert code == 2 and f"run folder {blocker} is a file, not a folder" in err, err
    assert "[Errno" not in err and blocker.read_text() == "mine"


@pytest.mark.parametrize("command", COMMANDS)
def test_permission_denied_on_out_is_refused_by_name(tmp_path, capsys, monkeypatch, command):
    data = make_folder(tmp_path / "d", n=1)
    locked = tmp_path / "locked"
    real = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):  # as on a folder without write permission (tests run as root)
        if locked in [self, *self.parents]:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    code, err = run(capsys, argv(command, data, locked / "run"))
    assert code == 2, err
    assert f"cannot create run folder {locked / 'run'}: Permission denied" in err
    assert "[Errno" not in err
