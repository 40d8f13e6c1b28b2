"""Workarounds for BentoML 1.4.39 costs and bugs found by measuring this server.

- ``NO_SESSION_RENEWAL``: BentoML's inter-service client renews its HTTP session every 100 requests
  (or 300 s) and closes the old one while other requests are still in flight on it; they failed
  (500) after the engine had done the work. The engine runs beside the API: nothing to renew for.
- ``memoize_media_types``: for a root output (e.g. ``list[EngineResult]``) BentoML works out the
  response's media type by generating the output model's whole JSON schema, on every response: a
  profile of the engine under load showed about 40% of its event loop's busy time there. The
  media type never changes, so it is computed once.
"""

from __future__ import annotations

from typing import Any

NO_SESSION_RENEWAL = {"max_requests": 2**31 - 1, "max_age": 1e12}


def memoize_media_types(*services: Any) -> None:
    for service in services:
        for method in service.apis.values():
            spec = method.output_spec
            spec.media_type = spec.mime_type()
