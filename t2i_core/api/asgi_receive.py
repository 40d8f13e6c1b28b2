"""ASGI ``receive`` callables for middlewares that read a request's body before the app does."""

from __future__ import annotations

from typing import Any


def replay_body(body: bytes, receive: Any) -> Any:
    """A receive that hands over the already-read body, then waits on the real one (disconnects)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def no_receive() -> dict[str, Any]:
    """For an answer sent without reading the request."""
    return {"type": "http.disconnect"}
