"""``steadysam annotate`` / ``steadysam export`` on the command line: export files pycocotools
reads back, exit codes and one-line errors for bad input."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from app_support import copy_images

from steadysam.app.store import Prompt, Store
from steadysam.cli import main


@pytest.fixture
def labelled(tmp_path):
    """A project with one drawn object (stored directly: export needs no model)."""
    images = copy_images(tmp_path / "images", ("GrabCut/106024",))
    db = tmp_path / "p.sqlite"
    store = Store(db)
    store.sync_images(images)
    store.set_meta("images_dir", str(images.resolve()))
    cat = store.add_category("penguin")
    obj = store.create_object(1, cat["id"])
    mask = np.zeros((321, 481), bool)
    mask[100:200, 150:260] = True
    mask[140:160, 190:210] = False  # a hole
    store.push_prompt(obj["id"], Prompt("click", (155.0, 105.0)), mask)
    store.close()
    return db, images, mask


def test_export_coco_cli(labelled, tmp_path, capsys):
    from pycocotools.coco import COCO

    db, _, mask = labelled
    for seg in ("rle", "polygon"):
        out = tmp_path / f"out-{seg}.json"
        assert main(["export", "--db", str(db), "--format", "coco", "--out", str(out),
                     "--segmentation", seg]) == 0  # fmt: skip
        coco = COCO(str(out))
        (ann,) = coco.loadAnns(coco.getAnnIds())
        assert coco.loadCats(ann["category_id"])[0]["name"] == "penguin"
        assert np.array_equal(coco.annToMask(ann).astype(bool), mask)
    assert "wrote 1 object(s) on 1 image(s) as coco" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["yolo", "png"])
def test_export_folders_cli(labelled, tmp_path, fmt):
    db, _, _ = labelled
    out = tmp_path / fmt
    assert main(["export", "--db", str(db), "--format", fmt, "--out", str(out)]) == 0
    assert any(p.is_file() for p in out.rglob("*"))


def test_export_errors(labelled, tmp_path, capsys):
    db, images, _ = labelled
    assert main(["export", "--db", str(tmp_path / "nope.sqlite"), "--format", "coco",
                 "--out", str(tmp_path / "x.json")]) == 2  # fmt: skip
    assert "no annotation project" in capsys.readouterr().err
    assert main(["export", "--db", str(db), "--format", "voc", "--out", "x"]) == 2
    # Never into the images folder the project labels.
    assert main(["export", "--db", str(db), "--format", "png", "--out", str(images / "o")]) == 2
    assert not (images / "o").exists()


def test_annotate_errors(tmp_path, capsys):
    assert main(["annotate", str(tmp_path / "missing"), "--db", str(tmp_path / "p.sqlite")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    images = copy_images(tmp_path / "images", ("GrabCut/106024",))
    assert main(["annotate", str(images), "--db", str(images / "p.sqlite")]) == 2
    assert "inside IMAGES_DIR" in capsys.readouterr().err
    assert main(["annotate", str(images), "--db", "x.sqlite", "--port", "70000"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["annotate", str(empty), "--db", str(tmp_path / "e.sqlite")]) == 2
    assert "holds no images" in capsys.readouterr().err
    other = copy_images(tmp_path / "other", ("GrabCut/124080",))
    db = tmp_path / "q.sqlite"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code = main(["annotate", str(images), "--db", str(db), "--port", str(port),
                     "--no-prefetch"])  # fmt: skip
    assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    # The project remembers its folder: another one is refused (file names are relative).
    assert main(["annotate", str(other), "--db", str(db), "--port", str(port)]) == 2
    assert "was made for IMAGES_DIR" in capsys.readouterr().err


def test_annotate_import_coco_once(labelled, tmp_path, monkeypatch, capsys):
    """--import-coco adds the file's objects; the same command run again (a restart) does not
    add them twice. The server itself is not started here (Server.run stubbed)."""
    from steadysam.app.launch import Server

    db, images, mask = labelled
    coco = tmp_path / "labels.json"
    assert main(["export", "--db", str(db), "--format", "coco", "--out", str(coco)]) == 0
    monkeypatch.setattr(Server, "run", lambda self: self.close())
    import steadysam.runtime

    applied = []  # the CLI sets the process defaults (OMP_WAIT_POLICY=PASSIVE) first thing
    monkeypatch.setattr(steadysam.runtime, "apply_process_defaults", lambda: applied.append(1))
    new_db = tmp_path / "new.sqlite"
    argv = ["annotate", str(images), "--db", str(new_db), "--port", "0", "--no-prefetch",
            "--import-coco", str(coco)]  # fmt: skip
    assert main(argv) == 0
    assert "imported 1 object(s) on 1 image(s) (1 new categories)" in capsys.readouterr().out
    assert applied
    assert main(argv) == 0
    assert "was imported before" in capsys.readouterr().out
    store = Store(new_db, readonly=True)
    (image,) = store.labelset().images
    store.close()
    assert len(image.objects) == 1 and np.array_equal(image.objects[0].mask, mask)
    assert main([*argv[:-1], str(tmp_path / "missing.json")]) == 2
