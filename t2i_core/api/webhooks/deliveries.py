"""Webhook deliveries in the shared state: whichever API worker (or replica) is free delivers them, at
least once, each retried with exponential backoff until it is answered 2xx or its attempts run out.

- ``webhook:<id>``: a delivery (its event, URL, body, state, attempts, last answer), kept as long as
  its task; its body only while it is pending (a delivered or failed one keeps what ``status`` shows);
- index ``webhooks:due``: pending deliveries by when their next attempt is due (a leased one: by when
  its lease lapses);
- index ``task:<id>:webhooks``: a task's deliveries, by creation (the task's status lists them).

An attempt is claimed with an atomic ``update`` (a lease of the attempt's time limit and a margin),
so two workers never send the same attempt, and one that dies mid-attempt leaves the delivery to
the others once its lease lapses. Its ``webhook-id`` stays the same on every attempt.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel

from t2i_core.state.store import StateStore

DUE = "webhooks:due"
State = Literal["pending", "delivered", "failed"]


def delivery_key(message_id: str) -> str:
    return f"webhook:{message_id}"


def task_deliveries(task_id: str) -> str:
    return f"task:{task_id}:webhooks"


class Delivery(BaseModel):
    id: str
    task_id: str
    #: the key whose secret signs it (its name; the secret itself is never stored)
    key: str
    event: str
    url: str
    body: str
    created_at: float
    state: State = "pending"
    attempts: int = 0
    next_at: float = 0.0
    lease: str = ""
    lease_until: float = 0.0
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: float | None = None

    def public(self) -> dict[str, Any]:
        """What the task's status shows of it."""
        return {"webhook_id": self.id, "event": self.event, "state": self.state, "attempts": self.attempts,
                "last_status": self.last_status, "last_error": self.last_error, "delivered_at": self.delivered_at}


class Deliveries:
    """Synchronous, on any backend; the sender calls it through ``state.aio.call``."""

    def __init__(self, state: StateStore, ttl_s: float):
        self.state = state
        self.ttl_s = ttl_s

    def add(self, delivery: Delivery) -> bool:
        """Queue ``delivery``, once per id: False (and nothing written) when its id is queued already
        (an event with an id made from its task and name is queued once, whoever queues it again)."""
        delivery.next_at = delivery.created_at
        added = self.state.put(delivery_key(delivery.id), delivery.model_dump_json().encode(), ttl_s=self.ttl_s,
                               only_if_absent=True)
        if not added:
            # queued already; its indexes again in case the call that queued it failed before them
            found = self.get(delivery.id)
            if found is None or found.state != "pending" or found.lease_until > time.time():
                return False
            delivery = found
        self.state.index_add(task_deliveries(delivery.task_id), delivery.id, delivery.created_at, ttl_s=self.ttl_s)
        self.state.index_add(DUE, delivery.id, delivery.next_at)
        return added

    def get(self, message_id: str) -> Delivery | None:
        raw = self.state.get(delivery_key(message_id))
        return None if raw is None else Delivery.model_validate_json(raw)

    def of_task(self, task_id: str, limit: int = 100) -> list[Delivery]:
        ids = [member for member, _ in self.state.index_range(task_deliveries(task_id), limit=limit,
                                                              newest_first=False)]
        return [Delivery.model_validate_json(raw) for raw in self.state.get_many([delivery_key(i) for i in ids])
                if raw is not None]

    def due(self, now: float, limit: int) -> list[str]:
        return [member for member, _ in self.state.index_range(DUE, max_score=now, limit=limit, newest_first=False)]

    def claim(self, message_id: str, lease_s: float, now: float | None = None) -> Delivery | None:
        """The delivery, leased to the caller for one attempt; None when it is not pending, another
        worker holds it, or it is gone (then it leaves the due index)."""
        now = time.time() if now is None else now
        lease = uuid.uuid4().hex

        def change(raw: bytes | None) -> bytes | None:
            if raw is None:
                return None
            found = Delivery.model_validate_json(raw)
            if found.state != "pending" or found.lease_until > now or found.next_at > now:
                return None
            found.lease, found.lease_until = lease, now + lease_s
            return found.model_dump_json().encode()

        raw = self.state.update(delivery_key(message_id), change)
        if raw is None:
            self.state.index_remove(DUE, message_id)
            return None
        found = Delivery.model_validate_json(raw)
        if found.state != "pending":
            self.state.index_remove(DUE, message_id)
        if found.lease != lease:
            return None
        # out of the due list while leased (due again when the lease lapses): the other workers'
        # ``due`` answers the deliveries nobody holds, not this one again and again
        self.state.index_add(DUE, message_id, found.lease_until)
        return found

    def finish_attempt(self, claimed: Delivery, status: int | None, error: str | None, max_attempts: int,
                       backoff_s: float, now: float | None = None) -> Delivery:
        """Record an attempt's outcome: delivered on a 2xx, else pending again after the backoff
        (``backoff_s`` x 2^(attempts-1)), or failed once ``max_attempts`` were made."""
        now = time.time() if now is None else now
        ok = status is not None and 200 <= status < 300

        def change(raw: bytes | None) -> bytes | None:
            if raw is None:
                return None
            found = Delivery.model_validate_json(raw)
            if found.lease != claimed.lease:
                return None  # the lease lapsed and another worker took it
            found.attempts += 1
            found.last_status, found.last_error = status, error
            found.lease, found.lease_until = "", 0.0
            if ok:
                found.state, found.delivered_at = "delivered", now
                found.body = ""  # sent: what is kept is what the task's status shows
            elif found.attempts >= max_attempts:
                found.state = "failed"
                found.body = ""
            else:
                found.next_at = now + backoff_s * 2 ** (found.attempts - 1)
            return found.model_dump_json().encode()

        raw = self.state.update(delivery_key(claimed.id), change)
        if raw is None:
            self.state.index_remove(DUE, claimed.id)
            return claimed
        found = Delivery.model_validate_json(raw)
        if found.state == "pending":
            self.state.index_add(DUE, found.id, found.next_at)
        else:
            self.state.index_remove(DUE, found.id)
        return found


def event_message_id(task_id: str, event: str) -> str:
    """The ``webhook-id`` of a task's event that is sent once (``started`` and the final one): made from
    the task and the event, so that whoever queues it again (another worker, a retried record) queues
    nothing more."""
    return "msg_" + hashlib.sha256(f"{task_id}:{event}".encode()).hexdigest()[:32]


def event_body(event: str, data: dict[str, Any], now: float) -> str:
    """The JSON body of an event, as Standard Webhooks suggests: ``{"type", "timestamp", "data"}``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    return json.dumps({"type": f"task.{event}", "timestamp": stamp, "data": data}, separators=(",", ":"))
