"""Graphs ``torch.compile`` compiled in this process, and when: at start-up (the warm-up) or while
serving. A graph compiled while serving is a recompile under traffic, a stall of seconds to minutes
for every request queued behind it: it is logged as a warning and counted on ``/metrics``
(``t2i_compiled_graphs_total{phase="serving"}``), which stays 0 when the warm-up covered the traffic.

The count is dynamo's own (``torch._dynamo.utils.counters["stats"]["unique_graphs"]``): process-wide,
read after each engine call, so what a call compiled is attributed to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from t2i_core.common import metrics

log = logging.getLogger("t2i.compile")
Phase = Literal["startup", "serving"]


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (each recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@dataclass
class CompileWatch:
    """Attributes newly compiled graphs to a phase, on each ``note``."""

    seen: int = field(default_factory=compiled_graphs)
    graphs: dict[str, int] = field(default_factory=lambda: {"startup": 0, "serving": 0})

    def note(self, phase: Phase, what: str) -> int:
        """Count the graphs compiled since the last note as ``phase``'s (``what``: the call, for the log)."""
        now = compiled_graphs()
        new, self.seen = now - self.seen, now
        if new > 0:
            self.graphs[phase] += new
            metrics.record_compiled_graphs(phase, new)
            if phase == "serving":
                log.warning("torch.compile compiled %d graph(s) while serving (%s): the warm-up did not cover this "
                            "call (T2I_WARMUP_SIZES, T2I_MAX_BATCH_SIZE)", new, what)
            else:
                log.info("torch.compile: %d graph(s) compiled at start-up (%s)", new, what)
        return new
