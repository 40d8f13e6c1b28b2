"""Standard Webhooks signatures (https://www.standardwebhooks.com): with the ``standardwebhooks``
package, so that a receiver verifies with the same library (``Webhook(secret).verify(body, headers)``).

    webhook-id:        msg_<32 hex>   the same on every retry of one event: a receiver deduplicates by it
    webhook-timestamp: <unix seconds> when this attempt was signed (receivers refuse ones over 5 minutes off)
    webhook-signature: v1,<base64 of HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>
"""

from __future__ import annotations

import datetime
import uuid

from standardwebhooks import Webhook


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def signed_headers(secret: str, message_id: str, body: bytes, now: float) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent now."""
    when = datetime.datetime.fromtimestamp(int(now), tz=datetime.timezone.utc)
    return {"webhook-id": message_id, "webhook-timestamp": str(int(now)),
            "webhook-signature": Webhook(secret).sign(message_id, when, body)}
