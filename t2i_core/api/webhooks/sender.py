"""The webhook sender: a background loop in each API worker that delivers the due deliveries of the
shared state (``deliveries.py``), never on a request's path.

Every attempt is an ``httpx`` POST of the event's JSON body with the Standard Webhooks headers,
to the address checked just before (``addresses.py``: no server-side request forgery, no redirect
followed), bounded by ``T2I_WEBHOOK_TIMEOUT_S`` in all (a receiver that sends its answer slowly is
cut off too); the answer's body is never read. At most ``PARALLEL`` attempts run at once per worker:
a receiver that hangs or answers 500 holds one of them for at most that long and never holds a
generation. A 2xx delivers; anything else (an error status, a redirect, a timeout, a refused
address, any error of the attempt) is retried after ``T2I_WEBHOOK_BACKOFF_MS`` x 2^(attempt-1), ``T2I_WEBHOOK_ATTEMPTS``
attempts in all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx

from t2i_core.api.keys.records import ANONYMOUS
from t2i_core.api.keys.ring import KeyRing
from t2i_core.api.webhooks.addresses import check_webhook_url
from t2i_core.api.webhooks.deliveries import Deliveries, Delivery, event_body
from t2i_core.api.webhooks.signing import new_message_id, signed_headers
from t2i_core.common import metrics
from t2i_core.common.config import Settings, webhook_allow
from t2i_core.common.errors import T2IError
from t2i_core.state.aio import call

log = logging.getLogger("t2i.webhooks")
#: attempts in flight at once per API worker
PARALLEL = 16
#: seconds between two looks at the due deliveries (an event made here wakes the loop at once)
POLL_S = 0.25
USER_AGENT = "t2i-server-webhooks"


class WebhookSender:
    def __init__(self, deliveries: Deliveries, keyring: KeyRing, settings: Settings):
        self.deliveries = deliveries
        self.keyring = keyring
        self.settings = settings
        self.allow = webhook_allow(settings.webhook_allow)
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._client: httpx.AsyncClient | None = None
        self._attempts: set[asyncio.Task[None]] = set()

    def secret_of(self, key_name: str) -> str | None:
        """The secret that signs a key's webhooks: its own, else ``T2I_WEBHOOK_SECRET``."""
        key = self.keyring.by_name(key_name) if key_name != ANONYMOUS else None
        return (key.webhook_secret if key is not None else None) or self.settings.webhook_secret or None

    async def emit(self, task_id: str, key_name: str, event: str, url: str, data: dict[str, Any],
                   message_id: str | None = None) -> str:
        """Queue ``event`` of a task for delivery to ``url`` (once per ``message_id`` when given); returns
        its ``webhook-id``."""
        now = time.time()
        delivery = Delivery(id=message_id or new_message_id(), task_id=task_id, key=key_name, event=event, url=url,
                            body=event_body(event, data, now), created_at=now)
        await call(self.deliveries.state, self.deliveries.add, delivery)
        self.start()
        return delivery.id

    # ---- the loop ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Run the delivery loop on the running event loop (once; each API worker starts it when it
        starts, so that deliveries left pending by a restart go out without waiting for a new event),
        and look at the due deliveries now."""
        if self._loop_task is None or self._loop_task.done():
            self._wake = asyncio.Event()
            self._slots = asyncio.Semaphore(PARALLEL)
            self._loop_task = asyncio.get_running_loop().create_task(self._deliver_forever())
        assert self._wake is not None
        self._wake.set()

    async def stop(self) -> None:
        """Stop the loop and the attempts in flight (their leases lapse: another worker retries them)."""
        tasks = [t for t in (self._loop_task, *self._attempts) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _deliver_forever(self) -> None:
        assert self._wake is not None and self._slots is not None
        while True:
            try:
                await self._deliver_due()
            except Exception:  # noqa: BLE001 - the state may be away for a while: look again later
                log.warning("webhook deliveries: the due list could not be read; trying again", exc_info=True)
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _deliver_due(self) -> None:
        assert self._slots is not None
        free = PARALLEL - len(self._attempts)
        if free <= 0:
            return
        lease_s = self.settings.webhook_timeout_s + 10.0
        for message_id in await call(self.deliveries.state, self.deliveries.due, time.time(), free):
            claimed = await call(self.deliveries.state, self.deliveries.claim, message_id, lease_s)
            if claimed is None:
                continue
            attempt = asyncio.get_running_loop().create_task(self._attempt(claimed))
            self._attempts.add(attempt)
            attempt.add_done_callback(self._attempts.discard)

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            status, error = await self._post(delivery)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the attempt failed: recorded, retried
            log.exception("webhook %s: its attempt raised", delivery.id)
            status, error = None, f"{type(exc).__name__}: {str(exc)[:200]}"
        try:
            after = await call(self.deliveries.state, self.deliveries.finish_attempt, delivery, status, error,
                               self.settings.webhook_attempts, self.settings.webhook_backoff_ms / 1000)
        except Exception:  # noqa: BLE001 - the state is away: the lease lapses and the attempt is made again
            log.warning("webhook %s: its attempt could not be recorded", delivery.id, exc_info=True)
            return
        outcome = "delivered" if after.state == "delivered" else "failed" if after.state == "failed" else "retry"
        metrics.record_webhook(delivery.key, delivery.event, outcome)
        line = {"event": "webhook", "key": delivery.key, "task_id": delivery.task_id, "webhook_id": delivery.id,
                "webhook_event": delivery.event, "attempt": after.attempts, "status": status, "outcome": outcome,
                **({"error": error} if error else {})}
        (log.info if outcome == "delivered" else log.warning)(json.dumps(line, separators=(",", ":")))
        if outcome == "retry" and self._wake is not None:
            asyncio.get_running_loop().call_later(max(0.0, after.next_at - time.time()), self._wake.set)

    async def _post(self, delivery: Delivery) -> tuple[int | None, str | None]:
        secret = self.secret_of(delivery.key)
        if secret is None:
            return None, "no signing secret: the key has no webhook_secret and T2I_WEBHOOK_SECRET is unset"
        body = delivery.body.encode()
        try:
            target = await check_webhook_url(delivery.url, self.allow)  # again: DNS may have changed
            headers = {"content-type": "application/json", "user-agent": USER_AGENT, "host": target.host_header(),
                       **signed_headers(secret, delivery.id, body, time.time())}
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            client = self._http()

            async def send() -> int:
                request = client.build_request("POST", target.connect_url(), content=body, headers=headers,
                                               extensions=extensions)
                response = await client.send(request, stream=True)  # the answer's body is never read
                await response.aclose()
                return response.status_code

            status = await asyncio.wait_for(send(), self.settings.webhook_timeout_s)
        except T2IError as err:
            return None, err.message[:300]
        except asyncio.TimeoutError:
            return None, f"no answer within {self.settings.webhook_timeout_s}s (T2I_WEBHOOK_TIMEOUT_S)"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {str(exc)[:200]}"
        return status, None if 200 <= status < 300 else f"answered {status}"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            timeout = float(self.settings.webhook_timeout_s)
            self._client = httpx.AsyncClient(follow_redirects=False, timeout=httpx.Timeout(timeout),
                                             limits=httpx.Limits(max_connections=PARALLEL), trust_env=False)
        return self._client
