"""The annotation project store (SQLite): objects, prompts, undo / redo, versions, export and
import of label sets, read-only opening."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from steadysam.app.labels import LabeledImage, LabeledObject, LabelSet
from steadysam.app.masks import decode_rle
from steadysam.app.store import Conflict, NotFound, Prompt, Store, StoreError


def _mask(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "p.sqlite")
    with s.transaction() as db:
        db.execute("INSERT INTO images (file_name, width, height) VALUES ('a.jpg', 40, 30)")
        db.execute("INSERT INTO images (file_name, width, height) VALUES ('sub/b.png', 20, 10)")
    s.add_category("cat")
    yield s
    s.close()


def test_prompts_undo_redo_and_masks(store):
    obj = store.create_object(1, 1)
    assert obj["mask"] is None and obj["version"] == 0
    assert store.image(1)["status"] == "in_progress"
    m1, m2, m3 = (_mask(30, 40, (0, 0, k, k)) for k in (5, 10, 15))
    store.push_prompt(obj["id"], Prompt("click", (1.0, 2.0)), m1)
    store.push_prompt(obj["id"], Prompt("click", (3.0, 4.0), False), m2)
    o = store.undo(obj["id"])
    assert o["prompts"] == [{"type": "click", "x": 1.0, "y": 2.0, "positive": True}]
    assert o["redo"] == 1
    assert np.array_equal(decode_rle(o["mask"]), m1)
    o = store.redo(obj["id"])
    assert np.array_equal(decode_rle(o["mask"]), m2) and o["redo"] == 0
    assert o["prompts"][-1]["positive"] is False
    store.undo(obj["id"])
    # A new prompt after an undo drops the redo stack.
    o = store.push_prompt(obj["id"], Prompt("box", (0.0, 0.0, 9.0, 9.0), plugin=True), m3)
    assert o["redo"] == 0 and len(o["prompts"]) == 2
    assert store.prompts(obj["id"])[-1] == Prompt("box", (0.0, 0.0, 9.0, 9.0), True, True)
    with pytest.raises(StoreError, match="nothing to redo"):
        store.redo(obj["id"])
    store.undo(obj["id"])
    store.undo(obj["id"])
    with pytest.raises(StoreError, match="nothing to undo"):
        store.undo(obj["id"])
    assert store.object(obj["id"])["mask"] is None


def test_versions_detect_lost_updates(store):
    obj = store.create_object(1, 1, "a")
    v = obj["version"]
    store.update_object(obj["id"], name="b", expected_version=v)
    with pytest.raises(Conflict, match="changed since version 0"):
        store.update_object(obj["id"], name="c", expected_version=v)
    with pytest.raises(Conflict):
        store.push_prompt(obj["id"], Prompt("click", (1.0, 1.0)), _mask(30, 40, (0, 0, 2, 2)), v)
    assert store.object(obj["id"])["name"] == "b"
    assert store.prompts(obj["id"]) == []


def test_categories_and_errors(store):
    with pytest.raises(Conflict, match="exists already"):
        store.add_category("cat")
    with pytest.raises(StoreError, match="non-empty"):
        store.add_category("  ")
    dog = store.add_category("dog")
    store.rename_category(dog["id"], "hound")
    assert [c["name"] for c in store.categories()] == ["cat", "hound"]
    obj = store.create_object(2, dog["id"])
    with pytest.raises(Conflict, match="used by 1 object"):
        store.delete_category(dog["id"])
    store.delete_object(obj["id"])
    store.delete_category(dog["id"])
    with pytest.raises(NotFound, match="no category with id 99"):
        store.create_object(1, 99)
    with pytest.raises(NotFound, match="no image with id 9"):
        store.create_object(9, 1)
    with pytest.raises(StoreError, match="status must be one of"):
        store.set_image_status(1, "finished")


def test_labelset_and_import_round_trip(store, tmp_path):
    obj = store.create_object(1, 1)
    m = _mask(30, 40, (3, 4, 20, 25))
    store.push_prompt(obj["id"], Prompt("click", (5.0, 5.0)), m)
    store.create_object(2, 1)  # no prompt yet: no mask, not exported
    labels = store.labelset()
    assert labels.categories == ["cat"]
    assert [im.file_name for im in labels.images] == ["a.jpg", "sub/b.png"]
    assert len(labels.images[0].objects) == 1 and not labels.images[1].objects
    assert np.array_equal(labels.images[0].objects[0].mask, m)

    other = Store(tmp_path / "q.sqlite")
    with other.transaction() as db:
        db.execute("INSERT INTO images (file_name, width, height) VALUES ('a.jpg', 40, 30)")
    counts = other.import_labelset(labels)
    assert counts == {"objects": 1, "categories": 1, "images": 1}
    imported = other.objects(1)
    assert imported[0]["imported"] and imported[0]["prompts"] == []
    assert np.array_equal(decode_rle(imported[0]["mask"]), m)
    # A prompt replaces the imported mask; undo brings it back.
    other.push_prompt(imported[0]["id"], Prompt("click", (1.0, 1.0)), _mask(30, 40, (0, 0, 2, 2)))
    back = other.undo(imported[0]["id"])
    assert np.array_equal(decode_rle(back["mask"]), m)
    other.close()


def test_import_refuses_unknown_or_resized_images(store):
    obj = LabeledObject("cat", np.ones((30, 40), bool))
    alien = LabelSet(["cat"], [LabeledImage("zzz.jpg", 40, 30, [obj])])
    with pytest.raises(StoreError, match="not in the project .*'zzz.jpg'"):
        store.import_labelset(alien)
    resized = LabelSet(
        ["cat"], [LabeledImage("a.jpg", 41, 30, [LabeledObject("cat", np.ones((30, 41), bool))])]
    )
    with pytest.raises(StoreError, match="40x30 in the project but 41x30"):
        store.import_labelset(resized)
    assert store.objects(1) == []  # nothing half-imported


def test_readonly_open_writes_nothing(store, tmp_path):
    obj = store.create_object(1, 1)
    store.push_prompt(obj["id"], Prompt("click", (1.0, 1.0)), _mask(30, 40, (0, 0, 4, 4)))
    ro = Store(store.path, readonly=True)
    assert len(ro.labelset().images[0].objects) == 1
    with pytest.raises(StoreError, match="read-only"):
        ro.add_category("x")
    ro.close()
    with pytest.raises(FileNotFoundError, match="no annotation project"):
        Store(tmp_path / "missing.sqlite", readonly=True)


def test_not_a_project(tmp_path):
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a steadysam annotation project"):
        Store(path, readonly=True)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a steadysam annotation project"):
        Store(junk)


def test_wal_and_full_sync(store):
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    sync = store._db.execute("PRAGMA synchronous").fetchone()[0]
    assert mode == "wal" and sync == 2  # FULL
