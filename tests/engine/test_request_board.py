"""The engine's request board (t2i_core/engine/request_board.py) on every state backend: cancels pushed
to every listener and found at a batch's start; progress; live-preview wishes and kept previews bounded
per request, per caller and in all — a caller's flood of stale wishes (tasks polled with ``preview=1``
after they failed) evicts only its own, never switches previews off for the others, and a request that
finished or was cancelled leaves no wish behind."""

from __future__ import annotations

import time

import pytest

from conftest import TMP
from t2i_core.common.schemas import Preview
from t2i_core.engine.request_board import KEPT, PER_CALLER, PER_REQUEST, WISHES_PER_CALLER, RequestBoard
from t2i_core.state.memory import MemoryState
from t2i_core.state.redis import RedisState
from t2i_core.state.sqlite import SqliteState


def open_state(kind: str, request) -> object:
    if kind == "memory":
        return MemoryState()
    if kind == "sqlite":
        return SqliteState(str(TMP / "boards" / f"{time.monotonic_ns()}.sqlite"))
    return RedisState(f"{request.getfixturevalue('redis_server').url}?prefix=board{time.monotonic_ns()}:")


@pytest.fixture(params=["memory", "sqlite", "redis"])
def state(request):
    made = open_state(request.param, request)
    yield made
    made.close()


@pytest.fixture
def board(state):
    made = RequestBoard(state, keep_s=600)
    yield made
    made.close()


def wait_for(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
    return value


def flood(board: RequestBoard, caller: str, count: int) -> None:
    for i in range(count):
        board.want_preview(f"stale-{caller}-{i}", caller)


def test_a_cancel_reaches_every_worker_at_once_and_is_found_later_too(state):
    one, two = RequestBoard(state), RequestBoard(state)
    late = None
    try:
        time.sleep(0.1)  # both listening
        one.cancel(["r1"])
        assert one.is_cancelled("r1")
        wait_for(lambda: two.is_cancelled("r1"))  # pushed
        late = RequestBoard(state, listen=False)  # a worker that was away when it was pushed
        assert not late.is_cancelled("r1")
        late.refresh(["r1", "r2"])
        assert late.is_cancelled("r1") and not late.is_cancelled("r2")
        assert two.progress(["r1", "r2"]) == {"r1": {"state": "cancelled", "step": 0, "steps": None},
                                              "r2": {"state": "queued", "step": 0, "steps": None}}
    finally:
        for board in (one, two, late):
            if board is not None:
                board.close()


def test_progress_updates_the_fields_given(board):
    board.set_progress(["a", "b"], state="running", step=0, steps=None)
    board.set_progress(["a"], step=3, steps=8)
    assert board.progress(["a", "b"]) == {"a": {"state": "running", "step": 3, "steps": 8},
                                          "b": {"state": "running", "step": 0, "steps": None}}
    board.set_progress(["a"], state="done")
    assert board.progress(["a"])["a"] == {"state": "done", "step": 3, "steps": 8}


def test_a_flood_of_stale_wishes_evicts_only_the_flooding_callers_own(board):
    board.set_progress(["before", "after"], state="running", step=1, steps=50)
    board.want_preview("before", "addr:10.0.0.2")  # another caller's wish, made before the flood
    flood(board, "key:flooder", WISHES_PER_CALLER * 3)
    board.want_preview("after", "addr:10.0.0.2")
    assert board.take_wanted(["before", "after"]) == {"before": "addr:10.0.0.2", "after": "addr:10.0.0.2"}
    assert board.kept()["preview_wishes"] == WISHES_PER_CALLER  # the flooder keeps its latest only
    newest = f"stale-key:flooder-{WISHES_PER_CALLER * 3 - 1}"
    assert board.take_wanted(["stale-key:flooder-0", newest]) == {newest: "key:flooder"}


def test_one_wish_per_request(board):
    for _ in range(3):
        board.want_preview("same", "addr:a")
    board.want_preview("same", "addr:b")  # a new wish for a request replaces its old one
    assert board.take_wanted(["same"]) == {"same": "addr:b"}


def test_the_bound_in_all_evicts_the_oldest_instead_of_refusing(monkeypatch):
    import t2i_core.engine.request_board as module

    monkeypatch.setattr(module, "WISHES_KEPT", 40)
    monkeypatch.setattr(module, "WISHES_PER_CALLER", 8)
    board = RequestBoard(MemoryState(), listen=False)
    for c in range(7):  # 56 wishes of 7 callers, each within its own bound
        for i in range(8):
            board.want_preview(f"r{c}-{i}", f"addr:{c}")
    assert board.kept()["preview_wishes"] == 40
    assert board.take_wanted(["r0-0", "r6-7"]) == {"r6-7": "addr:6"}


def test_wishes_and_previews_expire_with_the_request_timeout(state):
    board = RequestBoard(state, keep_s=0.3, listen=False)
    board.want_preview("r", "addr:a")
    board.add_preview("r", Preview(step=1, steps=9, width=1, height=1, pixels=b"abc"), "addr:a")
    assert board.kept() == {"preview_wishes": 1, "previews_kept": 1}
    time.sleep(0.5)
    assert board.take_wanted(["r"]) == {} and board.previews("r") == []
    assert board.kept() == {"preview_wishes": 0, "previews_kept": 0}


@pytest.mark.parametrize("end", ["done", "cancelled", "cancel"])
def test_a_finished_request_leaves_no_wish(board, end):
    board.set_progress(["r"], state="running", step=3, steps=4)
    board.want_preview("r", "addr:a")  # a poll that lands after the request's last step
    if end == "cancel":
        board.cancel(["r"])
    else:
        board.set_progress(["r"], state=end)
    assert board.take_wanted(["r"]) == {} and board.kept()["preview_wishes"] == 0
    board.want_preview("r", "addr:a")  # a poll after it finished keeps nothing
    assert board.kept()["preview_wishes"] == 0


def test_a_callers_many_previews_evict_only_its_own(board):
    def preview(step: int) -> Preview:
        return Preview(step=step, steps=9, width=1, height=1, pixels=b"abc")

    board.add_preview("theirs", preview(1), "addr:10.0.0.2")
    board.add_preview("stream", preview(1))  # a stream's own partial image (no caller)
    for i in range(PER_CALLER + 3):
        board.add_preview(f"mine-{i}", preview(1), "key:busy")
    for i in range(PER_REQUEST + 2):
        board.add_preview("theirs", preview(2 + i), "addr:10.0.0.2")
    kept = board.previews("theirs")
    assert [p.step for p in kept] == list(range(4, PER_REQUEST + 4))
    assert [p.index for p in kept] == list(range(3, PER_REQUEST + 3))
    assert board.previews("theirs", since=PER_REQUEST + 2) == kept[-1:]
    assert board.previews("stream") and board.previews(f"mine-{PER_CALLER + 2}") and not board.previews("mine-0")
    assert board.kept()["previews_kept"] == PER_CALLER + 2 <= KEPT
