"""The state layer's backends behave alike (t2i_core/state/), and the SQLite one holds under the
load of several processes that read and change the same records."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import time

import pytest

from conftest import TMP
from t2i_core.state.memory import MemoryState
from t2i_core.state.open import check_spec, open_state, resolve_spec
from t2i_core.state.redis import RedisState
from t2i_core.state.sqlite import SqliteState


def _sqlite(name: str) -> SqliteState:
    path = TMP / "state" / f"{name}-{time.monotonic_ns()}.sqlite"
    return SqliteState(str(path))


@pytest.fixture(params=["memory", "sqlite", "redis"])
def state(request):
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        store = RedisState(f"{server.url}?prefix=unit{time.monotonic_ns()}:")
    else:
        store = MemoryState() if request.param == "memory" else _sqlite("unit")
    yield store
    store.close()


def test_values_expire_and_only_if_absent(state):
    assert state.get("a") is None
    assert state.put("a", b"1")
    assert state.get("a") == b"1"
    assert not state.put("a", b"2", only_if_absent=True) and state.get("a") == b"1"
    assert state.put("b", b"x", ttl_s=0.05)
    assert state.get_many(["a", "b", "c"]) == [b"1", b"x", None]
    time.sleep(0.1)
    assert state.get("b") is None
    assert state.put("b", b"y", only_if_absent=True)  # an expired key counts as absent
    assert state.delete("a", "b", "c") == 2 and state.get("a") is None


def test_update_is_read_modify_write_and_keeps_the_expiry(state):
    state.put("k", b"1", ttl_s=0.2)
    assert state.update("k", lambda old: str(int(old) + 1).encode()) == b"2"
    assert state.update("k", lambda old: None) == b"2"  # None: unchanged
    time.sleep(0.3)
    assert state.get("k") is None  # the update kept the expiry
    assert state.update("new", lambda old: b"made" if old is None else None) == b"made"
    assert state.incr("n") == 1 and state.incr("n", 5) == 6 and state.incr("n", -6) == 0


def test_sorted_index(state):
    for i, member in enumerate("abcde"):
        state.index_add("ix", member, float(i))
    state.index_add("ix", "a", 10.0)  # a new score moves it
    assert state.index_range("ix", limit=3) == [("a", 10.0), ("e", 4.0), ("d", 3.0)]
    assert state.index_range("ix", max_score=2.0, newest_first=False) == [("b", 1.0), ("c", 2.0)]
    assert state.index_range("ix", min_score=3.0, max_score=4.0) == [("e", 4.0), ("d", 3.0)]
    assert state.index_remove("ix", "a", "zz") == 1 and state.index_count("ix") == 4
    assert state.index_range("other") == []


def test_open_and_check_specs(tmp_path):
    assert resolve_spec("auto", api_workers=1, engine_workers=1, run_dir="/r") == "memory"
    assert resolve_spec("auto", api_workers=2, engine_workers=1, run_dir="/r") == "sqlite:/r/state.sqlite"
    assert resolve_spec("memory", api_workers=2, engine_workers=2, run_dir="/r") == "memory"
    with pytest.raises(ValueError, match="T2I_STATE.*'redis:/x'"):
        check_spec("redis:/x")
    check_spec("redis://127.0.0.1:6379/0")
    made = open_state(f"sqlite:{tmp_path / 'sub' / 'state.sqlite'}")
    made.put("k", b"v")
    # the file and its folder are the server user's only (no task result readable by others)
    assert stat.S_IMODE(os.stat(tmp_path / "sub" / "state.sqlite").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "sub").st_mode) == 0o700
    made.close()


def _hammer(path: str, worker: int, rounds: int, out: "multiprocessing.Queue[object]") -> None:
    """One process of the race test: the task store's pattern — create, read in a loop, change."""
    store = SqliteState(path)
    errors = []
    for i in range(rounds):
        key = f"task:{worker}:{i}"
        try:
            store.put(key, json.dumps({"status": "in_progress"}).encode())
            store.index_add("tasks", key, time.time())
            for _ in range(3):  # status polls, beside the other process's writes
                store.get(key)
                store.get_many([f"task:{1 - worker}:{j}" for j in range(max(0, i - 4), i)])
                store.index_range("tasks", limit=20)
            store.update(key, lambda raw: json.dumps({"status": "completed"}).encode())
            store.incr("bytes", 10)
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            errors.append(f"{type(exc).__name__}: {exc}")
    out.put((worker, errors))


def test_two_processes_reading_and_writing_never_lock_each_other_out():
    """The load that wedged BentoML's task store with two API workers ("database is locked"): status
    reads interleaved with the other process's writes. Every write succeeds, every record completes."""
    path = str(TMP / "state" / f"race-{time.monotonic_ns()}.sqlite")
    SqliteState(path).close()
    rounds = 300
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(path, w, rounds, out)) for w in (0, 1)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results == {0: [], 1: []}
    store = SqliteState(path)
    assert store.incr("bytes", 0) == 2 * rounds * 10
    statuses = {json.loads(store.get(f"task:{w}:{i}") or b"{}").get("status") for w in (0, 1) for i in range(rounds)}
    assert statuses == {"completed"}
    store.close()


def test_redis_down_is_a_503_at_once_and_recovers(redis_server):
    from t2i_core.common.errors import StateUnavailable, http_status
    from redis_server import start_redis
    from conftest import free_port

    own = start_redis(free_port())
    store = RedisState(own.url)
    store.put("k", b"v")
    own.stop()
    started = time.monotonic()
    with pytest.raises(StateUnavailable, match="cannot be reached") as caught:
        store.get("k")
    assert http_status(caught.value) == 503
    assert time.monotonic() - started < 30  # bounded by the socket timeouts, not a hang
    own.start()  # the same port again: the client reconnects by itself
    store.put("k", b"back")
    assert store.get("k") == b"back"
    own.stop()


def test_messages_reach_every_subscriber_from_now_on(state):
    early = state.subscribe("cancel")
    state.publish("cancel", b"before")  # only subscribers at the time get it
    late = state.subscribe("cancel", "admin")
    state.publish("cancel", b"r1")
    state.publish("admin", b"load")
    state.publish("other", b"nobody")
    assert early.get(2) == ("cancel", b"before") and early.get(2) == ("cancel", b"r1")
    got = [late.get(2), late.get(2)]
    assert got == [("cancel", b"r1"), ("admin", b"load")]
    assert late.get(0.05) is None
    early.close()
    late.close()


def test_put_many_and_indexes_that_expire(state):
    state.put_many({"p:1": b"a", "p:2": b"b"}, ttl_s=0.2)
    assert state.get_many(["p:1", "p:2"]) == [b"a", b"b"]
    state.index_add("short", "m", 1.0, ttl_s=0.2)
    state.index_add("long", "m", 1.0)
    assert state.index_count("short") == 1
    time.sleep(0.3)
    assert state.get("p:1") is None and state.index_count("short") == 0 and state.index_range("short") == []
    assert state.index_count("long") == 1
    state.index_add("short", "n", 2.0, ttl_s=5)  # used again: a new index
    assert state.index_range("short") == [("n", 2.0)]


def test_redis_refusing_a_command_is_a_503(redis_server):
    """A Redis past its maxmemory (noeviction) refuses writes: StateUnavailable, not a 500."""
    from t2i_core.common.errors import StateUnavailable
    from redis_server import start_redis
    from conftest import free_port
    import redis

    own = start_redis(free_port())
    try:
        store = RedisState(own.url)
        redis.Redis(port=own.port).config_set("maxmemory", "1")
        with pytest.raises(StateUnavailable, match="refused a command.*maxmemory"):
            store.put("k", b"v" * 1000)
        store.close()
    finally:
        own.stop()


def test_a_broken_sqlite_file_is_a_503(tmp_path):
    from t2i_core.common.errors import StateUnavailable

    path = tmp_path / "state.sqlite"
    store = SqliteState(str(path))
    store.put("k", b"v")
    store.close()
    path.write_bytes(b"not a database" * 512)
    for side in tmp_path.glob("state.sqlite-*"):
        side.unlink()
    with pytest.raises(StateUnavailable, match="state.sqlite.*not a database"):
        SqliteState(str(path))
    with pytest.raises(StateUnavailable, match="not a database"):
        store.get("k")  # a worker that had it open: a new connection of its own
    with pytest.raises(StateUnavailable, match="not a database"):
        store.put("k", b"w")


def test_redis_urls_keep_their_query_and_hide_their_password():
    from t2i_core.state.open import redacted

    store = RedisState("redis://:s3cr%40t@127.0.0.1:1/0?prefix=p1:&socket_keepalive=true&client_name=a%26b")
    assert store.prefix == "p1:"
    assert store.url.endswith("?socket_keepalive=true&client_name=a%26b")
    assert store.client.connection_pool.connection_kwargs["client_name"] == "a&b"
    store.close()
    assert redacted("redis://user:s3cr%40t@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"
    with pytest.raises(ValueError, match="T2I_STATE.*'http://user:\\*\\*\\*@host:1/0'") as caught:
        check_spec("http://user:s3cret@host:1/0")  # not a backend: named without its password
    assert "s3cret" not in str(caught.value)
