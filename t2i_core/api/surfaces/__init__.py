"""The HTTP surfaces beside the native routes: the OpenAI Images API (``/v1``), the admin API, the A1111
web UI API (``/sdapi/v1``), the routes of the servers this one replaces, and the playground (``/ui``).

Every route is a thin adapter over ``RequestFlow`` (the same validation, engine calls and encoding as
the native routes). Each surface is its own Starlette app with its own error shape
(``api/error_shapes.py``), registered once here; ``Surfaces`` hands a request to the surface that
declares its route, and tells the layers in front of the routes (keys, body caps, the request log)
which shape a path's errors take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Match

from t2i_core.api import error_shapes
from t2i_core.api.error_shapes import Shape, SurfaceErrors
from t2i_core.api.image_store import ImageStore
from t2i_core.api.jobs import Jobs
from t2i_core.api.request_flow import RequestFlow
from t2i_core.api.surfaces.a1111.callers import CallerJobs
from t2i_core.api.surfaces.a1111.routes import a1111_routes
from t2i_core.api.surfaces.addon_listings import addon_listing_routes
from t2i_core.api.surfaces.admin import admin_routes
from t2i_core.api.surfaces.openai_images import openai_routes
from t2i_core.api.surfaces.playground.routes import ui_routes
from t2i_core.api.surfaces.replaced_servers import replaced_server_routes
from t2i_core.state.memory import MemoryState
from t2i_core.state.store import StateStore


@dataclass(frozen=True)
class Surface:
    name: str
    shape: Shape
    app: Starlette


def surface(name: str, shape: Shape, routes: list[BaseRoute]) -> Surface:
    """A surface: its routes in an app that answers their errors in ``shape``."""
    return Surface(name, shape, Starlette(routes=routes, middleware=[Middleware(SurfaceErrors, shape=shape)]))


class Surfaces(Starlette):
    """ASGI app of several surfaces: a request goes to the one whose routes match it (a path with
    another method: that surface's 405); no match: 404. A Starlette app listing every surface's routes,
    so that BentoML's mount (``PassiveMount``) passes it only the paths it serves."""

    def __init__(self, surfaces: list[Surface], default_shape: Shape = error_shapes.native):
        super().__init__(routes=[route for s in surfaces for route in s.app.routes])
        self.surfaces = surfaces
        self.default_shape = default_shape

    def surface_for(self, scope: dict[str, Any]) -> Surface | None:
        partial = None
        for candidate in self.surfaces:
            for route in candidate.app.routes:
                match, _ = route.matches(scope)
                if match is Match.FULL:
                    return candidate
                if match is Match.PARTIAL and partial is None:
                    partial = candidate
        return partial

    def shape_for(self, scope: dict[str, Any]) -> Shape:
        """The error shape of the surface a request goes to (the native routes' for any other path)."""
        found = self.surface_for(scope) if scope.get("type") == "http" else None
        return found.shape if found is not None else self.default_shape

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        found = self.surface_for(scope) if scope["type"] == "http" else None
        if found is None:
            if scope["type"] == "http":
                await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)
            return
        await found.app(scope, receive, send)


def build_surfaces(get_flow: Callable[[], RequestFlow], store: ImageStore, state: StateStore | None = None,
                   jobs: Jobs | None = None) -> Surfaces:
    """Every surface. ``state``: what the API workers (and replicas) share, A1111 callers' latest jobs
    among it (default: this process's memory). ``jobs``: keys, usage and webhooks (the admin API's
    keys and usage routes)."""
    state = state if state is not None else MemoryState()
    return Surfaces([
        surface("openai", error_shapes.openai, [*openai_routes(get_flow, store), *addon_listing_routes(get_flow)]),
        surface("admin", error_shapes.openai, admin_routes(get_flow, jobs)),
        surface("a1111", error_shapes.a1111, a1111_routes(get_flow, CallerJobs(state))),
        surface("replaced", error_shapes.replaced, replaced_server_routes(get_flow)),
        surface("playground", error_shapes.native, ui_routes()),
    ])
