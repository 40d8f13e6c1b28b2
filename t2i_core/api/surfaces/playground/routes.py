"""The playground page at /ui: three static files shipped in the package (t2i_core/api/surfaces/playground/static), no CDN.

The page talks to the public API only; see t2i_core/api/surfaces/playground/static/app.js.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

UI_DIR = Path(__file__).resolve().parent / "static"
FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "style.css": "text/css; charset=utf-8"}


def ui_routes() -> list[Route]:
    async def page(request: Request) -> Response:
        return _file("index.html")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "":
            return _file("index.html")
        if name not in FILES:
            return Response("not found", status_code=404, media_type="text/plain")
        return _file(name)

    async def root(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    return [Route("/ui", page, methods=["GET"]), Route("/ui/{name:path}", asset, methods=["GET"]),
            Route("/playground", root, methods=["GET"])]


def _file(name: str) -> FileResponse:
    # no-cache: a server upgrade must not leave browsers on an old app.js
    return FileResponse(UI_DIR / name, media_type=FILES[name], headers={"Cache-Control": "no-cache"})
