"""Client compatibility: the OpenAI Images API under /v1 and the routes of the seed servers.

Every route is a thin adapter over ``Frontend`` (the same validation, engine calls and encoding as
the native routes). ``build_compat_app`` returns one Starlette app that service.py mounts.
"""

from __future__ import annotations

from typing import Callable

from starlette.applications import Starlette

from ..frontend import Frontend
from ..image_store import ImageStore
from ..tasks import task_routes
from .admin_routes import admin_routes
from .openai_routes import openai_routes
from .seed_routes import seed_routes
from .ui_routes import ui_routes


def build_compat_app(get_frontend: Callable[[], Frontend], store: ImageStore) -> Starlette:
    """The compatibility routes, the task progress route and the playground page (/ui)."""
    return Starlette(
        routes=[*openai_routes(get_frontend, store), *seed_routes(get_frontend), *admin_routes(get_frontend),
                *task_routes(get_frontend), *ui_routes()]
    )
