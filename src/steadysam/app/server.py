"""The HTTP API and the browser UI of ``steadysam annotate`` (FastAPI; docs/app.md lists every
route).

Handlers only translate: JSON in, :class:`~steadysam.app.project.Project` call, JSON out. Every
error is a 4xx (or, for a bug, 500) with ``{"error": "..."}`` and never a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .project import Project
from .security import BodyTooLarge, Guard, MiB
from .store import STATUSES, Conflict, NotFound, Prompt, StoreError

STATIC = Path(__file__).with_name("static")
IMPORT_LIMIT = 512 * MiB
log = logging.getLogger("steadysam.app")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CategoryIn(_Body):
    name: str = Field(min_length=1, max_length=200)


class StatusIn(_Body):
    status: Literal[STATUSES]  # type: ignore[valid-type]


class ObjectIn(_Body):
    category_id: int
    name: str = Field(default="", max_length=200)


class ObjectPatch(_Body):
    name: str | None = Field(default=None, max_length=200)
    category_id: int | None = None
    hidden: bool | None = None
    version: int | None = None


class PromptIn(_Body):
    type: Literal["click", "box"]
    x: float | None = None
    y: float | None = None
    positive: bool = True
    box: list[float] | None = Field(default=None, min_length=4, max_length=4)
    version: int | None = None

    def prompt(self) -> Prompt:
        if self.type == "click":
            if self.x is None or self.y is None or self.box is not None:
                raise StoreError("a click needs x and y (and no box)")
            return Prompt("click", (self.x, self.y), self.positive)
        if self.box is None or self.x is not None or self.y is not None:
            raise StoreError("a box needs box: [x0, y0, x1, y1] (and no x, y)")
        return Prompt("box", tuple(self.box))


class VersionIn(_Body):
    version: int | None = None


class SettingsIn(_Body):
    plugin: bool


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(project: Project) -> FastAPI:
    """The FastAPI application of one project (wrap it with :func:`guarded` to serve it)."""
    app = FastAPI(title="steadysam annotate", docs_url=None, redoc_url=None, openapi_url=None)
    store = project.store

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, e: NotFound) -> JSONResponse:
        return _error(404, str(e))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, e: Conflict) -> JSONResponse:
        return _error(409, str(e))

    @app.exception_handler(ValueError)  # StoreError, ImageError, bad values
    async def _bad(request: Request, e: ValueError) -> JSONResponse:
        return _error(400, str(e).strip().splitlines()[0] if str(e).strip() else "bad request")

    @app.exception_handler(PermissionError)
    async def _forbidden(request: Request, e: PermissionError) -> JSONResponse:
        return _error(403, str(e))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, e: BodyTooLarge) -> JSONResponse:
        return _error(413, "request body is over the size limit")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(e).__name__}); the server's log has details")

    # -- the page ------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -- project -------------------------------------------------------------------------
    @app.get("/api/project")
    def get_project() -> dict[str, Any]:
        engine = project.engine
        return {
            "images_dir": project.root.name,
            "model": project.model_name,
            "plugin_available": bool(engine and engine.plugin.available),
            "plugin_enabled": bool(engine and engine.plugin_enabled),
            "categories": store.categories(),
            "statuses": list(STATUSES),
        }

    @app.get("/api/status")
    def get_status() -> dict[str, Any]:
        images = store.images()
        counts = {s: sum(1 for i in images if i["status"] == s) for s in STATUSES}
        embed = project.engine.progress() if project.engine else None
        return {"images": len(images), "status": counts, "embeddings": embed}

    @app.put("/api/settings")
    def put_settings(body: SettingsIn) -> dict[str, Any]:
        return {"plugin_enabled": project.set_plugin(body.plugin)}

    # -- images --------------------------------------------------------------------------
    @app.get("/api/images")
    def list_images() -> list[dict[str, Any]]:
        engine = project.engine
        out = store.images()
        for im in out:
            im["prepared"] = bool(engine and engine.is_prepared(im["id"]))
        return out

    @app.get("/api/images/{image_id}")
    def get_image(image_id: int) -> dict[str, Any]:
        return {**store.image(image_id), "objects": store.objects(image_id)}

    @app.get("/api/images/{image_id}/file")
    def get_image_file(image_id: int) -> Response:
        return Response(
            project.image_bytes(image_id),
            media_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=3600"},
        )

    @app.post("/api/images/{image_id}/open")
    def open_image(image_id: int) -> dict[str, Any]:
        return project.open_image(image_id)

    @app.put("/api/images/{image_id}/status")
    def put_status(image_id: int, body: StatusIn) -> dict[str, Any]:
        return store.set_image_status(image_id, body.status)

    @app.post("/api/images/{image_id}/objects", status_code=201)
    def create_object(image_id: int, body: ObjectIn) -> dict[str, Any]:
        return store.create_object(image_id, body.category_id, body.name)

    # -- categories ----------------------------------------------------------------------
    @app.get("/api/categories")
    def list_categories() -> list[dict[str, Any]]:
        return store.categories()

    @app.post("/api/categories", status_code=201)
    def add_category(body: CategoryIn) -> dict[str, Any]:
        return store.add_category(body.name)

    @app.patch("/api/categories/{category_id}")
    def rename_category(category_id: int, body: CategoryIn) -> dict[str, Any]:
        return store.rename_category(category_id, body.name)

    @app.delete("/api/categories/{category_id}", status_code=204)
    def delete_category(category_id: int) -> Response:
        store.delete_category(category_id)
        return Response(status_code=204)

    # -- objects -------------------------------------------------------------------------
    @app.get("/api/objects/{object_id}")
    def get_object(object_id: int) -> dict[str, Any]:
        return store.object(object_id)

    @app.patch("/api/objects/{object_id}")
    def patch_object(object_id: int, body: ObjectPatch) -> dict[str, Any]:
        return store.update_object(
            object_id,
            name=body.name,
            category_id=body.category_id,
            hidden=body.hidden,
            expected_version=body.version,
        )

    @app.delete("/api/objects/{object_id}", status_code=204)
    def delete_object(object_id: int, version: int | None = None) -> Response:
        project.delete_object(object_id, version)
        return Response(status_code=204)

    @app.post("/api/objects/{object_id}/prompts")
    def add_prompt(object_id: int, body: PromptIn) -> dict[str, Any]:
        return project.add_prompt(object_id, body.prompt(), body.version)

    @app.post("/api/objects/{object_id}/undo")
    def undo(object_id: int, body: Annotated[VersionIn | None, Body()] = None) -> dict[str, Any]:
        return project.undo(object_id, body.version if body else None)

    @app.post("/api/objects/{object_id}/redo")
    def redo(object_id: int, body: Annotated[VersionIn | None, Body()] = None) -> dict[str, Any]:
        return project.redo(object_id, body.version if body else None)

    # -- export / import -----------------------------------------------------------------
    @app.get("/api/export/{fmt}")
    def export(fmt: str, segmentation: Literal["rle", "polygon"] = "rle") -> Response:
        data, media, name = project.export_bytes(fmt, segmentation)
        disposition = f'attachment; filename="{name}"'
        return Response(data, media_type=media, headers={"Content-Disposition": disposition})

    @app.post("/api/import/coco")
    async def import_coco(request: Request) -> dict[str, Any]:
        data = await request.body()
        if not data:
            raise StoreError("the request body must be a COCO JSON file")
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(project.import_coco_bytes, data)

    return app


def guarded(app: FastAPI, allowed_hosts, token: str | None) -> Guard:
    """``app`` behind the host / token / origin / size checks of ``security.py``."""
    return Guard(app, allowed_hosts, token, large_body_paths={"/api/import/": IMPORT_LIMIT})
