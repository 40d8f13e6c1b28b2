"""Live-preview wishes: requests whose latents the engine decodes after their next step (the task
progress route's ``preview=1``, A1111's progress), kept in memory by one engine worker.

A wish is kept only while its request can still run: it expires ``keep_s`` (the request timeout) after
it was made, and it goes when its request finishes, fails or is cancelled (``drop``). At most one per
request (a new one replaces the old), at most ``WISHES_PER_CALLER`` per caller (an API key's hash or a
client address: one caller's flood of stale wishes evicts only its own oldest) and ``WISHES_KEPT`` in
all (the oldest go first). Nothing is ever refused: a poll that loses its wish makes it again.
"""

from __future__ import annotations

from collections import OrderedDict

#: wishes one caller may keep (its oldest go first)
WISHES_PER_CALLER = 64
#: wishes kept in all (the oldest go first)
WISHES_KEPT = 10_000


class PreviewWishes:
    """Not thread-safe: the ledger holds its lock around every call."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        #: request id -> (caller, expires at), oldest first (every wish lives ``keep_s``: also by expiry)
        self._wishes: OrderedDict[str, tuple[str, float]] = OrderedDict()
        #: caller -> its request ids, oldest first
        self._by_caller: dict[str, OrderedDict[str, None]] = {}

    def count(self, now: float) -> int:
        """How many wishes are kept (the expired ones gone)."""
        self._expire(now)
        return len(self._wishes)

    def add(self, request_id: str, caller: str, now: float) -> None:
        self._expire(now)
        self.drop([request_id])
        self._wishes[request_id] = (caller, now + self.keep_s)
        mine = self._by_caller.setdefault(caller, OrderedDict())
        mine[request_id] = None
        while len(mine) > WISHES_PER_CALLER:
            self.drop([next(iter(mine))])
        while len(self._wishes) > WISHES_KEPT:
            self.drop([next(iter(self._wishes))])

    def take(self, request_ids: list[str], now: float) -> dict[str, str]:
        """The wishes among ``request_ids`` (request id -> caller); each is taken once."""
        self._expire(now)
        found = {rid: self._wishes[rid][0] for rid in request_ids if rid in self._wishes}
        self.drop(found)
        return found

    def drop(self, request_ids: list[str] | dict[str, str]) -> None:
        for rid in request_ids:
            wish = self._wishes.pop(rid, None)
            if wish is None:
                continue
            mine = self._by_caller[wish[0]]
            del mine[rid]
            if not mine:
                del self._by_caller[wish[0]]

    def _expire(self, now: float) -> None:
        while self._wishes:
            rid, (_, expires) = next(iter(self._wishes.items()))
            if expires > now:
                return
            self.drop([rid])
