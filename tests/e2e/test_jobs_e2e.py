"""Jobs for production on a real ``bentoml serve`` with two API workers and a keys file: webhooks
(Standard Webhooks signatures verified with the ``standardwebhooks`` library, retries, no requests to
private addresses, a hanging receiver slowing nothing), Idempotency-Key across workers, task listings
kept per key, key limits, usage per key, and the keys file reloaded by SIGHUP and by the admin API."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from conftest import ADMIN_KEY, Server, TMP, wait_for
from t2i_core.api.keys.records import digest
from t2i_core.api.webhooks.deliveries import Deliveries, Delivery
from t2i_core.state.sqlite import SqliteState
from t2i_core.devtools.key_new import new_webhook_secret

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
KEYS = {"flood-a": "key-a-" + "1" * 24, "app-b": "key-b-" + "2" * 24, "capped-c": "key-c-" + "3" * 24,
        "single-d": "key-d-" + "4" * 24, "ops": "key-ops-" + "5" * 24, "pair-e": "key-p-" + "8" * 24}
SECRETS = {name: new_webhook_secret() for name in KEYS}
AUTH = {name: {"Authorization": f"Bearer {key}"} for name, key in KEYS.items()}
QUICK = {"prompt": "a kite", "steps": 2}


# ---- a webhook receiver on a loopback port ----------------------------------------------------------------
class Receiver:
    """Records every POST (path, headers, body); ``/flaky`` answers 500 twice then 200, ``/hang`` holds the
    answer until ``release``, everything else 204."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes]] = []
        self.flaky = 0
        self.holding = threading.Event()
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                owner.got.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status = 204
                if self.path == "/flaky":
                    owner.flaky += 1
                    status = 500 if owner.flaky <= 2 else 200
                elif self.path == "/hang":
                    owner.holding.set()
                    owner.release.wait(60)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def events(self, path: str) -> list[tuple[dict[str, str], dict]]:
        return [(h, json.loads(b)) for p, h, b in list(self.got) if p == path]

    def wait_for(self, path: str, event: str, timeout: float = 120) -> tuple[dict[str, str], bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p, headers, body in list(self.got):
                if p == path and json.loads(body)["type"] == f"task.{event}":
                    return headers, body
            time.sleep(0.05)
        raise AssertionError(f"no {event} event at {path}; got {[(p, b[:80]) for p, _, b in self.got]}")


def keys_file(path: Path, receiver: Receiver, extra: str = "") -> None:
    entries = {
        "flood-a": "priority: batch",
        "app-b": f"webhook_url: {receiver.url}/default",
        "capped-c": "images_per_minute: 3",
        "single-d": "max_concurrent: 1",
        "ops": "role: admin",
        "pair-e": "max_concurrent: 1, images_per_minute: 2",
    }
    lines = ["keys:"]
    for name, more in entries.items():
        lines.append(f"  - {{name: {name}, key_sha256: {digest(KEYS[name])}, webhook_secret: '{SECRETS[name]}', {more}}}")
    path.write_text("\n".join(lines) + "\n" + extra)


@pytest.fixture(scope="module")
def receiver():
    made = Receiver()
    yield made
    made.release.set()
    made.http.shutdown()


@pytest.fixture(scope="module")
def jobs(receiver):
    path = TMP / f"keys-{time.monotonic_ns()}.yaml"
    keys_file(path, receiver)
    # the shared state, with a webhook delivery left pending before the server starts (a restart)
    state_path = TMP / f"jobs-state-{time.monotonic_ns()}.sqlite"
    before = SqliteState(str(state_path))
    Deliveries(before, ttl_s=3600).add(Delivery(
        id="msg_before_start", task_id="before-start", key="app-b", event="completed", url=f"{receiver.url}/before-start",
        body=json.dumps({"type": "task.completed", "timestamp": "", "data": {}}), created_at=time.time()))
    before.close()
    srv = Server({"T2I_API_WORKERS": "2", "T2I_API_KEYS_FILE": str(path), "T2I_ADMIN_KEY": ADMIN_KEY,
                  "T2I_STATE": f"sqlite:{state_path}",
                  "T2I_WEBHOOK_ALLOW": "127.0.0.1", "T2I_WEBHOOK_BACKOFF_MS": "200", "T2I_WEBHOOK_TIMEOUT_S": "3",
                  "T2I_MAX_BATCH_SIZE": "4"})
    srv.keys_path = path  # type: ignore[attr-defined]
    try:
        srv.wait_ready(headers=AUTH["app-b"])
        yield srv
    finally:
        srv.stop()


def submit(server, who: str, body: dict, **headers: str) -> str:
    r = httpx.post(f"{server.url}/tasks/generate/submit", json=body, headers={**AUTH[who], **headers}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["task_id"]


def status(server, who: str, task_id: str) -> dict:
    r = httpx.get(f"{server.url}/tasks/generate/status", params={"task_id": task_id}, headers=AUTH[who], timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def finished(server, who: str, task_id: str) -> dict:
    return wait_for(lambda: (lambda s: s if s["status"] != "in_progress" else None)(status(server, who, task_id)))


# ---- webhooks -------------------------------------------------------------------------------------------
def test_a_delivery_pending_before_the_server_started_is_delivered_without_a_new_event(jobs, receiver):
    """First in this module: no task has sent an event yet, so only a sender started with each worker
    delivers it."""
    headers, body = receiver.wait_for("/before-start", "completed", timeout=60)
    Webhook(SECRETS["app-b"]).verify(body, headers)
    assert headers["webhook-id"] == "msg_before_start"


def test_completed_webhook_is_signed_per_the_standard_and_carries_the_image(jobs, receiver):
    task_id = submit(jobs, "app-b", {**QUICK, "seed": 5, "webhook": f"{receiver.url}/ok", "response_format": "b64_json",
                                     "webhook_events": ["started", "completed"]})
    headers, body = receiver.wait_for("/ok", "completed")
    event = Webhook(SECRETS["app-b"]).verify(body, headers)  # raises unless the signature is valid
    assert event["type"] == "task.completed" and event["data"]["task_id"] == task_id
    image = httpx.get(f"{jobs.url}/tasks/generate/get", params={"task_id": task_id}, headers=AUTH["app-b"], timeout=30)
    assert base64.b64decode(event["data"]["b64_json"]) == image.content and event["data"]["seed"] == 5
    types = [e["type"] for h, e in receiver.events("/ok") if e["data"]["task_id"] == task_id]
    assert types == ["task.started", "task.completed"]
    with pytest.raises(Exception):
        Webhook(SECRETS["flood-a"]).verify(body, headers)  # another key's secret does not verify it
    deliveries = wait_for(lambda: (lambda d: d if all(x["state"] == "delivered" for x in d) else None)(
        status(jobs, "app-b", task_id)["webhook"]["deliveries"]))
    assert {d["webhook_id"] for d in deliveries} == {h["webhook-id"] for h, e in receiver.events("/ok")
                                                     if e["data"]["task_id"] == task_id}
    # the key's default URL, and the image as a link
    default_task = submit(jobs, "app-b", {**QUICK, "seed": 6})
    headers, body = receiver.wait_for("/default", "completed")
    event = Webhook(SECRETS["app-b"]).verify(body, headers)
    assert event["data"]["task_id"] == default_task
    linked = httpx.get(event["data"]["url"], timeout=30)
    got = httpx.get(f"{jobs.url}/tasks/generate/get", params={"task_id": default_task}, headers=AUTH["app-b"])
    assert linked.status_code == 200 and linked.content == got.content


def test_a_receiver_that_answers_500_twice_gets_the_event_on_the_third_try(jobs, receiver):
    task_id = submit(jobs, "flood-a", {**QUICK, "webhook": f"{receiver.url}/flaky", "webhook_events": "completed"})
    headers, body = receiver.wait_for("/flaky", "completed")
    wait_for(lambda: receiver.flaky >= 3)
    tries = [h for h, e in receiver.events("/flaky")]
    assert len(tries) == 3 and len({h["webhook-id"] for h in tries}) == 1  # one event, deduplicable by its id
    for h in tries:
        Webhook(SECRETS["flood-a"]).verify(receiver.got[[x[1] for x in receiver.got].index(h)][2], h)
    (delivery,) = wait_for(lambda: (lambda d: d if d and d[0]["state"] == "delivered" else None)(
        status(jobs, "flood-a", task_id)["webhook"]["deliveries"]))
    assert delivery["attempts"] == 3 and delivery["last_status"] == 200


@pytest.mark.parametrize("url", ["http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data/",
                                 "http://127.0.0.2:9/hook", "http://[::1]/hook", "http://0.0.0.0:1/hook",
                                 "http://[::ffff:10.0.0.1]/hook"])
def test_a_webhook_to_a_private_address_is_refused_at_submit(jobs, url):
    r = httpx.post(f"{jobs.url}/tasks/generate/submit", json={**QUICK, "webhook": url}, headers=AUTH["app-b"], timeout=30)
    assert r.status_code == 400 and r.json()["param"] == "webhook", r.text
    assert r.json()["code"] == "webhook_address_refused" and "not public" in r.json()["error"]


def test_a_hanging_receiver_slows_no_generation(jobs, receiver):
    task_id = submit(jobs, "app-b", {**QUICK, "webhook": f"{receiver.url}/hang", "webhook_events": ["completed"]})
    assert receiver.holding.wait(60)
    # the delivery is held open by the receiver; generation goes on meanwhile
    for seed in range(3):
        r = httpx.post(f"{jobs.url}/generate", json={**QUICK, "seed": seed}, headers=AUTH["app-b"], timeout=60)
        assert r.status_code == 200
    other = submit(jobs, "app-b", {**QUICK, "webhook": f"{receiver.url}/ok", "webhook_events": ["completed"]})
    finished(jobs, "app-b", other)
    assert not receiver.release.is_set() and finished(jobs, "app-b", task_id)["status"] == "completed"
    receiver.release.set()


# ---- idempotency -------------------------------------------------------------------------------------------
def engine_images(server) -> int:
    return httpx.post(f"{server.url}/stats", json={}, headers=AUTH["ops"], timeout=30).json()["images"]


def test_the_same_idempotency_key_twice_gives_one_generation_across_workers(jobs):
    before = engine_images(jobs)
    pairs = []
    for i in range(6):  # a new connection each time: the two API workers both answer some
        key = f"retry-{time.monotonic_ns()}-{i}"
        first, again = (httpx.post(f"{jobs.url}/generate", json={**QUICK, "prompt": f"once {i}"},
                                   headers={**AUTH["app-b"], "Idempotency-Key": key}, timeout=60) for _ in range(2))
        assert first.status_code == again.status_code == 200
        pairs.append((first, again))
    assert all(a.content == b.content for a, b in pairs)
    assert all(b.headers["idempotent-replayed"] == "true" and b.headers["x-seed"] == a.headers["x-seed"] for a, b in pairs)
    assert engine_images(jobs) - before == 6
    workers = {json.loads(line).get("worker") for line in jobs.log().splitlines()
               if line.startswith("{") and '"idempotency_key":"retry-' in line}
    assert workers == {1, 2}, workers  # first answers and replays came from both workers
    # another body under a used key: 422, nothing run
    r = httpx.post(f"{jobs.url}/generate", json={**QUICK, "prompt": "something else"},
                   headers={**AUTH["app-b"], "Idempotency-Key": key}, timeout=60)
    assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused" and r.json()["param"] == "Idempotency-Key"
    assert engine_images(jobs) - before == 6
    # a task submit: the same task, once
    ids = {httpx.post(f"{jobs.url}/tasks/generate/submit", json=QUICK, timeout=30,
                      headers={**AUTH["app-b"], "Idempotency-Key": f"task-{key}"}).json()["task_id"] for _ in range(3)}
    assert len(ids) == 1
    # the OpenAI route too
    body = {"prompt": "openai once", "n": 2, "response_format": "b64_json", "num_inference_steps": 2}
    first, again = (httpx.post(f"{jobs.url}/v1/images/generations", json=body, timeout=60,
                               headers={**AUTH["app-b"], "Idempotency-Key": f"v1-{key}"}) for _ in range(2))
    assert first.status_code == 200 and first.content == again.content


# ---- listings, queue position -------------------------------------------------------------------------------
def test_the_listing_shows_only_the_callers_own_tasks(jobs):
    a_ids = [submit(jobs, "flood-a", {**QUICK, "seed": i}) for i in range(3)]
    b_ids = [submit(jobs, "app-b", {**QUICK, "seed": i}) for i in range(2)]
    for t in a_ids:
        finished(jobs, "flood-a", t)
    for t in b_ids:
        finished(jobs, "app-b", t)

    def listing(who: str, **params) -> dict:
        r = httpx.get(f"{jobs.url}/tasks/generate/list", params=params, headers=AUTH[who], timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    mine = listing("flood-a", limit=100)["tasks"]
    assert {t["key"] for t in mine} == {"flood-a"} and [t["task_id"] for t in mine[:3]] == a_ids[::-1]
    assert not {t["task_id"] for t in listing("app-b", limit=100)["tasks"]} & set(a_ids)
    everyone = {t["task_id"] for t in listing("ops", limit=100)["tasks"]}
    assert set(a_ids + b_ids) <= everyone
    assert {t["task_id"] for t in listing("ops", key="app-b", limit=100)["tasks"]} >= set(b_ids)
    page = listing("flood-a", limit=2, status="completed")
    second = listing("flood-a", limit=2, status="completed", cursor=page["next_cursor"])
    assert [t["task_id"] for t in page["tasks"] + second["tasks"]][:3] == a_ids[::-1]
    r = httpx.get(f"{jobs.url}/tasks/generate/list", params={"key": "app-b"}, headers=AUTH["flood-a"])
    assert r.status_code == 403
    # another key's task is not found, whatever route
    r = httpx.get(f"{jobs.url}/tasks/generate/status", params={"task_id": b_ids[0]}, headers=AUTH["flood-a"])
    assert r.status_code == 404


def test_a_waiting_task_says_its_queue_position_and_an_estimate(jobs):
    long = {"prompt": "queue", "steps": 40, "width": 128, "height": 128}
    ids = [submit(jobs, "flood-a", {**long, "seed": i}) for i in range(10)]
    seen = []

    def waiting_one():
        for task_id in ids[::-1]:
            s = status(jobs, "flood-a", task_id)
            seen.append(s)
            if s["status"] == "in_progress" and s.get("queue_state") == "waiting" and s["queue_position"] >= 1:
                return s
        return None

    s = wait_for(waiting_one, timeout=60, every=0.1)
    assert s["queue_images_ahead"] >= s["queue_position"] and s["priority"] == "batch"
    assert s["eta_s"] is None or s["eta_s"] > 0
    for task_id in ids:
        httpx.put(f"{jobs.url}/tasks/generate/cancel", params={"task_id": task_id}, headers=AUTH["flood-a"])
    for task_id in ids:
        finished(jobs, "flood-a", task_id)


# ---- key limits, usage, names -----------------------------------------------------------------------------
def test_a_keys_own_limits_answer_429_naming_them(jobs):
    if time.time() % 60 > 45:  # the three images must fall in one minute
        time.sleep(61 - time.time() % 60)
    for seed in range(3):
        assert httpx.post(f"{jobs.url}/generate", json={**QUICK, "seed": seed}, headers=AUTH["capped-c"],
                          timeout=60).status_code == 200
    r = httpx.post(f"{jobs.url}/generate", json=QUICK, headers=AUTH["capped-c"], timeout=60)
    assert r.status_code == 429 and r.json()["code"] == "images_per_minute"
    assert "'capped-c'" in r.json()["error"] and "3 images per minute" in r.json()["error"]
    assert 1 <= int(r.headers["retry-after"]) <= 60
    r = httpx.post(f"{jobs.url}/v1/images/generations", json={"prompt": "x", "n": 2}, headers=AUTH["capped-c"])
    assert r.status_code == 429 and r.headers["retry-after"] and r.json()["error"]["code"] == "images_per_minute"
    # one request in flight at most for single-d: a long task holds its slot
    task_id = submit(jobs, "single-d", {"prompt": "long", "steps": 100, "width": 256, "height": 256})
    r = httpx.post(f"{jobs.url}/generate", json=QUICK, headers=AUTH["single-d"], timeout=60)
    assert r.status_code == 429 and r.json()["code"] == "max_concurrent" and "max_concurrent" in r.json()["error"]
    httpx.put(f"{jobs.url}/tasks/generate/cancel", params={"task_id": task_id}, headers=AUTH["single-d"])
    finished(jobs, "single-d", task_id)


def test_max_concurrent_holds_for_plain_posts_to_the_task_route(jobs):
    """A plain POST /tasks/generate runs like /generate: it takes a slot of the key's max_concurrent."""
    body = {"prompt": "long", "steps": 100, "width": 256, "height": 256}
    # a task cancelled by the test before keeps its slot until its work stops at the next step
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = httpx.post(f"{jobs.url}/generate", json=QUICK, headers=AUTH["single-d"], timeout=60)
        if not (r.status_code == 429 and r.json()["code"] == "max_concurrent"):
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    start = threading.Barrier(2)
    codes: list[int] = []

    def post() -> None:
        start.wait()
        codes.append(httpx.post(f"{jobs.url}/tasks/generate", json=body, headers=AUTH["single-d"],
                                timeout=120).status_code)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 429]


def test_a_task_refused_for_max_concurrent_counts_no_image_and_n_over_the_limit_is_a_400(jobs):
    if time.time() % 60 > 45:  # the images counted must fall in one minute
        time.sleep(61 - time.time() % 60)
    task_id = submit(jobs, "pair-e", {"prompt": "long", "steps": 100, "width": 256, "height": 256})  # image 1
    r = httpx.post(f"{jobs.url}/tasks/generate/submit", json=QUICK, headers=AUTH["pair-e"], timeout=60)
    assert r.status_code == 429 and r.json()["code"] == "max_concurrent"
    httpx.put(f"{jobs.url}/tasks/generate/cancel", params={"task_id": task_id}, headers=AUTH["pair-e"])
    finished(jobs, "pair-e", task_id)

    def second_image() -> httpx.Response | None:  # once the cancelled task's work has ended and left its slot
        r = httpx.post(f"{jobs.url}/generate", json=QUICK, headers=AUTH["pair-e"], timeout=60)
        return None if r.status_code == 429 and r.json()["code"] == "max_concurrent" else r

    r = wait_for(second_image, timeout=60, every=0.2)  # image 2 of 2: the refused submit counted none
    assert r.status_code == 200, r.text
    r = httpx.post(f"{jobs.url}/v1/images/generations", json={"prompt": "x", "n": 3}, headers=AUTH["pair-e"])
    assert r.status_code == 400 and "retry-after" not in r.headers
    assert "n=3" in r.json()["error"]["message"] and "limit of 2 images per minute" in r.json()["error"]["message"]
    wait_for(lambda: httpx.post(f"{jobs.url}/generate", json=QUICK, headers=AUTH["single-d"], timeout=60).status_code == 200,
             timeout=30, every=0.2)


def test_usage_and_metrics_name_each_key_and_never_a_key(jobs):
    r = httpx.get(f"{jobs.url}/admin/usage", headers=AUTH["ops"], timeout=30)
    assert r.status_code == 200, r.text
    time.sleep(1.5)  # the other worker writes its usage every second
    usage = httpx.get(f"{jobs.url}/admin/usage", headers=AUTH["ops"], timeout=30).json()["keys"]
    for name in ("app-b", "flood-a", "capped-c"):
        assert usage[name]["images"] > 0 and usage[name]["pixels"] > 0 and usage[name]["engine_seconds"] > 0
    assert httpx.get(f"{jobs.url}/admin/usage", headers=AUTH["app-b"]).status_code == 401
    metrics = httpx.get(f"{jobs.url}/metrics", timeout=30).text
    assert re.search(r't2i_key_images_total\{key="app-b"\} [1-9]', metrics)
    assert re.search(r't2i_webhook_deliveries_total\{event="completed",key="flood-a",outcome="retry"\}', metrics) or \
        'outcome="retry"' in metrics
    assert 't2i_key_limited_total{key="capped-c",limit="images_per_minute"}' in metrics
    log = jobs.log()
    assert '"key":"app-b"' in log and '"key":"flood-a"' in log
    assert not any(key in log or key in metrics for key in KEYS.values())
    listed = httpx.get(f"{jobs.url}/admin/keys", headers=AUTH["ops"]).json()["keys"]
    assert {k["name"] for k in listed} >= set(KEYS) and not any(s in json.dumps(listed) for s in SECRETS.values())


# ---- reload ---------------------------------------------------------------------------------------------------
def test_the_keys_file_is_reloaded_on_sighup_and_through_the_admin_api(jobs, receiver):
    path: Path = jobs.keys_path  # type: ignore[attr-defined]
    fresh = "key-e-" + "6" * 24

    def answers(key: str) -> set[int]:  # several new connections: both workers answer
        return {httpx.post(f"{jobs.url}/generate", json=QUICK, headers={"Authorization": f"Bearer {key}"},
                           timeout=60).status_code for _ in range(6)}

    assert answers(fresh) == {401}
    keys_file(path, receiver, f"  - {{name: fresh-e, key_sha256: {digest(fresh)}}}\n")
    os.killpg(jobs.proc.pid, signal.SIGHUP)  # the whole server: its main process passes it on too
    wait_for(lambda: answers(fresh) == {200}, timeout=30, every=0.5)
    assert jobs.proc.poll() is None and answers(KEYS["app-b"]) == {200}  # nothing restarted, old keys kept
    newer = "key-f-" + "7" * 24
    keys_file(path, receiver, f"  - {{name: newer-f, key_sha256: {digest(newer)}}}\n")
    r = httpx.post(f"{jobs.url}/admin/keys/reload", headers=AUTH["ops"], timeout=30)
    assert r.status_code == 200 and "newer-f" in r.json()["keys"] and "fresh-e" not in r.json()["keys"]
    wait_for(lambda: answers(newer) == {200} and answers(fresh) == {401}, timeout=30, every=0.5)
    path.write_text("keys: [not, a, key\n")
    r = httpx.post(f"{jobs.url}/admin/keys/reload", headers=AUTH["ops"], timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "keys_file_invalid"
    assert answers(newer) == {200}  # the keys in force stay
    keys_file(path, receiver)
