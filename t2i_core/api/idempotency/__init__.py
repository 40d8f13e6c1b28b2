"""Idempotency keys (the IETF ``Idempotency-Key`` header draft, with Stripe's semantics) on every
generation route and the task submit: ``store.py`` keeps first answers in the shared state,
``middleware.py`` answers a retry from them."""

from t2i_core.api.idempotency.store import IdempotencyStore

__all__ = ["IdempotencyStore"]
