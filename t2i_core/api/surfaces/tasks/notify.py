"""A task's webhook events, sent by the API worker that runs it (``runner.py``):

- ``started`` when the engine starts its work (its progress leaves ``queued``), ``progress`` at most
  once per ``T2I_WEBHOOK_PROGRESS_S`` while it runs (step, steps, fraction): read from the engine's
  progress every ``WATCH_S`` while the task wants either;
- then exactly one of ``completed`` (with its image: a link, or base64, per the submit's
  ``response_format``), ``failed`` (the error) or ``cancelled``: queued where the task's final status
  is written (``outbox.py``), whoever writes it. A wanted ``started`` that the watch missed (a task
  quicker than one look) is sent just before its completion is recorded.

Events are queued in the shared state and delivered by the webhook sender (``api/webhooks``), never
on the task's path: a receiver that hangs or fails slows no generation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from t2i_core.api.webhooks.deliveries import event_message_id
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
    def __init__(self, sender: WebhookSender, progress_every_s: float):
        self.sender = sender
        self.progress_every_s = progress_every_s

    @staticmethod
    def wants(record: Any, event: str) -> bool:
        return record.webhook is not None and event in record.webhook.events

    async def _emit(self, record: Any, event: str, data: dict[str, Any]) -> None:
        once = event_message_id(record.task_id, event) if event == "started" else None
        try:
            await self.sender.emit(record.task_id, record.submitter or "anonymous", event, record.webhook.url,
                                   {"task_id": record.task_id, **data}, message_id=once)
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

    async def started_if_missed(self, record: Any, sent: Sent) -> None:
        """A wanted ``started`` that the watch missed (a task quicker than one look), sent before the
        task's completion is recorded (whose ``completed`` is queued with the record: ``outbox.py``)."""
        if not sent.started and self.wants(record, "started"):
            sent.started = True
            await self._emit(record, "started", {"status": "in_progress"})
