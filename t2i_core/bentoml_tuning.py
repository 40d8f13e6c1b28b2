"""Workarounds for BentoML 1.4.39 costs and bugs found by measuring this server.

- ``NO_SESSION_RENEWAL``: BentoML's inter-service client renews its HTTP session every 100 requests
  (or 300 s) and closes the old one while other requests are still in flight on it; they failed
  (500) after the engine had done the work. The engine runs beside the API: nothing to renew for.
- ``memoize_media_types``: for a root output (e.g. ``list[EngineResult]``) BentoML works out the
  response's media type by generating the output model's whole JSON schema, on every response: a
  profile of the engine under load showed about 40% of its event loop's busy time there. The
  media type never changes, so it is computed once.
- ``keep_canceled_tasks_canceled``: when a task's function returns, BentoML stores its answer with
  status completed or failed, overwriting a ``canceled`` set meanwhile; a canceled task stays canceled
  (its stored answer is the 499 saying so).
"""

from __future__ import annotations

from typing import Any

NO_SESSION_RENEWAL = {"max_requests": 2**31 - 1, "max_age": 1e12}


def memoize_media_types(*services: Any) -> None:
    for service in services:
        for method in service.apis.values():
            spec = method.output_spec
            spec.media_type = spec.mime_type()


def keep_canceled_tasks_canceled() -> None:
    from _bentoml_impl.tasks.result import ResultStatus, Sqlite3Store

    original = Sqlite3Store.set_result
    if getattr(original, "_t2i_patched", False):
        return

    async def set_result(self: Any, task_id: str, result: Any, status: ResultStatus) -> None:
        try:
            if (await self.get_status(task_id)).status is ResultStatus.CANCELED:
                status = ResultStatus.CANCELED
        except KeyError:
            pass
        await original(self, task_id, result, status)

    set_result._t2i_patched = True  # type: ignore[attr-defined]
    Sqlite3Store.set_result = set_result  # type: ignore[method-assign]
