"""The webhook events a task can send, and which a task sends when its submit names none.

No imports beyond the standard library: the keys file checks its ``webhook_events`` against these.
"""

from __future__ import annotations

#: every event: the task's work started in the engine, made progress (at most one per
#: ``T2I_WEBHOOK_PROGRESS_S``), and how it ended
EVENTS = ("started", "progress", "completed", "failed", "cancelled")
#: sent when neither the submit nor the key names events: all but ``progress``
DEFAULT_EVENTS = ("started", "completed", "failed", "cancelled")
#: the events that end a task (one of them is always the last)
FINAL_EVENTS = ("completed", "failed", "cancelled")


def check_events(events: object, where: str) -> tuple[str, ...]:
    """``events`` as a tuple of known event names; ValueError naming ``where`` and the value otherwise."""
    if isinstance(events, str):
        events = [e.strip() for e in events.split(",") if e.strip()]
    if not isinstance(events, (list, tuple)) or not events or not all(isinstance(e, str) for e in events):
        raise ValueError(f"{where} must be a non-empty list of events out of {', '.join(EVENTS)}; got {events!r}")
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise ValueError(f"{where}: unknown event(s) {', '.join(map(repr, unknown))}; the events are {', '.join(EVENTS)}")
    return tuple(dict.fromkeys(events))
