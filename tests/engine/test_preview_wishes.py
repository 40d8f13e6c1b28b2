"""On real engines (one worker in memory, two sharing a SQLite state): after a caller's flood of stale
live-preview wishes (tasks polled with ``preview=1`` after they failed), another caller's live preview
still arrives, and a request that ran, finished or was cancelled leaves no wish behind. The bounds
themselves are tested on every backend in test_request_board.py."""

from __future__ import annotations

import threading
import time

import pytest

from t2i_core.common.config import Settings
from t2i_core.common.registry import TINY_SD_ID, Registry
from t2i_core.common.schemas import EngineRequest
from t2i_core.engine.request_board import PER_REQUEST, WISHES_KEPT, WISHES_PER_CALLER
from t2i_core.state.sqlite import SqliteState

FLOOD = WISHES_KEPT + 1  # more stale wishes than the old ledgers kept in all (10,000)


def flood(board, caller: str, count: int = FLOOD) -> None:
    """``count`` wishes of ``caller`` for requests that never run (tasks that failed in the API)."""
    for i in range(count):
        board.want_preview(f"stale-{caller}-{i}", caller)


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
    path = str(tmp_path_factory.mktemp("run") / "state.sqlite")
    pair = [Engine(settings, registry=Registry(), state=SqliteState(path), server="test", worker=w) for w in (1, 2)]
    yield tuple(pair)
    for engine in pair:
        engine.close()


def test_after_a_flood_of_stale_wishes_another_callers_live_preview_arrives(engines):
    runner, asked = engines
    flood(asked.requests, "key:flooder")
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
    assert asked.requests.kept()["preview_wishes"] == WISHES_PER_CALLER
    asked.want_preview("live", "addr:10.0.0.2")
    assert asked.requests.take_wanted(["live"]) == {}


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
    assert asked.requests.take_wanted(["ran", "ran-too"]) == {}
    assert 1 <= len(asked.take_previews("ran")) <= PER_REQUEST
