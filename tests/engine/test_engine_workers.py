"""Several engine workers sharing a state behave as one engine: a cancel, a progress or a preview call
taken by any worker reaches the work on another; admin actions apply to all; states and statistics
merge. Two in-process engines on one SQLite state stand for two worker processes of one server (the
server test, test_scale_out_e2e.py, runs real ones); on Redis, two engines of two servers stand for
replicas."""

from __future__ import annotations

import os
import threading
import time

import pytest

from t2i_core.common.config import Settings
from t2i_core.common.registry import TINY_SD_ID, Registry
from t2i_core.common.schemas import EngineRequest
from t2i_core.common.topology import (
    cpu_memory_budget, engine_worker_count, image_store_spec, pin_engine_worker, run_folder,
)
from t2i_core.engine.core import Engine
from t2i_core.engine.worker_board import merge_stats, net_effect
from t2i_core.state.sqlite import SqliteState


def req(**kw) -> EngineRequest:
    base = dict(model=TINY_SD_ID, prompt="a lighthouse", steps=3, guidance_scale=0.0, width=64, height=64, seed=1)
    return EngineRequest(**{**base, **kw})


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("run") / "state.sqlite")
    settings = Settings(request_timeout_s=20)
    one = Engine(settings, registry=Registry(), state=SqliteState(path), server="test", worker=1)
    two = Engine(settings, registry=Registry(), state=SqliteState(path), server="test", worker=2)
    yield one, two
    for engine in (one, two):
        engine.close()
    assert not one._beating.is_alive() and not two._beating.is_alive()


def run_in_thread(engine: Engine, items: list[EngineRequest]) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.extend(engine.run(items)))
    thread.start()
    return thread, out


def wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_cancel_taken_by_one_worker_stops_the_work_on_the_other(pair):
    one, two = pair
    thread, out = run_in_thread(one, [req(request_id="long", steps=400, width=128, height=128),
                                      req(request_id="mate", steps=400, width=128, height=128, seed=2)])
    wait_for(lambda: two.progress(["long"])["long"]["step"] >= 2)  # progress read on the other worker
    two.cancel(["long"])
    wait_for(lambda: two.progress(["mate"])["mate"]["step"] >= 8)
    two.cancel(["mate"])
    thread.join(60)
    assert [r.error["code"] for r in out] == ["client_closed", "client_closed"]
    for rid in ("long", "mate"):
        seen = two.progress([rid])[rid]
        assert seen["state"] == "cancelled" and seen["step"] < 400, seen
        assert one.progress([rid]) == {rid: seen}


def test_a_cancel_before_the_work_starts_is_seen_by_any_worker(pair):
    one, two = pair
    one.cancel(["early"])
    assert two.progress(["early", "wanted"]) == {"early": {"state": "cancelled", "step": 0, "steps": None},
                                                 "wanted": {"state": "queued", "step": 0, "steps": None}}
    out = two.run([req(request_id="early"), req(request_id="wanted", seed=3)])
    assert out[0].error["code"] == "client_closed" and out[1].error is None
    assert one.progress(["wanted"])["wanted"] == {"state": "done", "step": 3, "steps": 3}


def test_partial_images_and_live_previews_cross_workers(pair):
    one, two = pair
    (result,) = one.run([req(request_id="partials", steps=6, partial_images=2)])
    assert result.error is None
    made = two.take_previews("partials")
    assert [p.step for p in made] == [2, 4] and [p.index for p in made] == [0, 1]
    assert made[0].pixels and len(made[0].pixels) == 64 * 64 * 3
    assert [p.index for p in two.take_previews("partials", since=1)] == [1]
    # a live preview asked of one worker is made by the other after its next step
    thread, _ = run_in_thread(two, [req(request_id="live", steps=300, width=128, height=128)])
    wait_for(lambda: one.progress(["live"])["live"]["step"] >= 1)
    one.want_preview("live")
    wait_for(lambda: bool(one.take_previews("live")))
    one.cancel(["live"])
    thread.join(60)


def test_admin_actions_reach_every_worker_and_states_merge(pair):
    one, two = pair
    answer = one.model_action("set_default", TINY_SD_ID)
    assert answer["ok"] and answer["workers"] == {"1": "ok", "2": "ok"}
    answer = two.model_action("unload", TINY_SD_ID)
    assert answer["ok"] and answer["workers"] == {"1": "ok", "2": "ok"}
    for engine in pair:
        assert TINY_SD_ID not in engine.models.loaded_ids()
    row = next(r for r in one.model_states() if r["id"] == TINY_SD_ID)
    assert row["state"] != "loaded" and row["loaded_on"] == [] and row["workers"] == 2
    answer = two.model_action("load", TINY_SD_ID)
    assert answer["ok"] and answer["workers"] == {"1": "ok", "2": "ok"}
    for engine in pair:
        row = next(r for r in engine.model_states() if r["id"] == TINY_SD_ID)
        assert row["state"] == "loaded" and row["loaded_on"] == [1, 2]
    # an unknown action is refused by the worker that takes it, and never logged
    assert one.model_action("explode", TINY_SD_ID)["error"]["param"] == "action"


def test_an_action_applied_first_by_a_batch_or_the_heartbeat_still_answers_its_result(pair, monkeypatch):
    one, _ = pair
    append = one.board.append

    def append_then_catch_up(action: str, model_id: str) -> int:
        seq = append(action, model_id)
        one.on_torch_thread(one._catch_up)  # what a batch start or the heartbeat does meanwhile
        return seq

    monkeypatch.setattr(one.board, "append", append_then_catch_up)
    answer = one.model_action("load", TINY_SD_ID)
    assert answer["ok"] and answer["state"] == "loaded" and answer["workers"] == {"1": "ok", "2": "ok"}


def test_a_killed_worker_leaves_the_live_view_at_once(pair):
    import subprocess
    import sys

    one, _ = pair
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    import json
    import socket

    # a worker process that was killed: its last beat is fresh
    row = {"worker": "test/9", "server": "test", "index": 9, "host": socket.gethostname(), "pid": gone.pid,
           "device": "cpu", "applied": 0, "beat": time.time(), "states": None, "addons": None, "stats": None}
    one.board.state.put("worker:test/9", json.dumps(row).encode(), ttl_s=60)
    one.board.state.index_add("workers", "test/9", time.time())
    try:
        assert 9 not in [r["index"] for r in one.board.live()]
        answer = one.model_action("set_default", TINY_SD_ID)  # does not wait for worker 9
        assert answer["ok"] and answer["workers"] == {"1": "ok", "2": "ok"}
    finally:
        one.board.state.delete("worker:test/9")


def test_the_default_cannot_be_a_model_whose_weights_are_absent(pair):
    one, _ = pair
    absent = Registry().get("stabilityai/sd-turbo")
    if absent.unavailable_reason() is None:
        pytest.skip("sd-turbo's weights are in this machine's Hugging Face cache")
    before, logged = one.registry.default_id, one.board.latest()
    answer = one.model_action("set_default", absent.id)
    assert answer["error"]["code"] == "model_unavailable" and answer["error"]["param"] == "model"
    assert "sd-turbo" in answer["error"]["message"] and one.registry.default_id == before
    assert one.board.latest() == logged  # not logged: a worker that starts later does not replay it


def test_a_worker_that_starts_late_applies_the_log(pair):
    one, _ = pair
    third = Engine(Settings(preload=0), registry=Registry(), state=SqliteState(one.board.state.path), server="test",
                   worker=3)
    assert TINY_SD_ID in third.models.loaded_ids()  # the last action on it was a load
    assert [r["index"] for r in one.board.live()] == [1, 2, 3]
    # a worker that shuts down leaves at once: the next admin action does not wait for it
    third.close()
    assert not third._beating.is_alive()
    assert [r["index"] for r in one.board.live()] == [1, 2]
    answer = one.model_action("set_default", TINY_SD_ID)
    assert answer["ok"] and answer["workers"] == {"1": "ok", "2": "ok"}
    assert net_effect([(1, "load", "a"), (2, "set_default", "a"), (3, "unload", "a"), (4, "load", "b")]) == ("a", ["b"])


def test_stats_sum_the_workers(pair):
    one, two = pair
    one.run([req(request_id="s1")])
    two.run([req(request_id="s2"), req(request_id="s3", seed=4)])
    merged = one.stats()
    own = {w: s["images"] for w, s in merged["workers"].items()}
    assert merged["images"] == sum(own.values()) and {"1", "2"} <= set(own)
    assert merge_stats({1: {"images": 2, "batch_size_histogram": {"2": 1}}, 2: {"images": 1, "batch_size_histogram": {"1": 1, "2": 1}}})[
        "batch_size_histogram"] == {"1": 1, "2": 2}


def test_worker_counts_pinning_and_the_run_folder(monkeypatch):
    assert engine_worker_count(Settings(), gpus=[]) == 1
    assert engine_worker_count(Settings(), gpus=["0", "1", "2"]) == 3
    assert engine_worker_count(Settings(engine_workers=2), gpus=[]) == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert pin_engine_worker(Settings(), 2, 2, gpus=["4", "5"]) == Settings()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    quarter = pin_engine_worker(Settings(), 1, 4, gpus=[])
    assert quarter.torch_threads == 4 and quarter.memory_budget_bytes == cpu_memory_budget() // 4
    given = pin_engine_worker(Settings(torch_threads=3, memory_budget_bytes=10**9), 1, 4, gpus=[])
    assert given.torch_threads == 3 and given.memory_budget_bytes == 10**9
    assert pin_engine_worker(Settings(), 1, 1, gpus=[]) == Settings()
    monkeypatch.setenv("T2I_RUN_DIR", "/somewhere/inherited")
    made = run_folder(in_worker=False)
    assert made != "/somewhere/inherited" and os.path.isdir(made) and os.environ["T2I_RUN_DIR"] == made
    assert run_folder(in_worker=True) == made
    assert image_store_spec(Settings(), made) == "memory"
    assert image_store_spec(Settings(api_workers=2), made) == f"dir:{made}/images"
    assert image_store_spec(Settings(api_workers=2, image_store="memory"), made) == "memory"


def test_the_board_benchmark_runs(capsys, redis_server):
    from t2i_core.devtools.bench.board import main

    main(batch=2, steps=20, rounds=5, redis=redis_server.url)
    out = capsys.readouterr().out
    assert "memory (one worker)" in out and "sqlite (workers of one server)" in out and "redis (replicas)" in out
    assert out.count("median") == 5  # three step rows, two cancel rows


def test_replicas_on_redis_apply_each_others_admin_actions(redis_server):
    """Two servers' engines on one Redis: an action taken on one is applied by the other, whose own
    views stay its own server's; a server that starts later replays the log."""
    from t2i_core.state.redis import RedisState

    url = f"{redis_server.url}?prefix=replicas{time.monotonic_ns()}:"
    settings = Settings(request_timeout_s=20, preload=0)
    a = Engine(settings, registry=Registry(), state=RedisState(url), server="a", worker=1)
    b = Engine(settings, registry=Registry(), state=RedisState(url), server="b", worker=1)
    late = None
    try:
        answer = a.model_action("load", TINY_SD_ID)
        assert answer["ok"] and answer["workers"] == {"1": "ok", "b/1": "ok"}
        assert TINY_SD_ID in b.models.loaded_ids()
        row = next(r for r in b.model_states() if r["id"] == TINY_SD_ID)
        assert row["loaded_on"] == [1] and row["workers"] == 1  # b's own server's view
        late = Engine(settings, registry=Registry(), state=RedisState(url), server="c", worker=1)
        assert TINY_SD_ID in late.models.loaded_ids()
    finally:
        for engine in (a, b, late):
            if engine is not None:
                engine.close()


def test_an_action_being_appended_is_waited_for_not_skipped(tmp_path, monkeypatch):
    """Two workers append at once: seq 2 is numbered, seq 3 already in the log, 2 not yet. A worker
    catching up then stops before 3 (and would apply 2, then 3); a gap older than GAP_WAIT_S is a
    worker that died between its two writes, and is passed."""
    import json

    from t2i_core.engine import worker_board
    from t2i_core.engine.worker_board import WorkerBoard

    state = SqliteState(str(tmp_path / "state.sqlite"))
    board = WorkerBoard(state, "s", 1, "cpu")
    board.append("load", "a")
    state.incr("actions:seq")  # seq 2: numbered by a worker that has not written it yet
    board.append("load", "c")  # seq 3
    assert board.after(0) == [(1, "load", "a")]
    state.put("action:2", json.dumps(["unload", "a", time.time()]).encode())
    state.index_add("actions", "2", 2)
    assert board.after(0) == [(1, "load", "a"), (2, "unload", "a"), (3, "load", "c")]
    state.index_remove("actions", "2")
    assert board.after(1) == []
    monkeypatch.setattr(worker_board, "GAP_WAIT_S", 0.0)  # ... and then long enough ago
    assert board.after(1) == [(3, "load", "c")]
    state.close()
