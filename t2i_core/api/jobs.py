"""What serving many callers at once takes, in one place for the server to build and hand on: the keys
(``keys/``), their limits and usage, webhook deliveries (``webhooks/``) and idempotent answers
(``idempotency.py``), all on the state shared by the API workers and replicas."""

from __future__ import annotations

from dataclasses import dataclass

from t2i_core.api.idempotency import IdempotencyStore
from t2i_core.api.keys.limits import KeyLimits
from t2i_core.api.keys.ring import KeyRing
from t2i_core.api.keys.usage import UsageMeter
from t2i_core.api.webhooks.deliveries import Deliveries
from t2i_core.api.webhooks.sender import WebhookSender
from t2i_core.common.config import Settings, webhook_allow
from t2i_core.state.store import StateStore

#: a slot in a key's max_concurrent lapses this long after a request's own time limit
SLOT_MARGIN_S = 60.0


@dataclass
class Jobs:
    settings: Settings
    state: StateStore
    keyring: KeyRing
    limits: KeyLimits
    usage: UsageMeter
    deliveries: Deliveries
    sender: WebhookSender
    idempotency: IdempotencyStore

    def start(self) -> None:
        """What every API worker runs from its start, on its event loop: the webhook sender (deliveries
        left pending by a restart, or queued by another worker that is gone, go out from here too)."""
        self.sender.start()

    @property
    def webhook_allow(self):  # type: ignore[no-untyped-def]
        return webhook_allow(self.settings.webhook_allow)


def build_jobs(settings: Settings, state: StateStore) -> Jobs:
    keyring = KeyRing(settings, state)
    deliveries = Deliveries(state, ttl_s=max(settings.task_result_ttl_s, 3600) + 600)
    return Jobs(
        settings=settings, state=state, keyring=keyring,
        limits=KeyLimits(state, slot_s=settings.request_timeout_s + SLOT_MARGIN_S),
        usage=UsageMeter(state), deliveries=deliveries, sender=WebhookSender(deliveries, keyring, settings),
        idempotency=IdempotencyStore(state, settings.idempotency_ttl_s, settings.idempotency_max_bytes,
                                     running_s=settings.request_timeout_s + SLOT_MARGIN_S),
    )
