"""Webhooks: a task's events pushed to a URL, signed per the Standard Webhooks spec.

- ``events.py``: the event names;
- ``addresses.py``: where a webhook may go (no server-side request forgery: private, loopback,
  link-local and metadata addresses refused unless ``T2I_WEBHOOK_ALLOW`` allows them);
- ``signing.py``: the ``webhook-id`` / ``webhook-timestamp`` / ``webhook-signature`` headers;
- ``deliveries.py``: deliveries in the shared state (any API worker or replica delivers them, at least
  once, retried with exponential backoff);
- ``sender.py``: the background loop that delivers them, never on a request's path.
"""
