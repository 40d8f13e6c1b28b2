"""Fair share of the engine between API keys: which waiting work goes to the engine next.

When more work waits than the engine takes (``T2I_COALESCE`` calls in flight per API worker), the
coalescer sends next the work with the smallest tag here: interactive work before batch work (strict
priority), and within a class weighted fair queueing across key names, so that one key's flood
cannot starve the others: a key that has had little of the engine lately goes next.

Each request is tagged when it arrives, per class (start-time fair queueing, ordered by finish tag):

    start  = max(virtual time of its class, finish tag of its key's previous request in the class)
    finish = start + cost / weight

where ``cost`` is the engine work it asks (images x pixels x steps, in 512x512-image-steps) and
``weight`` its key's weight (keys file). The class's virtual time moves to the start tag of each
request sent, so a key that was idle starts level with the others, never ahead by a credit saved
while idle. With ``T2I_FAIR_SHARE=0`` every tag is its arrival order: first come, first served.
Batching stays: the engine still batches what is sent together.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable

from t2i_core.common.schemas import EngineRequest

#: the rank of each class: lower goes first
RANKS = {"interactive": 0, "batch": 1}
#: one unit of cost: a 512x512 image, one step
UNIT_PIXEL_STEPS = 512 * 512


@dataclass(frozen=True, order=True)
class Tag:
    rank: int
    finish: float
    seq: int
    start: float = 0.0
    name: str = ""


def work_of(items: Iterable[EngineRequest]) -> float:
    """The engine work ``items`` ask, in 512x512-image-steps (at least a little for any image)."""
    return sum(max(item.width * item.height * max(1, item.steps or 1) / UNIT_PIXEL_STEPS, 1e-3) for item in items)


class FairQueue:
    """Tags (see the module's docstring); one per API worker's coalescer."""

    def __init__(self, fair: bool = True):
        self.fair = fair
        self._seq = itertools.count()
        self._finish: dict[tuple[int, str], float] = {}
        self._virtual: dict[int, float] = {rank: 0.0 for rank in RANKS.values()}

    def tag(self, name: str, weight: float, priority: str, cost: float) -> Tag:
        seq = next(self._seq)
        if not self.fair:
            return Tag(0, 0.0, seq)
        rank = RANKS.get(priority, RANKS["batch"])
        start = max(self._virtual[rank], self._finish.get((rank, name), 0.0))
        finish = start + cost / max(weight, 1e-6)
        self._finish[(rank, name)] = finish
        return Tag(rank, finish, seq, start, name)

    def sent(self, tag: Tag) -> None:
        """``tag``'s request went to the engine: its class's virtual time moves up to its start."""
        if self.fair and tag.start > self._virtual[tag.rank]:
            self._virtual[tag.rank] = tag.start
