"""Client compatibility: the OpenAI Images API under /v1 and the routes of the replaced servers.

Every route is a thin adapter over ``RequestFlow`` (the same validation, engine calls and encoding as
the native routes). ``build_surfaces_app`` returns one Starlette app that service.py mounts.
"""

from __future__ import annotations

from typing import Callable

from starlette.applications import Starlette

from t2i_core.api.request_flow import RequestFlow
from t2i_core.api.image_store import ImageStore
from t2i_core.api.surfaces.a1111.callers import CallerJobs
from t2i_core.api.surfaces.a1111.routes import a1111_routes
from t2i_core.api.surfaces.admin import admin_routes
from t2i_core.api.surfaces.addon_listings import addon_listing_routes
from t2i_core.api.surfaces.openai_images import openai_routes
from t2i_core.api.surfaces.replaced_servers import replaced_server_routes
from t2i_core.api.surfaces.playground.routes import ui_routes


def build_surfaces_app(get_flow: Callable[[], RequestFlow], store: ImageStore,
                       a1111_callers: CallerJobs | None = None) -> Starlette:
    """The OpenAI, seed, admin and A1111 routes and the playground page (/ui).
    ``a1111_callers``: where A1111 callers' latest requests are kept (in memory by default)."""
    return Starlette(
        routes=[*openai_routes(get_flow, store), *replaced_server_routes(get_flow), *admin_routes(get_flow),
                *a1111_routes(get_flow, a1111_callers), *addon_listing_routes(get_flow),
                *ui_routes()]
    )
