"""`steadysam report` must not average or tabulate runs that are not comparable without saying
so, and must name the file when a summary cannot be used (docs/eval.md, "Reports")."""

from __future__ import annotations

import json
import pathlib

import pytest
from test_eval_hardening import DiskFake
from test_eval_support import FakePredictor, make_folder

from steadysam.cli import main
from steadysam.eval.prompt_runner import PromptEvalConfig, evaluate_prompts
from steadysam.eval.report import ReportError, report
from steadysam.eval.runner import EvalConfig, evaluate


@pytest.fixture
def data(tmp_path) -> pathlib.Path:
    return make_folder(tmp_path / "d", n=4)


def click_run(tmp_path, data, name, radius=10, **kw) -> str:
    out = tmp_path / name
    conf = dict(dataset="folder", data_root=str(data), model="fake", clicks=3, out=str(out))
    evaluate(EvalConfig(**{**conf, "progress": False, **kw}), predictor=FakePredictor(radius))
    return str(out)


def prompt_run(tmp_path, data, name, **kw) -> str:
    out = tmp_path / name
    conf = dict(dataset="folder", data_root=str(data), model="fake", prompts="gt-box,points:1")
    conf = {**conf, "draws": 2, "out": str(out), "progress": False, **kw}
    evaluate_prompts(PromptEvalConfig(**conf), predictor=DiskFake())
    return str(out)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["report", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


@pytest.mark.parametrize(
    "a, b, field, values",
    [
        ({}, {"clicks": 5}, "clicks", "3, {b}: 5"),
        ({}, {"clicker": "focsam"}, "clicker", "ritm, {b}: focsam"),
        ({"clicker": "focsam"}, {"clicker": "focsam", "inner_k": 1.7}, "inner_k", "1.0, {b}: 1.7"),
        ({}, {"ignore": "background"}, "ignore on folder", "exclude, {b}: background"),
    ],
)
def test_click_runs_of_different_benchmarks_are_refused(
    tmp_path, data, capsys, a, b, field, values
):
    ra = click_run(tmp_path, data, "a", **a)
    rb = click_run(tmp_path, data, "b", **b)
    listed = f"{field} ({ra}: " + values.format(b=rb) + ")"
    with pytest.raises(ReportError, match="cannot be reported together") as e:
        report([ra, rb])
    assert listed in str(e.value)
    code, out, err = cli(capsys, ra, rb, "--out", str(tmp_path / "rep"))
    assert code == 2 and listed in err and "\n" not in err and out == ""
    assert not (tmp_path / "rep").exists()


def test_method_settings_that_differ_are_stated_in_the_rows(tmp_path, data, capsys):
    ra = click_run(tmp_path, data, "a", clicker="focsam", seed=1)
    rb = click_run(tmp_path, data, "b", clicker="focsam", seed=2, refine_at=None)
    md = report([ra, rb])
    rows = ("(refine_at=1, seed=1)", "(refine_at=none, seed=2)")
    for row in (f"fake [focsam/focsam] {r}" for r in rows):
        assert f"| {row} |" in md  # in both tables: no row hides the other
        assert md.count(f"| {row} |") == 2
    assert "**Note:** the runs differ in refine_at, seed, stated in the method names." in md
    assert "the runs differ in refine_at, seed" in capsys.readouterr().err


def test_precision_is_stated_and_old_runs_count_as_fp32(tmp_path, data):
    ra = click_run(tmp_path, data, "a", precision="bf16")
    rb = click_run(tmp_path, data, "b")
    summary = pathlib.Path(rb) / "summary.json"  # a run written before precision existed
    old = json.loads(summary.read_text())
    del old["precision"]
    summary.write_text(json.dumps(old))
    md = report([ra, rb])
    assert "| fake [focsam/ritm] (precision=bf16) |" in md
    assert "| fake [focsam/ritm] (precision=fp32) |" in md
    pa, pb = prompt_run(tmp_path, data, "pa", precision="bf16"), prompt_run(tmp_path, data, "pb")
    md = report([pa, pb])
    assert "(precision=bf16)" in md and "(precision=fp32)" in md


def test_runs_with_the_same_label_on_one_dataset_both_appear(tmp_path, data):
    ra = click_run(tmp_path, data, "a", radius=10)
    rb = click_run(tmp_path, data, "b", radius=4)  # other weights, same name
    md = report([ra, rb])
    paper = md.split("\n\n| Method | Dataset")[0]
    assert f"| fake [focsam/ritm] @ {ra} |" in paper and f"| fake [focsam/ritm] @ {rb} |" in paper
    nocs = [line.split(" | ")[2] for line in paper.splitlines() if line.startswith("| fake")]
    assert nocs[0] != nocs[1]  # two different results, neither overwritten
    with pytest.raises(ReportError, match="is given twice"):
        report([ra, str(pathlib.Path(ra) / "summary.json")])


def test_different_datasets_are_columns_and_sample_counts_are_noted(tmp_path, data, capsys):
    ra = click_run(tmp_path, data, "a")
    rb = click_run(tmp_path, data, "b", dataset="coco_mval")  # same files, another loader
    rc = click_run(tmp_path, data, "c", limit=2)
    md = report([ra, rb, rc], tmp_path / "rep")
    assert "| Method | SPC s (dec.) | COCO-MVal | folder | mean |" in md
    note = f"the runs on folder evaluated different numbers of samples ({ra}: 4, {rc}: 2)"
    assert note in md and note in capsys.readouterr().err
    assert (tmp_path / "rep" / "report.md").read_text() == md


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is not valid JSON (Expecting value: line 1 column 1)"),
        (b'{"label": "x", "noc": {"8', "is not valid JSON (Unterminated string"),
        (b"NoC@90: 1.5", "is not valid JSON"),
        (b"[1, 2]", "is not the summary.json of a steadysam eval or eval-prompts run (it holds"),
        (b'{"accuracy": 0.9}', "run (it lacks dataset, clicks, num_samples, noc"),
        (b'{"dataset": "x", "settings": []}', "run (it lacks num_samples, setting_order)"),
        (b"\xff\xfe\xfa not text", "cannot read"),
    ],
)
def test_unusable_summary_is_named(tmp_path, data, capsys, content, message):
    good = click_run(tmp_path, data, "good")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_bytes(content)
    with pytest.raises(ReportError) as e:
        report([good, str(bad)])
    assert str(bad / "summary.json") in str(e.value) and message in str(e.value)
    code, _, err = cli(capsys, good, str(bad), "--out", str(tmp_path / "rep"))
    assert code == 2 and err.startswith("error:") and str(bad / "summary.json") in err
    assert "\n" not in err and "Traceback" not in err


def test_missing_summary_and_missing_folder_are_named(tmp_path, data, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    code, _, err = cli(capsys, str(unfinished))
    assert code == 2 and f"no summary.json in {unfinished} (is the run finished?)" in err
    code, _, err = cli(capsys, str(tmp_path / "nowhere"))
    assert code == 2 and f"{tmp_path / 'nowhere'} does not exist" in err


def test_a_summary_with_nan_from_an_older_version_reads_as_missing(tmp_path, data):
    run = pathlib.Path(click_run(tmp_path, data, "a"))
    text = (run / "summary.json").read_text()
    summary = json.loads(text)
    summary["noc"]["90"] = float("nan")
    (run / "summary.json").write_text(json.dumps(summary))  # json.dumps writes NaN
    md = report([str(run)])
    paper_row = next(line for line in md.splitlines() if line.startswith("| fake"))
    assert paper_row.endswith("| – | – |")  # NoC@90 of folder, and the mean: no value
    assert "nan" not in md.lower()


def test_report_out_must_not_be_a_run_folder_or_under_a_file(tmp_path, data, capsys):
    ra = click_run(tmp_path, data, "a")
    rb = click_run(tmp_path, data, "b", radius=6)
    before = {p.name: p.read_bytes() for p in pathlib.Path(ra).iterdir() if p.is_file()}
    code, _, err = cli(capsys, ra, rb, "--out", ra)
    assert code == 2 and f"--out {ra} is a run folder" in err, err
    after = {p.name: p.read_bytes() for p in pathlib.Path(ra).iterdir() if p.is_file()}
    assert after == before  # its delta_iou_hist.png / results were not overwritten
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    code, _, err = cli(capsys, ra, rb, "--out", str(blocker / "rep"))
    assert code == 2 and f"--out {blocker / 'rep'} cannot be created: {blocker} is a file" in err
    assert "[Errno" not in err
    code, _, err = cli(capsys, ra, rb, "--out", str(blocker))
    assert code == 2 and f"--out {blocker} is a file, not a folder" in err


def test_prompt_runs_refuse_different_ignore_on_one_dataset_and_state_draws(tmp_path, data, capsys):
    ra = prompt_run(tmp_path, data, "a")
    rb = prompt_run(tmp_path, data, "b", ignore="background")
    with pytest.raises(ReportError, match=f"ignore on folder \\({ra}: exclude, {rb}: background"):
        report([ra, rb])
    rc = prompt_run(tmp_path, data, "c", draws=3)
    md = report([ra, rc])
    assert "| fake (draws=2) |" in md and "| fake (draws=3) |" in md
    assert "runs use different draws (2, 3)" in capsys.readouterr().err
