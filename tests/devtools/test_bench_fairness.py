"""The fairness benchmark, small (``python -m t2i_core bench-fairness`` is the full one): while a batch
key keeps 12 requests in flight, an interactive key sending one at a time is served ahead of the
flood's queue: its median latency is below the flood's own fastest quarter (first come, first served
puts it behind the queue, level with the flood). An order, never a time."""

from __future__ import annotations

import pytest

from t2i_core.devtools.bench.fairness import main

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_an_interactive_key_is_served_ahead_of_a_batch_keys_flood():
    report = main(flood=12, requests=8, size=64, steps=4, max_batch_size=4)
    (row,) = report["rows"]
    assert row["a_answers_during"] >= 8
    assert row["b_flood_median_s"] < row["a_flood_p25_s"], row
