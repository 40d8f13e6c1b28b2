"""The admin API: model states, load, unload, set the default model; keys and usage (``admin_keys.py``).

Protected by the admin keys (``T2I_ADMIN_KEY``, and the keys of role admin in the keys file;
``Authorization: Bearer <key>``); disabled (403) when there is none; 401 without one.

    GET  /admin/models                 every model with its state
    POST /admin/models/{id}/load       load now (waits for it)
    POST /admin/models/{id}/unload     unload (409 while requests use it)
    POST /admin/default   {"model": id}  requests without a model use this one
"""

from __future__ import annotations

import hmac
from typing import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from t2i_core.api.jobs import Jobs
from t2i_core.api.keys.context import SCOPE_KEY
from t2i_core.api.surfaces.admin_keys import admin_key_routes
from t2i_core.common.errors import Forbidden, InvalidRequest, Unauthorized
from t2i_core.api.request_flow import RequestFlow
from t2i_core.api.surfaces.reading import read_json_object


def has_admin_key(request: Request, admin_key: str) -> bool:
    """Whether the request was sent with an admin key: the key the guard resolved has role admin
    (``T2I_ADMIN_KEY``, or an admin key of the keys file); without the guard (an app alone), the
    bearer token is ``admin_key`` (compared in constant time)."""
    key = request.scope.get(SCOPE_KEY)
    if key is not None:
        return bool(key.admin)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return bool(admin_key) and scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), admin_key.encode())


def check_admin_key(request: Request, admin_key: str, enabled: bool | None = None) -> None:
    """``enabled``: whether the server has an admin key at all (default: ``admin_key`` is set)."""
    if not (bool(admin_key) if enabled is None else enabled):
        raise Forbidden("the admin API is disabled: set T2I_ADMIN_KEY (or give a key role admin in the keys file) "
                        "to enable it")
    if not has_admin_key(request, admin_key):
        raise Unauthorized("admin routes need 'Authorization: Bearer <admin key>' (T2I_ADMIN_KEY, or a key of "
                           "role admin in the keys file)")


def admin_routes(get_flow: Callable[[], RequestFlow], jobs: Jobs | None = None) -> list[Route]:
    """``jobs``: the keys, usage and webhooks (with them, the routes of ``admin_keys.py`` too)."""

    def authorized(request: Request) -> RequestFlow:
        flow = get_flow()
        check_admin_key(request, flow.settings.admin_key, jobs.keyring.admin_enabled() if jobs else None)
        return flow

    async def list_models(request: Request) -> Response:
        flow = authorized(request)
        rows = await flow.model_states()  # the engine's states and default
        return JSONResponse({"default": next((row["id"] for row in rows if row["default"]), None), "models": rows})

    async def load(request: Request) -> Response:
        return JSONResponse(await authorized(request).model_action("load", request.path_params["model_id"]))

    async def unload(request: Request) -> Response:
        return JSONResponse(await authorized(request).model_action("unload", request.path_params["model_id"]))

    async def set_default(request: Request) -> Response:
        flow = authorized(request)
        model_id = (await read_json_object(request)).get("model")
        if not isinstance(model_id, str):
            raise InvalidRequest(f"model must be a model id string; got {model_id!r}", param="model")
        return JSONResponse(await flow.model_action("set_default", model_id))

    return [
        *(admin_key_routes(authorized, jobs) if jobs is not None else []),
        Route("/admin/models", list_models, methods=["GET"]),
        Route("/admin/models/{model_id:path}/load", load, methods=["POST"]),
        Route("/admin/models/{model_id:path}/unload", unload, methods=["POST"]),
        Route("/admin/default", set_default, methods=["POST"]),
    ]
