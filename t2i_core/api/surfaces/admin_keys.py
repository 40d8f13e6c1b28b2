"""The admin API's keys and usage routes:

    GET  /admin/keys                 the keys accepted now: name, role, class, weight, limits, webhook
                                     (never a key, a digest or a secret)
    POST /admin/keys/reload          read the keys file again, in every API worker and replica
                                     (400 naming the problem when it cannot be used: the keys in force stay)
    GET  /admin/usage[?day=YYYY-MM-DD]   per key name: images, pixels, engine_seconds, requests (in all,
                                     or on one UTC day), for every API worker and replica together
"""

from __future__ import annotations

import re
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from t2i_core.api.keys.keys_file import KeysFileError
from t2i_core.common.errors import InvalidRequest
from t2i_core.state.aio import call

DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def admin_key_routes(authorized: Callable[[Request], Any], jobs: Any) -> list[Route]:
    async def list_keys(request: Request) -> Response:
        authorized(request)
        return JSONResponse({"keys": [k.public() for k in jobs.keyring.keys()], "required": jobs.keyring.required})

    async def reload_keys(request: Request) -> Response:
        authorized(request)
        try:
            names = await call(jobs.state, jobs.keyring.reload_everywhere)
        except KeysFileError as exc:
            raise InvalidRequest(f"the keys file was not reloaded (the keys in force stay): {exc}",
                                 param="T2I_API_KEYS_FILE", code="keys_file_invalid") from None
        return JSONResponse({"reloaded": True, "keys": names})

    async def usage(request: Request) -> Response:
        authorized(request)
        day = request.query_params.get("day") or None
        if day is not None and not DAY.fullmatch(day):
            raise InvalidRequest(f"day must be a UTC date as YYYY-MM-DD; got {day!r}", param="day")
        await call(jobs.state, jobs.usage.flush)  # this worker's last second too
        return JSONResponse({"day": day, "keys": await call(jobs.state, jobs.usage.read, day)})

    return [
        Route("/admin/keys", list_keys, methods=["GET"]),
        Route("/admin/keys/reload", reload_keys, methods=["POST"]),
        Route("/admin/usage", usage, methods=["GET"]),
    ]
