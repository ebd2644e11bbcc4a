"""The model side of the app: one predictor, object sessions restored from stored prompts, and a
background worker that prepares the embeddings of the next images.

Only one thread runs the model at a time (:class:`PriorityLock`); a click waiting for the model
goes before background work, so at most one embedding in progress delays it. Embeddings go to
the predictor's disk cache (beside the project file), so a restarted server finds them.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..datafiles import read_image
from ..predictor import ObjectSession, Predictor
from .store import Prompt


class PriorityLock:
    """A mutex with two doors: ``foreground()`` waiters always go before ``background()``
    ones (a click never queues behind more than the one background job already running)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = 0

    @contextmanager
    def foreground(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: not self._busy)
            finally:
                self._waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    @contextmanager
    def background(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._busy and self._waiting == 0)
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class PluginSwitch:
    """Stable-SAM's plugin on or off without touching the weights: the decoder's attention
    blocks call their ``plugin`` / ``final_plugin`` attribute when it is set, so "off" detaches
    the modules (the decoder is then exactly the base SAM / FocSAM decoder) and "on" puts them
    back."""

    def __init__(self, model) -> None:
        from ..models.stable_plugin import StablePlugin

        self._sites: list[tuple[object, str, object]] = []
        for module in model.mask_decoder.modules():
            for attr in ("plugin", "final_plugin"):
                value = getattr(module, attr, None)
                if isinstance(value, StablePlugin):
                    self._sites.append((module, attr, value))

    @property
    def available(self) -> bool:
        return bool(self._sites)

    def set(self, enabled: bool) -> None:
        for module, attr, plugin in self._sites:
            setattr(module, attr, plugin if enabled else None)


@dataclass
class _Cached:
    image_id: int
    session: ObjectSession
    prompts: list[Prompt] = field(default_factory=list)


class Engine:
    """The model and its state for one project.

    Arguments:
        model: a SAM / FocSAM / Stable-SAM model (``build_model``).
        cache_dir: the disk embedding cache folder (never inside IMAGES_DIR).
        max_sessions: object sessions kept in memory (LRU); an evicted one is rebuilt by
            replaying the object's prompts.
        predictor_kwargs: more ``Predictor`` arguments (e.g. ``precision``).
    """

    def __init__(
        self,
        model,
        cache_dir: str | os.PathLike,
        max_sessions: int = 64,
        predictor_kwargs: dict | None = None,
    ) -> None:
        self.predictor = Predictor(model, cache_size=8, cache_dir=cache_dir,
                                   **(predictor_kwargs or {}))  # fmt: skip
        self.lock = PriorityLock()
        # The plugin modules of what actually runs (the model, or a lower-precision twin).
        self.plugin = PluginSwitch(self.predictor.net)
        self.plugin_enabled = self.plugin.available
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[int, _Cached] = OrderedDict()
        self._image_id: int | None = None
        self._prepared: set[int] = set()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._queue: list[tuple[int, Path]] = []
        self._focus: int | None = None
        self.worker_error: str | None = None

    # -- images -------------------------------------------------------------------------
    def _set_image(self, image_id: int, path: Path) -> None:
        """Make ``image_id`` the predictor's image (caller holds the lock)."""
        if self._image_id != image_id:
            self._image_id = None
            self.predictor.set_image(read_image(path))
            self._image_id = image_id
            self._prepared.add(image_id)

    def prepare(self, image_id: int, path: Path) -> float:
        """Compute (or load) the image's embedding now, ahead of background work; returns the
        encoder seconds (0 when it came from a cache). Also makes it the worker's focus."""
        self._focus = image_id
        self._wake.set()
        with self.lock.foreground():
            self._set_image(image_id, path)
            return self.predictor.last_encoder_seconds

    def is_prepared(self, image_id: int) -> bool:
        return image_id in self._prepared

    # -- object sessions ----------------------------------------------------------------
    def _apply(self, session: ObjectSession, prompt: Prompt) -> np.ndarray:
        self.plugin.set(prompt.plugin)
        try:
            if prompt.kind == "click":
                x, y = prompt.coords
                return session.click(x, y, prompt.positive)
            return session.set_box(*prompt.coords)
        finally:
            self.plugin.set(self.plugin_enabled)

    def _session(self, object_id: int, image_id: int, path: Path, prompts: list[Prompt]) -> _Cached:
        """The object's session in the state ``prompts`` leave it (caller holds the lock):
        reused when it is there already, one undo / one prompt away, else rebuilt by
        replaying the prompts (deterministic: the refined state comes back too)."""
        cached = self._sessions.get(object_id)
        if cached is not None and cached.image_id == image_id:
            have = cached.prompts
            if have == prompts:
                pass
            elif have[:-1] == prompts and have:
                cached.session.undo()
                cached.prompts = list(prompts)
            elif prompts[:-1] == have and prompts:
                self._apply(cached.session, prompts[-1])
                cached.prompts = list(prompts)
            else:
                cached = None
        else:
            cached = None
        if cached is None:
            self._set_image(image_id, path)
            session = self.predictor.new_object()
            for p in prompts:
                self._apply(session, p)
            cached = _Cached(image_id, session, list(prompts))
        self._sessions[object_id] = cached
        self._sessions.move_to_end(object_id)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return cached

    def run_prompt(
        self,
        object_id: int,
        image_id: int,
        path: Path,
        prompts: list[Prompt],
        prompt: Prompt,
        commit: Callable[[np.ndarray], object],
    ) -> tuple[np.ndarray, object]:
        """Add ``prompt`` to the object whose stored prompts are ``prompts``: runs the model
        and then ``commit(mask)`` (the store write) while holding the model lock, so
        concurrent requests on one object are applied one after the other. Returns (mask,
        what commit returned). If commit raises, the session is dropped (the store is the
        truth; it is rebuilt next time)."""
        with self.lock.foreground():
            cached = self._session(object_id, image_id, path, prompts)
            mask = self._apply(cached.session, prompt)
            try:
                result = commit(mask)
            except BaseException:
                self._sessions.pop(object_id, None)
                raise
            cached.prompts = [*prompts, prompt]
            return mask, result

    def forget(self, object_id: int) -> None:
        self._sessions.pop(object_id, None)

    # -- background embeddings ----------------------------------------------------------
    def start_worker(self, images: list[tuple[int, Path]]) -> None:
        """Prepare the embeddings of ``images`` in a daemon thread, the ones after the image
        in focus (the one the user opened last) first."""
        self._queue = list(images)
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="steadysam-embed", daemon=True)
            self._worker.start()
        self._wake.set()

    def stop_worker(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=30)

    def progress(self) -> dict[str, int | bool | str | None]:
        todo = [i for i, _ in self._queue]
        done = sum(1 for i in todo if i in self._prepared)
        return {
            "prepared": done,
            "total": len(todo),
            "working": done < len(todo) and not self._stop.is_set(),
            "error": self.worker_error,
        }

    def _next_job(self) -> tuple[int, Path] | None:
        queue = self._queue
        ids = [i for i, _ in queue]
        start = ids.index(self._focus) if self._focus in ids else 0
        for k in range(len(queue)):
            image_id, path = queue[(start + k) % len(queue)]
            if image_id not in self._prepared:
                return image_id, path
        return None

    def _work(self) -> None:
        while not self._stop.is_set():
            job = self._next_job()
            if job is None:
                self._wake.wait(timeout=5)
                self._wake.clear()
                continue
            image_id, path = job
            try:
                with self.lock.background():
                    if self._stop.is_set():
                        return
                    self._set_image(image_id, path)
            except Exception as e:  # an unreadable image: mark it, go on with the others
                self._prepared.add(image_id)
                self.worker_error = f"{path.name}: {e}"
