"""A task's final webhook event, queued where its final status is written (``TaskStore._finish``):
whoever ends the task (its runner, a cancel taken by any worker, a late record once the state is
back, the worker that finds it lost) queues ``completed``, ``failed`` or ``cancelled`` in the same
call. Its ``webhook-id`` is made from the task and the event (``event_message_id``), so each is queued
once, however often the record is written or the call retried.

Bounded bodies: a ``completed`` event carries its image as base64 only up to ``MAX_INLINE_BYTES``; a
larger image goes as a link (``url``, as with ``"response_format": "url"``) so that pending deliveries
keep the shared state small.

Synchronous (it runs inside the store's call, off the event loop).
"""

from __future__ import annotations

import base64
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from t2i_core.api.webhooks.deliveries import Deliveries, Delivery, event_body, event_message_id

if TYPE_CHECKING:
    from t2i_core.api.surfaces.tasks.store import StoredResult, TaskRecord

log = logging.getLogger("t2i.tasks")
#: a completed event's image bytes sent inline (base64) at most; larger ones go as a link
MAX_INLINE_BYTES = 1024 * 1024
#: the event of each final status
FINAL_EVENT = {"completed": "completed", "failed": "failed", "canceled": "cancelled"}


class TaskOutbox:
    def __init__(self, deliveries: Deliveries, link: Callable[[bytes, str, str], str]):
        self.deliveries = deliveries
        #: ``link(data, media_type, base)``: the image kept in the image store, its URL under ``base``
        self.link = link

    def finished(self, record: "TaskRecord", result: "StoredResult | None") -> bool:
        """Queue the final event of a finished task when its webhook wants it (once); a completed task's
        event needs its ``result`` (without it nothing is queued). Returns whether it queued one now."""
        event = FINAL_EVENT.get(record.status)
        if event is None or record.webhook is None or event not in record.webhook.events:
            return False
        if event == "completed" and result is None:
            return False
        message_id = event_message_id(record.task_id, event)
        queued = self.deliveries.get(message_id)
        if queued is not None:  # queued already (no image stored again for its link): indexed again only
            return self.deliveries.add(queued)
        body = record.status_body()
        data: dict[str, Any] = {"task_id": record.task_id, "status": record.status,
                                "created_at": body["created_at"], "completed_at": body["completed_at"]}
        if result is not None and event == "completed":
            data.update(completed_data(result))
            if record.webhook.response_format == "b64_json" and len(result.body) <= MAX_INLINE_BYTES:
                data["b64_json"] = base64.b64encode(result.body).decode("ascii")
            else:
                data["url"] = self.link(result.body, result.media_type, record.webhook.base_url)
        if event == "failed" and record.error:
            data["error"] = {"code": record.error.get("code"), "message": record.error.get("message")}
        now = time.time()
        return self.deliveries.add(Delivery(
            id=message_id, task_id=record.task_id, key=record.submitter or "anonymous", event=event,
            url=record.webhook.url, body=event_body(event, data, now), created_at=now))


def completed_data(result: "StoredResult") -> dict[str, Any]:
    """Seed, model, size and media type of a completed task's image, from its result's headers."""
    headers = {k.lower(): v for k, v in result.headers.items()}
    width, _, height = headers.get("x-image-size", "").partition("x")
    seed = headers.get("x-seed")
    return {"seed": int(seed) if seed and seed.lstrip("-").isdigit() else seed, "model": headers.get("x-model"),
            "width": int(width) if width.isdigit() else None, "height": int(height) if height.isdigit() else None,
            "media_type": result.media_type}
