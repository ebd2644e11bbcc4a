"""The annotation project on disk: one SQLite file (WAL journal, one transaction per action).

Tables: ``images`` (file name relative to IMAGES_DIR, size, status), ``categories`` (the
project's ordered list), ``objects`` (image, category, name, hidden, a version counter, and
the mask an import gave it), ``prompts`` (each object's clicks and boxes in order, each with
the mask it produced as COCO RLE, and an ``undone`` flag: the undone prompts at the end of the
list are the object's redo stack).

An object's current mask is the mask of its last active prompt (or its imported mask when it
has none). Every action (a prompt, undo, redo, rename ...) is one ``BEGIN IMMEDIATE`` ...
``COMMIT`` and bumps the object's ``version``; callers may pass the version they saw and get
:class:`Conflict` when another tab changed the object in between. ``synchronous=FULL``: a
committed action survives a SIGKILL of the server (and a power cut).

Torch-free: ``steadysam export`` reads a project without the model.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
STATUSES = ("new", "in_progress", "done")  # shown as: not started, in progress, done
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    file_name TEXT NOT NULL UNIQUE,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'new'
);
CREATE TABLE IF NOT EXISTS categories (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    position INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    category_id INTEGER NOT NULL REFERENCES categories(id),
    name TEXT NOT NULL DEFAULT '',
    hidden INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0,
    base_mask TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_image ON objects(image_id);
CREATE TABLE IF NOT EXISTS prompts (
    object_id INTEGER NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    plugin INTEGER NOT NULL DEFAULT 0,
    mask TEXT NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (object_id, seq)
);
"""


class StoreError(ValueError):
    """A request the project cannot satisfy as asked (unknown id, bad value)."""


class NotFound(StoreError):
    """An id that is not in the project."""


class Conflict(StoreError):
    """The object changed since the caller read it (another tab), or a name is taken."""


@dataclass(frozen=True)
class Prompt:
    """One prompt of an object, in original image pixels.

    Arguments:
        kind: ``click`` or ``box``.
        coords: (x, y) for a click, (x0, y0, x1, y1) for a box.
        positive: a click's label (True for boxes).
        plugin: whether Stable-SAM's plugin was on when it was made (replay uses the same).
    """

    kind: str
    coords: tuple[float, ...]
    positive: bool = True
    plugin: bool = False

    def to_json(self) -> dict[str, Any]:
        if self.kind == "click":
            x, y = self.coords
            return {"type": "click", "x": x, "y": y, "positive": self.positive}
        return {"type": "box", "box": list(self.coords)}


def _rle_text(mask: np.ndarray) -> str:
    from .masks import encode_rle

    return json.dumps(encode_rle(np.asarray(mask, dtype=bool)))


def _rle_mask(text: str) -> np.ndarray:
    from .masks import decode_rle

    return decode_rle(json.loads(text))


class Store:
    """An annotation project in one SQLite file.

    Arguments:
        path: the database file (created with its parent folder unless ``readonly``).
        readonly: open an existing project for reading only (export); nothing is written.

    Thread-safe: one connection, guarded by a lock (the server answers requests from a thread
    pool); every write is one transaction.
    """

    def __init__(self, path: str | os.PathLike, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"no annotation project at {str(self.path)!r}")
            uri = f"file:{self.path.resolve().as_posix()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            if self.path.is_dir():
                raise IsADirectoryError(f"--db {str(self.path)!r} is a folder, not a file")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            if readonly:
                self._check_schema()
            else:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
                self._db.execute("PRAGMA busy_timeout = 10000")
                with self.transaction() as db:
                    # executescript would COMMIT on its own: one statement at a time.
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            db.execute(stmt)
                    db.execute(
                        "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),),
                    )
                self._check_schema()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(
                f"{str(self.path)!r} is not a steadysam annotation project ({e})"
            ) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _check_schema(self) -> None:
        try:
            row = self._db.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.OperationalError:
            row = None
        if row is None:
            raise StoreError(f"{str(self.path)!r} is not a steadysam annotation project")
        if int(row[0]) != SCHEMA_VERSION:
            raise StoreError(
                f"{str(self.path)!r} has project schema {row[0]}; this steadysam reads "
                f"schema {SCHEMA_VERSION}"
            )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic action: BEGIN IMMEDIATE (takes the write lock up front, so two writers
        never interleave) ... COMMIT, or ROLLBACK on any exception."""
        if self.readonly:
            raise StoreError("the project is open read-only")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for a multi-statement read."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT" if not self.readonly else "END")

    # -- project metadata ---------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- images -------------------------------------------------------------------------
    def sync_images(self, root: str | os.PathLike) -> int:
        """Add the images under ``root`` that the project does not list yet (sizes from the
        file headers; files that are not images, hidden files and links leading outside
        ``root`` are skipped). Returns how many were added."""
        from ..datafiles import image_size

        root = Path(root).resolve()
        found: list[tuple[str, int, int]] = []
        known = {r[0] for r in self._db.execute("SELECT file_name FROM images")}
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                path = Path(dirpath) / name
                if not path.resolve().is_relative_to(root):
                    continue  # a link out of IMAGES_DIR is never served
                rel = path.relative_to(root).as_posix()
                if rel in known:
                    continue
                try:
                    h, w = image_size(path)
                except Exception:
                    continue  # not an image after all (the UI never sees it)
                found.append((rel, w, h))
        if found:
            with self.transaction() as db:
                db.executemany(
                    "INSERT OR IGNORE INTO images (file_name, width, height) VALUES (?, ?, ?)",
                    found,
                )
        return len(found)

    def images(self) -> list[dict[str, Any]]:
        """Every image, in file-name order, with its status and object count."""
        with self._lock:
            rows = self._db.execute(
                "SELECT i.id, i.file_name, i.width, i.height, i.status, COUNT(o.id) "
                "FROM images i LEFT JOIN objects o ON o.image_id = i.id "
                "GROUP BY i.id ORDER BY i.file_name"
            ).fetchall()
        keys = ("id", "file_name", "width", "height", "status", "objects")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def image(self, image_id: int) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute(
                "SELECT id, file_name, width, height, status FROM images WHERE id = ?",
                (image_id,),
            ).fetchone()
        if row is None:
            raise NotFound(f"no image with id {image_id}")
        return dict(zip(("id", "file_name", "width", "height", "status"), row, strict=True))

    def set_image_status(self, image_id: int, status: str) -> dict[str, Any]:
        if status not in STATUSES:
            raise StoreError(f"status must be one of {STATUSES}, not {status!r}")
        with self.transaction() as db:
            cur = db.execute("UPDATE images SET status = ? WHERE id = ?", (status, image_id))
            if cur.rowcount == 0:
                raise NotFound(f"no image with id {image_id}")
        return self.image(image_id)

    # -- categories ---------------------------------------------------------------------
    def categories(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name FROM categories ORDER BY position, id"
            ).fetchall()
        return [{"id": i, "name": n} for i, n in rows]

    @staticmethod
    def _category_name(name: Any) -> str:
        if not isinstance(name, str) or not name.strip():
            raise StoreError(f"a category name must be a non-empty string, got {name!r}")
        name = name.strip()
        if len(name) > 200:
            raise StoreError(f"category name is {len(name)} characters long; at most 200")
        return name

    def add_category(self, name: str) -> dict[str, Any]:
        name = self._category_name(name)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM categories WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"category {name!r} exists already")
            pos = db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM categories").fetchone()
            cur = db.execute(
                "INSERT INTO categories (name, position) VALUES (?, ?)", (name, pos[0])
            )
        return {"id": cur.lastrowid, "name": name}

    def rename_category(self, category_id: int, name: str) -> dict[str, Any]:
        name = self._category_name(name)
        with self.transaction() as db:
            other = db.execute("SELECT id FROM categories WHERE name = ?", (name,)).fetchone()
            if other is not None and other[0] != category_id:
                raise Conflict(f"category {name!r} exists already")
            cur = db.execute("UPDATE categories SET name = ? WHERE id = ?", (name, category_id))
            if cur.rowcount == 0:
                raise NotFound(f"no category with id {category_id}")
        return {"id": category_id, "name": name}

    def delete_category(self, category_id: int) -> None:
        with self.transaction() as db:
            used = db.execute(
                "SELECT COUNT(*) FROM objects WHERE category_id = ?", (category_id,)
            ).fetchone()[0]
            if used:
                raise Conflict(
                    f"category {category_id} is used by {used} object(s): give them another "
                    "category or delete them first"
                )
            if db.execute("DELETE FROM categories WHERE id = ?", (category_id,)).rowcount == 0:
                raise NotFound(f"no category with id {category_id}")

    def _category_id(self, db: sqlite3.Connection, category_id: Any) -> int:
        if isinstance(category_id, bool) or not isinstance(category_id, int):
            raise StoreError(f"category_id must be an integer, got {category_id!r}")
        if db.execute("SELECT 1 FROM categories WHERE id = ?", (category_id,)).fetchone() is None:
            raise NotFound(f"no category with id {category_id}")
        return category_id

    # -- objects ------------------------------------------------------------------------
    def create_object(self, image_id: int, category_id: int, name: str = "") -> dict[str, Any]:
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is None:
                raise NotFound(f"no image with id {image_id}")
            self._category_id(db, category_id)
            cur = db.execute(
                "INSERT INTO objects (image_id, category_id, name, created) VALUES (?, ?, ?, ?)",
                (image_id, category_id, str(name)[:200], time.time()),
            )
            db.execute(
                "UPDATE images SET status = 'in_progress' WHERE id = ? AND status = 'new'",
                (image_id,),
            )
        return self.object(cur.lastrowid)

    def _object_row(self, db: sqlite3.Connection, object_id: int) -> tuple:
        row = db.execute(
            "SELECT o.id, o.image_id, o.category_id, c.name, o.name, o.hidden, o.version, "
            "o.base_mask FROM objects o JOIN categories c ON c.id = o.category_id "
            "WHERE o.id = ?",
            (object_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no object with id {object_id}")
        return row

    def _prompt_rows(self, db: sqlite3.Connection, object_id: int) -> list[tuple]:
        return db.execute(
            "SELECT seq, kind, data, plugin, mask, undone FROM prompts WHERE object_id = ? "
            "ORDER BY seq",
            (object_id,),
        ).fetchall()

    def object(self, object_id: int, with_mask: bool = True) -> dict[str, Any]:
        """An object as plain data: ids, category, name, hidden, version, its active prompts
        (``prompts``, JSON), ``redo`` (how many undone prompts can be redone), ``imported``
        (it has an imported mask) and ``mask`` (COCO RLE dict or None)."""
        with self._read() as db:
            row = self._object_row(db, object_id)
            prompts = self._prompt_rows(db, object_id)
        return self._object_dict(row, prompts, with_mask)

    @staticmethod
    def _object_dict(row: tuple, prompts: list[tuple], with_mask: bool) -> dict[str, Any]:
        oid, image_id, cat_id, cat_name, name, hidden, version, base = row
        active = [p for p in prompts if not p[5]]
        mask_text = active[-1][4] if active else base
        out = {
            "id": oid,
            "image_id": image_id,
            "category_id": cat_id,
            "category": cat_name,
            "name": name,
            "hidden": bool(hidden),
            "version": version,
            "prompts": [_prompt_from_row(p).to_json() for p in active],
            "redo": len(prompts) - len(active),
            "imported": base is not None,
        }
        if with_mask:
            out["mask"] = None if mask_text is None else json.loads(mask_text)
        return out

    def objects(self, image_id: int, with_mask: bool = True) -> list[dict[str, Any]]:
        with self._read() as db:
            if db.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is None:
                raise NotFound(f"no image with id {image_id}")
            ids = [r[0] for r in db.execute(
                "SELECT id FROM objects WHERE image_id = ? ORDER BY id", (image_id,)
            )]
            rows = [(self._object_row(db, i), self._prompt_rows(db, i)) for i in ids]
        return [self._object_dict(r, p, with_mask) for r, p in rows]

    def prompts(self, object_id: int) -> list[Prompt]:
        """The object's active prompts, in order (what replaying restores)."""
        with self._read() as db:
            self._object_row(db, object_id)
            rows = self._prompt_rows(db, object_id)
        return [_prompt_from_row(r) for r in rows if not r[5]]

    def current_mask(self, object_id: int) -> np.ndarray | None:
        """The object's current mask (H x W bool) or None when it has none yet."""
        obj = self.object(object_id)
        if obj["mask"] is None:
            return None
        from .masks import decode_rle

        return decode_rle(obj["mask"])

    @staticmethod
    def _check_version(row: tuple, expected: int | None) -> None:
        if expected is not None and row[6] != expected:
            raise Conflict(
                f"object {row[0]} changed since version {expected} (it is at version "
                f"{row[6]}): reload it and try again"
            )

    def check_version(self, object_id: int, expected_version: int | None) -> None:
        """Conflict unless the object is at ``expected_version`` (None: no check); NotFound
        when there is no such object."""
        with self._lock:
            self._check_version(self._object_row(self._db, object_id), expected_version)

    def update_object(
        self,
        object_id: int,
        *,
        name: str | None = None,
        category_id: int | None = None,
        hidden: bool | None = None,
        expected_version: int | None = None,
    ) -> dict[str, Any]:
        with self.transaction() as db:
            row = self._object_row(db, object_id)
            self._check_version(row, expected_version)
            if name is not None:
                db.execute("UPDATE objects SET name = ? WHERE id = ?", (str(name)[:200], object_id))
            if category_id is not None:
                self._category_id(db, category_id)
                db.execute(
                    "UPDATE objects SET category_id = ? WHERE id = ?", (category_id, object_id)
                )
            if hidden is not None:
                db.execute("UPDATE objects SET hidden = ? WHERE id = ?", (int(hidden), object_id))
            db.execute("UPDATE objects SET version = version + 1 WHERE id = ?", (object_id,))
        return self.object(object_id)

    def delete_object(self, object_id: int, expected_version: int | None = None) -> None:
        with self.transaction() as db:
            self._check_version(self._object_row(db, object_id), expected_version)
            db.execute("DELETE FROM objects WHERE id = ?", (object_id,))

    def push_prompt(
        self,
        object_id: int,
        prompt: Prompt,
        mask: np.ndarray,
        expected_version: int | None = None,
    ) -> dict[str, Any]:
        """Append a prompt and the mask it produced (the redo stack is dropped)."""
        text = _rle_text(mask)
        with self.transaction() as db:
            row = self._object_row(db, object_id)
            self._check_version(row, expected_version)
            db.execute("DELETE FROM prompts WHERE object_id = ? AND undone = 1", (object_id,))
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), -1) + 1 FROM prompts WHERE object_id = ?", (object_id,)
            ).fetchone()[0]
            coords = [float(v) for v in prompt.coords]
            data = json.dumps({"coords": coords, "positive": bool(prompt.positive)})
            db.execute(
                "INSERT INTO prompts (object_id, seq, kind, data, plugin, mask) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (object_id, seq, prompt.kind, data, int(prompt.plugin), text),
            )
            db.execute("UPDATE objects SET version = version + 1 WHERE id = ?", (object_id,))
        return self.object(object_id)

    def undo(self, object_id: int, expected_version: int | None = None) -> dict[str, Any]:
        """Move the last active prompt to the redo stack (StoreError when there is none)."""
        with self.transaction() as db:
            row = self._object_row(db, object_id)
            self._check_version(row, expected_version)
            last = db.execute(
                "SELECT MAX(seq) FROM prompts WHERE object_id = ? AND undone = 0", (object_id,)
            ).fetchone()[0]
            if last is None:
                raise StoreError(f"object {object_id} has nothing to undo")
            db.execute(
                "UPDATE prompts SET undone = 1 WHERE object_id = ? AND seq = ?", (object_id, last)
            )
            db.execute("UPDATE objects SET version = version + 1 WHERE id = ?", (object_id,))
        return self.object(object_id)

    def redo(self, object_id: int, expected_version: int | None = None) -> dict[str, Any]:
        """Make the first undone prompt active again, with the mask it produced."""
        with self.transaction() as db:
            row = self._object_row(db, object_id)
            self._check_version(row, expected_version)
            first = db.execute(
                "SELECT MIN(seq) FROM prompts WHERE object_id = ? AND undone = 1", (object_id,)
            ).fetchone()[0]
            if first is None:
                raise StoreError(f"object {object_id} has nothing to redo")
            db.execute(
                "UPDATE prompts SET undone = 0 WHERE object_id = ? AND seq = ?", (object_id, first)
            )
            db.execute("UPDATE objects SET version = version + 1 WHERE id = ?", (object_id,))
        return self.object(object_id)

    # -- export / import ----------------------------------------------------------------
    def labelset(self):
        """The project's labels for the exporters: every image (objects in creation order;
        hidden objects included, hiding is a display choice; objects without a mask yet
        left out) and the category list."""
        from .labels import LabeledImage, LabeledObject, LabelSet
        from .masks import decode_rle

        with self._read() as db:
            cats = [r[0] for r in db.execute("SELECT name FROM categories ORDER BY position, id")]
            images = db.execute(
                "SELECT id, file_name, width, height FROM images ORDER BY file_name"
            ).fetchall()
            per_image: dict[int, list[tuple]] = {}
            for oid, image_id in db.execute("SELECT id, image_id FROM objects ORDER BY id"):
                per_image.setdefault(image_id, []).append(
                    (self._object_row(db, oid), self._prompt_rows(db, oid))
                )
        out = []
        for image_id, file_name, w, h in images:
            objects = []
            for row, prompts in per_image.get(image_id, []):
                obj = self._object_dict(row, prompts, with_mask=True)
                if obj["mask"] is None:
                    continue
                mask = decode_rle(obj["mask"])
                if mask.shape != (h, w):
                    raise StoreError(
                        f"object {obj['id']} of {file_name!r} has a {mask.shape[1]}x"
                        f"{mask.shape[0]} mask but the image is {w}x{h}"
                    )
                objects.append(LabeledObject(obj["category"], mask, obj["id"]))
            out.append(LabeledImage(file_name, w, h, objects))
        return LabelSet(cats, out)

    def import_labelset(self, labels) -> dict[str, int]:
        """Add ``labels`` (e.g. ``formats.read_coco``) to the project, in one transaction:
        missing categories are appended, every object becomes an object with that mask and no
        prompts (prompts added later replace the mask; undo returns to it). Images are matched
        by file name; an image with objects that the project does not list, or whose size
        differs, is an error naming it (nothing is imported then). Returns counts: objects,
        new categories, images that received objects."""
        labels.validate()
        with self.transaction() as db:
            known = {
                r[1]: (r[0], r[2], r[3])
                for r in db.execute("SELECT id, file_name, width, height FROM images")
            }
            # An image without objects that the project lacks has nothing to import.
            wanted = [im for im in labels.images if im.objects or im.file_name in known]
            missing = [im.file_name for im in wanted if im.file_name not in known]
            if missing:
                raise StoreError(
                    f"{len(missing)} image(s) of the import are not in the project (first: "
                    f"{missing[0]!r}); file names must be relative to IMAGES_DIR"
                )
            for im in wanted:
                _, w, h = known[im.file_name]
                if (im.width, im.height) != (w, h):
                    raise StoreError(
                        f"image {im.file_name!r} is {w}x{h} in the project but "
                        f"{im.width}x{im.height} in the import"
                    )
            cat_ids = {n: i for i, n in db.execute("SELECT id, name FROM categories")}
            added_cats = 0
            for name in labels.categories:
                if name not in cat_ids:
                    pos = db.execute(
                        "SELECT COALESCE(MAX(position), -1) + 1 FROM categories"
                    ).fetchone()[0]
                    cur = db.execute(
                        "INSERT INTO categories (name, position) VALUES (?, ?)", (name, pos)
                    )
                    cat_ids[name] = cur.lastrowid
                    added_cats += 1
            n = 0
            for im in wanted:
                image_id = known[im.file_name][0]
                for obj in im.objects:
                    db.execute(
                        "INSERT INTO objects (image_id, category_id, base_mask, created) "
                        "VALUES (?, ?, ?, ?)",
                        (image_id, cat_ids[obj.category], _rle_text(obj.mask), time.time()),
                    )
                    n += 1
                if im.objects:
                    db.execute(
                        "UPDATE images SET status = 'in_progress' WHERE id = ? AND status = 'new'",
                        (image_id,),
                    )
        images = sum(1 for im in wanted if im.objects)
        return {"objects": n, "categories": added_cats, "images": images}


def _prompt_from_row(row: tuple) -> Prompt:
    _, kind, data, plugin, _, _ = row
    d = json.loads(data)
    return Prompt(kind, tuple(d["coords"]), bool(d["positive"]), bool(plugin))
