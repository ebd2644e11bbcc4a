"""Open a project and serve it: what ``steadysam annotate`` does, callable from tests, scripts
and the benchmark."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from .project import Project, cache_dir_for
from .store import Store


def check_paths(images_dir: str | os.PathLike, db: str | os.PathLike) -> tuple[Path, Path]:
    """(IMAGES_DIR, embedding cache folder), resolved; FileNotFoundError / ValueError when
    IMAGES_DIR is not a folder or the project would live inside it."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"IMAGES_DIR {str(root)!r} is not a folder")
    root = root.resolve()
    cache = cache_dir_for(db).resolve()
    if cache.is_relative_to(root):
        raise ValueError(
            f"--db {str(db)!r} is inside IMAGES_DIR: keep the project (and its embedding cache "
            "beside it) out of the images folder"
        )
    return root, cache


def open_project(
    images_dir: str | os.PathLike,
    db: str | os.PathLike,
    model=None,
    model_name: str = "",
    prefetch: bool = True,
    relink: bool = False,
    predictor_kwargs: dict | None = None,
) -> Project:
    """Open (or create) the project ``db`` for ``images_dir`` and add the folder's new images.

    Arguments:
        images_dir: the images folder (the project remembers it; another folder is an error
            unless ``relink``, since file names are relative to it).
        db: the SQLite project file; the embedding cache goes beside it.
        model: the model (None: no prompts, e.g. to browse or export).
        prefetch: start the background embedding worker.
        relink: accept another IMAGES_DIR than the one the project was made for.
        predictor_kwargs: more ``Predictor`` arguments (e.g. ``precision``).
    """
    from .session import Engine

    root, cache = check_paths(images_dir, db)
    db = Path(db)
    store = Store(db)
    known = store.meta("images_dir")
    if known is None or relink:
        store.set_meta("images_dir", str(root))
    elif Path(known) != root:
        store.close()
        raise ValueError(
            f"{str(db)!r} was made for IMAGES_DIR {known!r}, not {str(root)!r}: pass that "
            "folder, or --relink if the images moved"
        )
    store.sync_images(root)
    if not store.images():
        store.close()
        raise ValueError(f"IMAGES_DIR {str(root)!r} holds no images (jpg, png, bmp, tif, webp)")
    if not store.categories():
        store.add_category("object")
    engine = Engine(model, cache, predictor_kwargs=predictor_kwargs) if model is not None else None
    project = Project(store, root, engine, model_name)
    if engine is not None and prefetch:
        images = [(im["id"], root / im["file_name"]) for im in store.images()]
        engine.start_worker(images)
    return project


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port); OSError (e.g. port in use) names both."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP.
    # Without it the answer's header and body writes meet the client's delayed ACK (~40 ms
    # added to every request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    return sock


class Server:
    """A running server (uvicorn) on a bound socket.

    Arguments:
        project: the project to serve.
        host, port: where to listen; a host other than loopback needs (and gets) a token.
        token: the access token for non-loopback hosts (None: a random one).
    """

    def __init__(self, project: Project, host: str = "127.0.0.1", port: int = 8765,
                 token: str | None = None) -> None:  # fmt: skip
        import uvicorn

        from .security import is_loopback, loopback_hosts
        from .server import create_app, guarded

        self.project = project
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.host = host
        local = is_loopback(host)
        self.token = None if local else (token or secrets.token_urlsafe(24))
        allowed = loopback_hosts(self.port) if local else None
        self.app = guarded(create_app(project), allowed, self.token)
        config = uvicorn.Config(self.app, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=3)  # fmt: skip
        self.uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        if ":" in shown:
            shown = f"[{shown}]"
        url = f"http://{shown}:{self.port}/"
        return url + (f"?token={self.token}" if self.token else "")

    def run(self) -> None:
        """Serve until interrupted (Ctrl-C) or :meth:`stop`."""
        try:
            self.uvicorn.run(sockets=[self.sock])
        finally:
            self.close()

    def start(self) -> Server:
        """Serve in a background thread (tests, scripts, the benchmark); returns self once
        the server accepts requests."""
        self._thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]},
                                        daemon=True)  # fmt: skip
        self._thread.start()
        import time

        while not self.uvicorn.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread ended before it started")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.close()

    def close(self) -> None:
        if self.project.engine is not None:
            self.project.engine.stop_worker()
        self.sock.close()


def serve(project: Project, host: str, port: int, token: str | None = None,
          announce: Callable[[str], None] = print) -> None:  # fmt: skip
    """Serve ``project`` until Ctrl-C, announcing the URL first."""
    server = Server(project, host, port, token)
    announce(server.url)
    server.run()
