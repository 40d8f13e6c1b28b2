"""A task's webhook events, sent by the API worker that runs it (``runner.py``):

- ``started`` when the engine starts its work (its progress leaves ``queued``), ``progress`` at most
  once per ``T2I_WEBHOOK_PROGRESS_S`` while it runs (step, steps, fraction): read from the engine's
  progress every ``WATCH_S`` while the task wants either;
- then exactly one of ``completed`` (with its image: a link, or base64, per the submit's
  ``response_format``), ``failed`` (the error) or ``cancelled``. A wanted ``started`` that the
  watch missed (a task quicker than one look) is sent just before it.

Events are queued in the shared state and delivered by the webhook sender (``api/webhooks``), never
on the task's path: a receiver that hangs or fails slows no generation.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from t2i_core.api.rendered_image import RenderedImage
from t2i_core.api.webhooks.sender import WebhookSender
from t2i_core.common.errors import T2IError

log = logging.getLogger("t2i.tasks")
#: seconds between two looks at a task's progress for its started / progress events
WATCH_S = 0.25


@dataclass
class Sent:
    """What a task's webhook has been sent so far."""

    started: bool = False
    last_progress_at: float = 0.0
    last_step: int = -1


class TaskNotifier:
    def __init__(self, sender: WebhookSender, link: Callable[[RenderedImage, str], Any], progress_every_s: float):
        self.sender = sender
        #: ``link(image, base)``: the image kept in the image store, its URL under ``base``
        self.link = link
        self.progress_every_s = progress_every_s

    @staticmethod
    def wants(record: Any, event: str) -> bool:
        return record.webhook is not None and event in record.webhook.events

    async def _emit(self, record: Any, event: str, data: dict[str, Any]) -> None:
        try:
            await self.sender.emit(record.task_id, record.submitter or "anonymous", event, record.webhook.url,
                                   {"task_id": record.task_id, **data})
        except T2IError as err:  # the shared state is away: this event is lost, the task is not
            log.warning("task %s: webhook event %s not queued: %s", record.task_id, event, err.message)

    async def watch(self, record: Any, progress: Callable[[], Any], sent: "Sent") -> None:
        """Send started / progress while the task runs (cancel the call when its work ends)."""
        if not (self.wants(record, "started") or self.wants(record, "progress")):
            return
        while True:
            try:
                now = await progress()
            except T2IError:
                now = {}
            state, step, steps = now.get("state"), int(now.get("step") or 0), now.get("steps")
            if state in ("running", "done") or step > 0:
                if not sent.started:
                    sent.started = True
                    if self.wants(record, "started"):
                        await self._emit(record, "started", {"status": "in_progress"})
                due = time.monotonic() - sent.last_progress_at >= self.progress_every_s
                if self.wants(record, "progress") and steps and step != sent.last_step and due:
                    sent.last_step, sent.last_progress_at = step, time.monotonic()
                    await self._emit(record, "progress", {"status": "in_progress", "step": step, "steps": steps,
                                                          "fraction": round(step / steps, 4)})
            await asyncio.sleep(WATCH_S)

    async def final(self, record: Any, sent: Sent, image: RenderedImage | None) -> None:
        """The event that ends the task, from its record after the end (and a missed ``started``)."""
        event = {"completed": "completed", "failed": "failed", "canceled": "cancelled"}.get(record.status)
        if event is None or record.webhook is None:
            return
        if not sent.started and self.wants(record, "started") and record.status == "completed":
            await self._emit(record, "started", {"status": "in_progress"})
        if not self.wants(record, event):
            return
        data: dict[str, Any] = {"status": record.status, "created_at": record.status_body()["created_at"],
                                "completed_at": record.status_body()["completed_at"]}
        if event == "completed" and image is not None:
            data.update(seed=image.seed, model=image.model, width=image.width, height=image.height,
                        media_type=image.media_type)
            if record.webhook.response_format == "b64_json":
                data["b64_json"] = base64.b64encode(image.data).decode("ascii")
            else:
                data["url"] = await self.link(image, record.webhook.base_url)
        if event == "failed" and record.error:
            data["error"] = {"code": record.error.get("code"), "message": record.error.get("message")}
        await self._emit(record, event, data)
