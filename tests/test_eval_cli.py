"""`steadysam eval` / `steadysam report` argument handling through add_parsers."""

from __future__ import annotations

import argparse

import pytest
from test_eval_support import FakePredictor, make_folder

from steadysam.cli import main
from steadysam.eval import EvalConfig, evaluate
from steadysam.eval.cli import add_parsers


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steadysam")
    add_parsers(p.add_subparsers(dest="command", required=True))
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(["eval", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in (
        "--model",
        "--checkpoint",
        "--dataset",
        "--data-root",
        "--clicks",
        "--clicker",
        "--protocol",
        "--out",
        "--inner-k",
        "grabcut",
    ):
        assert opt in out
    with pytest.raises(SystemExit):
        parser().parse_args(["eval", "--dataset", "davis", "--clicker", "bogus"])


def test_bad_arguments_and_input_exit_2(tmp_path, capsys):
    # No model named means the built-in demo model; a missing dataset is still bad input.
    assert run(["eval", "--dataset", "davis", "--data-root", str(tmp_path)]) == 2
    assert "dataset layout" in capsys.readouterr().err
    assert run(["eval", "--model", "m", "--dataset", "nope"]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert run(["eval", "--model", "m", "--dataset", "davis", "--data-root", str(tmp_path)]) == 2
    assert run(["eval", "--model", "m", "--dataset", "davis", "--clicks", "0"]) == 2
    # A run directory holding another configuration is refused before any model is built.
    data = make_folder(tmp_path / "d", n=1)
    out = str(tmp_path / "run")
    evaluate(
        EvalConfig(
            dataset="folder", data_root=str(data), model="m", out=out, clicks=2, progress=False
        ),
        predictor=FakePredictor(),
    )
    argv = ["eval", "--model", "m", "--dataset", "folder", "--data-root", str(data), "--out", out]
    assert run(argv) == 2 and "different configuration" in capsys.readouterr().err
    assert run(["report", str(tmp_path / "missing")]) == 2


def test_report_side_by_side(tmp_path, capsys):
    data = make_folder(tmp_path / "d", n=4)
    for name, radius in (("a", 10), ("b", 6)):
        evaluate(
            EvalConfig(
                dataset="folder",
                data_root=str(data),
                model=name,
                clicks=3,
                out=str(tmp_path / name),
                progress=False,
            ),
            predictor=FakePredictor(radius=radius),
        )
    rep = tmp_path / "rep"
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(rep)]) == 0
    md = capsys.readouterr().out
    assert "| a [focsam/ritm] |" in md and "| b [focsam/ritm] |" in md and "NoC@90" in md
    assert (rep / "report.md").read_text().startswith("# Runs side by side")
    assert (rep / "miou_curves.png").stat().st_size > 1000
    assert (rep / "delta_iou_hist.png").is_file()
