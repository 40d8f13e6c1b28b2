"""Several engine workers sharing a run folder behave as one engine: a cancel, a progress or a preview
call taken by any worker reaches the work on another; admin actions apply to all; states and
statistics merge. Two in-process engines stand for two worker processes (the server test,
test_scale_out_e2e.py, runs real ones)."""

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
from t2i_core.engine.ledger import SharedLedger
from t2i_core.engine.shared_db import SharedDB
from t2i_core.engine.workers import merge_stats, net_effect


def req(**kw) -> EngineRequest:
    base = dict(model=TINY_SD_ID, prompt="a lighthouse", steps=3, guidance_scale=0.0, width=64, height=64, seed=1)
    return EngineRequest(**{**base, **kw})


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("run"))
    settings = Settings(request_timeout_s=20)
    one = Engine(settings, registry=Registry(), shared_dir=folder, worker=1)
    two = Engine(settings, registry=Registry(), shared_dir=folder, worker=2)
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
    with one.board.db.write() as conn:  # a worker process that was killed: its last beat is fresh
        conn.execute("INSERT INTO workers (worker, pid, device, applied, beat) VALUES (9, ?, 'cpu', 0, ?)",
                     (gone.pid, time.time()))
    try:
        assert 9 not in [r["worker"] for r in one.board.live()]
        answer = one.model_action("set_default", TINY_SD_ID)  # does not wait for worker 9
        assert answer["ok"] and answer["workers"] == {"1": "ok", "2": "ok"}
    finally:
        with one.board.db.write() as conn:
            conn.execute("DELETE FROM workers WHERE worker = 9")


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
    folder = one.board.db.path.rsplit("/", 1)[0]
    third = Engine(Settings(preload=0), registry=Registry(), shared_dir=folder, worker=3)
    assert TINY_SD_ID in third.models.loaded_ids()  # the last action on it was a load
    assert [r["worker"] for r in one.board.live()] == [1, 2, 3]
    # a worker that shuts down leaves at once: the next admin action does not wait for it
    third.close()
    assert not third._beating.is_alive()
    assert [r["worker"] for r in one.board.live()] == [1, 2]
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


def test_the_shared_ledger_prunes_previews_and_takes_wishes_once(tmp_path):
    from t2i_core.common.schemas import Preview
    from t2i_core.engine.previews import KEPT, PER_REQUEST

    ledger = SharedLedger(SharedDB(str(tmp_path / "l.sqlite")), worker=1)
    for i in range(PER_REQUEST + 3):
        ledger.add_preview("r", Preview(step=i, steps=99, width=1, height=1, pixels=b"abc"))
    kept = ledger.previews("r")
    assert [p.index for p in kept] == list(range(3, PER_REQUEST + 3))
    for i in range(KEPT + 5):
        ledger.add_preview(f"other{i}", Preview(step=1, steps=2, width=1, height=1, pixels=b"x"))
    assert ledger.previews("r") == [] and ledger.previews(f"other{KEPT + 4}")
    ledger.want_preview("w")
    assert ledger.take_wanted(["w", "x"]) == {"w": ""} and ledger.take_wanted(["w"]) == {}


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


def test_the_ledger_benchmark_runs(capsys):
    from t2i_core.devtools.bench.ledger import main

    main(batch=2, steps=20)
    out = capsys.readouterr().out
    assert "in memory (one worker)" in out and "shared file (several workers)" in out
