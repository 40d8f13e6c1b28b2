"""What API workers and replicas share for jobs, on each backend (memory, SQLite, a real Redis): key
limits, idempotent answers, webhook deliveries, usage and task listings behave alike."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import TMP
from t2i_core.api.callers import Caller
from t2i_core.api.idempotency.store import Answer, IdempotencyStore, record_key
from t2i_core.api.keys.context import Served
from t2i_core.api.keys.limits import KeyLimits
from t2i_core.api.keys.records import ApiKey
from t2i_core.api.keys.usage import UsageMeter
from t2i_core.api.surfaces.tasks.store import TaskStore, decode_cursor
from t2i_core.api.webhooks.deliveries import DUE, Deliveries, Delivery
from t2i_core.common.errors import Forbidden, InvalidRequest, TooManyRequests
from t2i_core.state.memory import MemoryState
from t2i_core.state.redis import RedisState
from t2i_core.state.sqlite import SqliteState


@pytest.fixture(params=["memory", "sqlite", "redis"])
def state(request):
    if request.param == "redis":
        made = RedisState(f"{request.getfixturevalue('redis_server').url}?prefix=jobs{time.monotonic_ns()}:")
    else:
        made = MemoryState() if request.param == "memory" else SqliteState(str(TMP / "jobs" / f"{time.monotonic_ns()}.sqlite"))
    yield made
    made.close()


# ---- key limits ---------------------------------------------------------------------------------------
def test_images_per_minute_refuses_what_does_not_fit_and_says_when_to_retry(state):
    limits = KeyLimits(state, slot_s=60)
    key = ApiKey(name="capped", images_per_minute=5)
    now = 1_000_000 * 60 + 45.5  # 14.5 s before the minute ends
    limits.take_images_now(key, 4, now)
    with pytest.raises(TooManyRequests) as err:
        limits.take_images_now(key, 2, now)
    assert err.value.retry_after_s == 15 and err.value.code == "images_per_minute"
    assert "'capped'" in err.value.message and "5 images per minute" in err.value.message and "4 made" in err.value.message
    limits.take_images_now(key, 1, now)  # the refused two were not counted
    limits.take_images_now(key, 5, now + 15)  # the next minute
    limits.take_images_now(ApiKey(name="free"), 1000, now)  # no limit


def test_more_images_than_the_limit_itself_is_a_400_naming_n_and_the_limit_and_counts_nothing(state):
    limits = KeyLimits(state, slot_s=60)
    key = ApiKey(name="capped", images_per_minute=5)
    now = 1_000_000 * 60 + 1.0
    with pytest.raises(InvalidRequest) as err:
        limits.take_images_now(key, 6, now)
    assert err.value.status == 400 and err.value.param == "n" and not isinstance(err.value, TooManyRequests)
    assert "n=6" in err.value.message and "limit of 5 images per minute" in err.value.message
    limits.take_images_now(key, 5, now)  # nothing was counted


def test_a_task_counted_at_submit_is_not_counted_again(state):
    import asyncio

    limits = KeyLimits(state, slot_s=60)
    key = ApiKey(name="capped", images_per_minute=1)
    asyncio.run(limits.take_images(Served(key), 1))
    asyncio.run(limits.take_images(Served(key, counted=True), 1))
    with pytest.raises(TooManyRequests):
        asyncio.run(limits.take_images(Served(key), 1))


def test_max_concurrent_counts_across_workers_and_lapses(state):
    key = ApiKey(name="two-at-once", max_concurrent=2)
    one, other = KeyLimits(state, slot_s=30), KeyLimits(state, slot_s=30)  # two workers on one state
    one.enter_now(key, "s1", 1, now=100.0)
    other.enter_now(key, "s2", 1, now=100.0)
    with pytest.raises(TooManyRequests) as err:
        one.enter_now(key, "s3", 1, now=100.0)
    assert err.value.code == "max_concurrent" and "limit is 2" in err.value.message
    other.leave_now(key, "s2")
    one.enter_now(key, "s3", 1, now=101.0)
    one.enter_now(key, "s4", 1, now=131.0)  # s1 and s3 lapsed (a worker that died holds no slot for ever)


def test_concurrent_enters_never_admit_past_the_limit(state):
    key = ApiKey(name="racy", max_concurrent=3)
    limits = KeyLimits(state, slot_s=60)
    admitted, lock = [], threading.Lock()

    def enter(i: int) -> None:
        try:
            limits.enter_now(key, f"s{i}", 1)
            with lock:
                admitted.append(i)
        except TooManyRequests:
            pass

    threads = [threading.Thread(target=enter, args=(i,)) for i in range(12)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(admitted) <= 3  # never past it (a race may refuse one that would have fitted: it retries)


# ---- idempotent answers ---------------------------------------------------------------------------------
def test_the_first_answer_is_kept_and_a_retry_gets_it(state):
    store = IdempotencyStore(state, ttl_s=60, max_bytes=10_000, running_s=30)
    key = record_key("alice", "retry-1")
    assert store.claim(key, "fp")[0] == "claimed"
    assert store.claim(key, "fp")[0] == "running"
    assert store.claim(key, "other-fp")[0] == "reused"
    assert store.keep(key, "fp", Answer(200, [("content-type", "image/png"), ("x-seed", "3")], b"png-bytes"))
    outcome, answer = store.claim(key, "fp")
    assert outcome == "done" and answer == Answer(200, [("content-type", "image/png"), ("x-seed", "3")], b"png-bytes")
    assert store.claim(key, "other-fp")[0] == "reused"
    assert store.claim(record_key("bob", "retry-1"), "fp")[0] == "claimed"  # keys are per caller


def test_a_failed_first_request_frees_the_key_and_one_claim_wins(state):
    store = IdempotencyStore(state, ttl_s=60, max_bytes=10_000, running_s=30)
    key = record_key("alice", "k")
    assert store.claim(key, "fp")[0] == "claimed"
    store.release(key)
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(store.claim(key, "fp")[0])) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(outcomes) == ["claimed"] + ["running"] * 7


def test_kept_answers_stay_under_their_byte_cap(state):
    store = IdempotencyStore(state, ttl_s=60, max_bytes=1000, running_s=30)
    for i in range(10):
        key = record_key("alice", f"k{i}")
        store.claim(key, "fp")
        store.keep(key, "fp", Answer(200, [], b"x" * 200), now=1000.0 + i)
    assert int(state.get("idem:bytes")) <= 1000
    assert store.claim(record_key("alice", "k0"), "fp")[0] == "dropped"  # the oldest went first
    assert store.claim(record_key("alice", "k9"), "fp")[0] == "done"
    big = record_key("alice", "big")
    store.claim(big, "fp")
    assert not store.keep(big, "fp", Answer(200, [], b"x" * 5000))
    assert store.claim(big, "fp")[0] == "dropped"


# ---- webhook deliveries ------------------------------------------------------------------------------------
def delivery(now: float) -> Delivery:
    return Delivery(id="msg_1", task_id="t1", key="alice", event="completed", url="http://x/", body="{}", created_at=now)


def test_a_delivery_is_claimed_by_one_worker_and_retried_with_backoff_until_delivered(state):
    deliveries = Deliveries(state, ttl_s=600)
    deliveries.add(delivery(100.0))
    assert deliveries.due(100.0, 10) == ["msg_1"]
    first = deliveries.claim("msg_1", lease_s=10, now=100.0)
    assert first is not None and deliveries.claim("msg_1", lease_s=10, now=101.0) is None  # leased
    after = deliveries.finish_attempt(first, 500, "answered 500", max_attempts=5, backoff_s=2.0, now=101.0)
    assert (after.state, after.attempts, after.next_at) == ("pending", 1, 103.0)
    assert deliveries.due(102.0, 10) == [] and deliveries.claim("msg_1", 10, now=102.0) is None
    second = deliveries.claim("msg_1", 10, now=103.0)
    after = deliveries.finish_attempt(second, None, "timeout", max_attempts=5, backoff_s=2.0, now=104.0)
    assert after.next_at == 108.0  # doubled
    third = deliveries.claim("msg_1", 10, now=108.0)
    after = deliveries.finish_attempt(third, 204, None, max_attempts=5, backoff_s=2.0, now=108.5)
    assert (after.state, after.attempts, after.delivered_at) == ("delivered", 3, 108.5)
    assert state.index_count(DUE) == 0
    assert [d.public()["state"] for d in deliveries.of_task("t1")] == ["delivered"]


def test_a_delivery_fails_after_its_attempts_and_a_lapsed_lease_goes_to_another_worker(state):
    deliveries = Deliveries(state, ttl_s=600)
    deliveries.add(delivery(100.0))
    lost = deliveries.claim("msg_1", lease_s=10, now=100.0)  # its worker dies
    again = deliveries.claim("msg_1", lease_s=10, now=111.0)
    assert again is not None and again.lease != lost.lease
    assert deliveries.finish_attempt(lost, 200, None, 2, 1.0, now=111.5).state == "pending"  # stale: ignored
    after = deliveries.finish_attempt(again, 500, "answered 500", 2, 1.0, now=112.0)
    after = deliveries.finish_attempt(deliveries.claim("msg_1", 10, now=113.0), 500, "answered 500", 2, 1.0, now=113.0)
    assert (after.state, after.attempts) == ("failed", 2) and state.index_count(DUE) == 0



def test_a_claimed_delivery_leaves_the_due_list_so_another_worker_claims_the_rest(state):
    one, other = Deliveries(state, ttl_s=600), Deliveries(state, ttl_s=600)
    for i in range(20):
        one.add(Delivery(id=f"msg_{i:02d}", task_id="t1", key="alice", event="completed", url="http://x/", body="{}",
                         created_at=100.0 + i / 100))
    now = 101.0
    claimed_one = [d for i in one.due(now, 16) if (d := one.claim(i, lease_s=10, now=now)) is not None]
    claimed_other = [d for i in other.due(now, 16) if (d := other.claim(i, lease_s=10, now=now)) is not None]
    assert len(claimed_one) == 16 and len(claimed_other) == 4
    assert {d.id for d in claimed_one} | {d.id for d in claimed_other} == {f"msg_{i:02d}" for i in range(20)}
    assert other.due(now + 9, 16) == []
    assert len(other.due(now + 10, 32)) == 20  # due again once their leases lapse (their worker died)

# ---- usage ------------------------------------------------------------------------------------------------
def test_usage_is_summed_over_workers_in_all_and_per_day(state):
    one, other = UsageMeter(state), UsageMeter(state)
    one.record("alice", 2, 2 * 4096, 0.5)
    other.record("alice", 1, 4096, 0.25)
    other.record("bob", 3, 3 * 4096, 1.0)
    one.flush()
    other.flush()
    rows = one.read()
    assert rows["alice"] == {"images": 3, "pixels": 3 * 4096, "engine_seconds": 0.75, "requests": 2}
    assert rows["bob"]["images"] == 3
    from t2i_core.api.keys.usage import utc_day

    assert one.read(utc_day(time.time()))["alice"]["images"] == 3 and one.read("1999-01-01") == {}


# ---- task listings ------------------------------------------------------------------------------------------
def test_a_listing_shows_a_callers_own_tasks_newest_first_page_by_page(state):
    store = TaskStore(state, ttl_s=3600, max_bytes=0)
    alice, bob = Caller(owner="key:alice", name="alice"), Caller(owner="key:bob", name="bob")
    admin = Caller(owner="key:admin", admin=True, name="admin")
    mine = [store.create({"prompt": f"a{i}"}, alice).task_id for i in range(7)]
    theirs = [store.create({"prompt": f"b{i}"}, bob).task_id for i in range(3)]
    store.fail(mine[2], InvalidRequest("x"))
    seen, cursor = [], None
    while True:
        page, cursor = store.list(alice, limit=3, cursor=cursor)
        seen += [r.task_id for r in page]
        if cursor is None:
            break
    assert seen == mine[::-1]
    assert [r.task_id for r in store.list(alice, status="failed")[0]] == [mine[2]]
    assert {r.task_id for r in store.list(admin, limit=100)[0]} == set(mine + theirs)
    assert [r.task_id for r in store.list(admin, key="bob")[0]] == theirs[::-1]
    with pytest.raises(Forbidden):
        store.list(alice, key="bob")
    with pytest.raises(InvalidRequest):
        decode_cursor("%%%")
    assert {r.submitter for r in store.list(bob)[0]} == {"bob"}


def test_a_listing_takes_the_ids_of_records_that_are_gone_out_of_its_index(state):
    """A record that expired without a sweep (its server was down then) leaves its id in the owner's
    index: the listing skips it and removes it, so the index does not keep growing; pages still
    follow on exactly."""
    store = TaskStore(state, ttl_s=3600, max_bytes=0)
    alice = Caller(owner="key:alice", name="alice")
    mine = [store.create({"prompt": f"a{i}"}, alice).task_id for i in range(6)]
    for task_id in (mine[1], mine[4]):
        state.delete(store.record_key(task_id))
    index = store.owner_index(alice.owner)
    assert state.index_count(index) == 6
    page, cursor = store.list(alice, limit=2)
    assert [r.task_id for r in page] == [mine[5], mine[3]]
    assert state.index_count(index) == 4  # the ids read with that page (all six) were looked at
    rest, cursor = store.list(alice, limit=10, cursor=cursor)
    assert cursor is None
    assert [r.task_id for r in rest] == [mine[2], mine[0]]


class _ThirdIncrFailsOnce(MemoryState):
    """A state whose third ``incr`` fails (once): a flush that fails part way."""

    def __init__(self):
        super().__init__()
        self.incrs = 0

    def incr(self, key, by=1, ttl_s=None):
        self.incrs += 1
        if self.incrs == 3:
            raise ConnectionError("the state went away mid-flush")
        return super().incr(key, by, ttl_s)


def test_a_flush_that_fails_part_way_writes_each_amount_once():
    from t2i_core.api.keys.usage import utc_day

    state = _ThirdIncrFailsOnce()
    meter = UsageMeter(state)
    meter.record("alice", 2, 2 * 4096, 0.5)
    meter.record("bob", 3, 3 * 4096, 1.0)
    with pytest.raises(ConnectionError):
        meter.flush()
    meter.flush()
    meter.flush()  # nothing left: adds nothing
    day = utc_day(time.time())
    for rows in (meter.read(), meter.read(day)):
        assert rows["alice"] == {"images": 2, "pixels": 2 * 4096, "engine_seconds": 0.5, "requests": 1}
        assert rows["bob"] == {"images": 3, "pixels": 3 * 4096, "engine_seconds": 1.0, "requests": 1}
