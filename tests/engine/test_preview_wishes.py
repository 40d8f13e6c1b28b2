"""Live-preview wishes and kept previews are bounded per request, per caller and in all, on both ledgers
(one engine worker in memory, several sharing a SQLite file): a caller's flood of stale wishes (tasks
polled with ``preview=1`` after they failed) evicts only its own, never switches previews off for the
others, and a request that finished, failed or was cancelled leaves no wish behind."""

from __future__ import annotations

import threading
import time

import pytest

from t2i_core.common.config import Settings
from t2i_core.common.registry import TINY_SD_ID, Registry
from t2i_core.common.schemas import EngineRequest, Preview
from t2i_core.engine.ledger import LocalLedger, SharedLedger
from t2i_core.engine.preview_wishes import WISHES_KEPT, WISHES_PER_CALLER, PreviewWishes
from t2i_core.engine.previews import KEPT, PER_CALLER, PER_REQUEST, PreviewStore
from t2i_core.engine.shared_db import SharedDB

FLOOD = WISHES_KEPT + 1  # more stale wishes than the old ledgers kept in all (10,000)


@pytest.fixture(params=["local", "shared"])
def ledger(request, tmp_path):
    if request.param == "local":
        return LocalLedger(keep_s=600)
    return SharedLedger(SharedDB(str(tmp_path / "engine.sqlite")), worker=1, keep_s=600)


def flood(ledger: LocalLedger, caller: str, count: int = FLOOD) -> None:
    """``count`` wishes of ``caller`` for requests that never run (tasks that failed in the API)."""
    for i in range(count):
        ledger.want_preview(f"stale-{caller}-{i}", caller)


def test_a_flood_of_stale_wishes_evicts_only_the_flooding_callers_own(ledger):
    ledger.set_progress(["before", "after"], state="running", step=1, steps=50)
    ledger.want_preview("before", "addr:10.0.0.2")  # another caller's wish, made before the flood
    flood(ledger, "key:flooder")
    ledger.want_preview("after", "addr:10.0.0.2")  # and one made after it
    assert ledger.take_wanted(["before", "after"]) == {"before": "addr:10.0.0.2", "after": "addr:10.0.0.2"}
    # the flooder keeps its latest WISHES_PER_CALLER, its oldest gone
    assert ledger.kept()["preview_wishes"] == WISHES_PER_CALLER
    newest = f"stale-key:flooder-{FLOOD - 1}"
    assert ledger.take_wanted(["stale-key:flooder-0", newest]) == {newest: "key:flooder"}


def test_one_wish_per_request_and_a_bound_in_all(ledger):
    for _ in range(3):
        ledger.want_preview("same", "addr:a")
    ledger.want_preview("same", "addr:b")  # a new wish for a request replaces its old one
    assert ledger.kept()["preview_wishes"] == 1 and ledger.take_wanted(["same"]) == {"same": "addr:b"}


def test_the_bound_in_all_evicts_the_oldest_instead_of_refusing():
    wishes = PreviewWishes(keep_s=600)
    callers = WISHES_KEPT // WISHES_PER_CALLER + 2
    for c in range(callers):  # many callers, each within its own bound
        for i in range(WISHES_PER_CALLER):
            wishes.add(f"r{c}-{i}", f"addr:{c}", now=1.0)
    assert wishes.count(now=1.0) == WISHES_KEPT
    assert wishes.take(["r0-0", f"r{callers - 1}-{WISHES_PER_CALLER - 1}"], now=1.0) == {
        f"r{callers - 1}-{WISHES_PER_CALLER - 1}": f"addr:{callers - 1}"}


def test_a_wish_expires_when_its_request_can_no_longer_run():
    wishes = PreviewWishes(keep_s=120)
    wishes.add("old", "addr:a", now=1000.0)
    wishes.add("new", "addr:a", now=1100.0)
    assert wishes.take(["old", "new"], now=1120.5) == {"new": "addr:a"}
    wishes.add("late", "addr:a", now=1200.0)
    assert wishes.count(now=1320.0) == 0


def test_the_shared_ledger_forgets_expired_wishes_and_previews(tmp_path):
    ledger = SharedLedger(SharedDB(str(tmp_path / "engine.sqlite")), worker=1, keep_s=0.2)
    ledger.want_preview("r", "addr:a")
    ledger.add_preview("r", Preview(step=1, steps=9, width=1, height=1, pixels=b"abc"), "addr:a")
    time.sleep(0.4)  # past the request's timeout
    assert ledger.take_wanted(["r"]) == {} and ledger.previews("r") == []
    assert ledger.kept() == {"preview_wishes": 0, "previews_kept": 0}


@pytest.mark.parametrize("end", ["done", "cancelled", "cancel"])
def test_a_finished_request_leaves_no_wish(ledger, end):
    ledger.set_progress(["r"], state="running", step=3, steps=4)
    ledger.want_preview("r", "addr:a")  # a poll that lands after the request's last step
    if end == "cancel":  # interrupted, or its task cancelled
        ledger.cancel(["r"])
    else:  # as the engine ends every request it ran: done (an image or an error) or cancelled
        ledger.set_progress(["r"], state=end)
    assert ledger.take_wanted(["r"]) == {} and ledger.kept()["preview_wishes"] == 0
    ledger.want_preview("r", "addr:a")  # a poll after it finished keeps nothing
    assert ledger.kept()["preview_wishes"] == 0


def test_a_callers_many_previews_evict_only_its_own(ledger):
    def preview(step: int) -> Preview:
        return Preview(step=step, steps=9, width=1, height=1, pixels=b"abc")

    ledger.add_preview("theirs", preview(1), "addr:10.0.0.2")
    ledger.add_preview("stream", preview(1))  # a stream's own partial image (no caller)
    for i in range(KEPT + 3):
        ledger.add_preview(f"mine-{i}", preview(1), "key:busy")
    for i in range(PER_REQUEST + 2):
        ledger.add_preview("theirs", preview(2 + i), "addr:10.0.0.2")
    assert [p.step for p in ledger.previews("theirs")] == list(range(4, PER_REQUEST + 4))
    assert ledger.previews("stream") and ledger.previews(f"mine-{KEPT + 2}") and not ledger.previews("mine-0")
    assert ledger.kept()["previews_kept"] == PER_CALLER + 2


def test_the_preview_store_keeps_previews_for_the_request_timeout():
    store = PreviewStore(keep_s=120)
    store.add("r", Preview(step=1, steps=9, width=1, height=1, pixels=b"abc"), "addr:a", now=1000.0)
    assert [p.step for p in store.take("r", now=1119.0)] == [1]
    assert store.take("r", now=1121.0) == [] and store.count(now=1121.0) == 0


# ---- on real engines: a live preview still arrives after a flood -----------------------------------


def slow(request_id: str) -> EngineRequest:
    return EngineRequest(model=TINY_SD_ID, prompt="a slow kite", steps=400, guidance_scale=0.0, width=128, height=128,
                         seed=5, request_id=request_id)


def wait_for(predicate, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return value


@pytest.fixture(scope="module", params=["one worker", "two workers"])
def engines(request, tmp_path_factory):
    """The engine that runs the request, and the one a preview call reaches (itself, or the other worker)."""
    from t2i_core.engine.core import Engine

    settings = Settings(request_timeout_s=60)
    if request.param == "one worker":
        engine = Engine(settings)
        yield engine, engine
        engine.close()
        return
    folder = str(tmp_path_factory.mktemp("run"))
    pair = [Engine(settings, registry=Registry(), shared_dir=folder, worker=w) for w in (1, 2)]
    yield tuple(pair)
    for engine in pair:
        engine.close()


def test_after_a_flood_of_stale_wishes_another_callers_live_preview_arrives(engines):
    runner, asked = engines
    flood(asked.ledger, "key:flooder")
    out: list = []
    thread = threading.Thread(target=lambda: out.extend(runner.run([slow("live")])))
    thread.start()
    try:
        wait_for(lambda: asked.progress(["live"])["live"]["step"] >= 1)
        asked.want_preview("live", "addr:10.0.0.2")
        (made,) = wait_for(lambda: asked.take_previews("live"))
        assert made.width == 128 and made.pixels
    finally:
        asked.cancel(["live"])
        thread.join(60)
    # the request ended (cancelled): no wish of its own is left, only the flooder's bounded own
    assert out[0].error["code"] == "client_closed"
    assert asked.ledger.kept()["preview_wishes"] == WISHES_PER_CALLER
    asked.want_preview("live", "addr:10.0.0.2")
    assert asked.ledger.take_wanted(["live"]) == {}


def test_a_request_that_ran_leaves_no_wish_and_only_its_kept_previews(engines):
    runner, asked = engines
    asked.want_preview("ran", "addr:10.0.0.2")  # asked while it was queued
    asked.want_preview("ran-too", "addr:10.0.0.3")
    (result, _) = runner.run([
        EngineRequest(model=TINY_SD_ID, prompt="a quick kite", steps=8, guidance_scale=0.0, width=64, height=64,
                      seed=1, request_id="ran", partial_images=3),
        EngineRequest(model=TINY_SD_ID, prompt="a quick kite", steps=8, guidance_scale=0.0, width=64, height=64,
                      seed=2, request_id="ran-too"),
    ])
    assert result.error is None
    asked.want_preview("ran-too", "addr:10.0.0.3")  # a poll that read "running" just before the end
    assert asked.ledger.take_wanted(["ran", "ran-too"]) == {}
    assert 1 <= len(asked.take_previews("ran")) <= PER_REQUEST
