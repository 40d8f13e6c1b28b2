"""Two servers (replicas) on one Redis act as one server: a task submitted on A is read, followed and
cancelled on B; an A1111 request on A is interrupted through B; an admin load on A is loaded on B; an
image link made on A is served by B. Redis killed mid-load: no hang, 503s on what needs it, generation
goes on, and service comes back with Redis."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import ADMIN_KEY, Server, free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
LONG = {"prompt": "a long job", "seed": 3, "steps": 100, "width": 512, "height": 512}


@pytest.fixture(scope="module")
def replicas():
    from redis_server import start_redis

    redis = start_redis(free_port())
    env = {"T2I_STATE": redis.url, "T2I_ADMIN_KEY": ADMIN_KEY}
    a, b = Server(env), Server(env)
    try:
        a.wait_ready()
        b.wait_ready()
        yield a, b, redis
    finally:
        a.stop()
        b.stop()
        redis.stop()


def test_a_task_submitted_on_one_replica_is_followed_and_cancelled_on_the_other(replicas):
    a, b, _ = replicas
    task_id = httpx.post(f"{a.url}/tasks/generate/submit", json=LONG, timeout=30).json()["task_id"]
    progress = wait_for(lambda: (p := httpx.get(f"{b.url}/tasks/generate/progress", params={"task_id": task_id},
                                                timeout=30).json())["state"] == "running" and p["step"] >= 2 and p)
    assert progress["status"] == "in_progress" and progress["steps"] == 100
    cancelled = httpx.put(f"{b.url}/tasks/generate/cancel", params={"task_id": task_id}, timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "canceled"
    stopped = wait_for(lambda: (p := httpx.get(f"{a.url}/tasks/generate/progress", params={"task_id": task_id},
                                               timeout=30).json())["state"] == "cancelled" and p)
    assert stopped["step"] < 100  # the work on A stopped
    got = httpx.get(f"{a.url}/tasks/generate/get", params={"task_id": task_id}, timeout=30)
    assert got.status_code == 409 and got.json()["code"] == "task_canceled"
    done = httpx.post(f"{b.url}/tasks/generate/submit", json={"prompt": "quick", "steps": 1}, timeout=30).json()
    image = wait_for(lambda: (r := httpx.get(f"{a.url}/tasks/generate/get", params={"task_id": done["task_id"]},
                                             timeout=30)).status_code == 200 and r)
    assert image.headers["content-type"] == "image/png"


def test_an_a1111_request_on_one_replica_is_interrupted_through_the_other(replicas):
    a, b, _ = replicas
    caller = {"Authorization": "Bearer some-a1111-client"}
    out: list = []
    thread = threading.Thread(target=lambda: out.append(httpx.post(
        f"{a.url}/sdapi/v1/txt2img", headers=caller, timeout=120,
        json={"prompt": "a long one", "steps": 100, "width": 512, "height": 512, "cfg_scale": 0})))
    thread.start()
    wait_for(lambda: httpx.get(f"{b.url}/sdapi/v1/progress", headers=caller, timeout=30).json()["state"]["sampling_step"] >= 2)
    assert httpx.post(f"{b.url}/sdapi/v1/interrupt", headers=caller, timeout=30).status_code == 200
    thread.join(120)
    (answer,) = out
    assert answer.status_code != 200 or answer.json().get("info")  # interrupted: stopped early
    final = httpx.get(f"{b.url}/sdapi/v1/progress", headers=caller, timeout=30).json()
    assert final["state"]["sampling_step"] < 100


def test_an_admin_action_on_one_replica_reaches_the_other(replicas):
    a, b, _ = replicas
    assert httpx.post(f"{a.url}/admin/models/builtin/tiny-sdxl/load", headers=ADMIN, timeout=120).status_code == 200
    row = next(m for m in httpx.get(f"{b.url}/admin/models", headers=ADMIN, timeout=30).json()["models"]
               if m["id"] == "builtin/tiny-sdxl")
    assert row["state"] == "loaded"
    assert httpx.post(f"{b.url}/admin/models/builtin/tiny-sdxl/unload", headers=ADMIN, timeout=120).status_code == 200
    row = next(m for m in httpx.get(f"{a.url}/v1/models", timeout=30).json()["data"] if m["id"] == "builtin/tiny-sdxl")
    assert row["state"] != "loaded"


def test_an_image_link_made_on_one_replica_is_served_by_the_other(replicas):
    a, b, _ = replicas
    made = httpx.post(f"{a.url}/v1/images/generations", json={"prompt": "a link", "response_format": "url", "seed": 1},
                      timeout=60).json()
    link = made["data"][0]["url"]
    path = link[link.index("/v1/images/files/"):]
    served = httpx.get(f"{b.url}{path}", timeout=30)
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert httpx.get(f"{b.url}/v1/images/files/unknown-token", timeout=30).status_code == 404


def test_redis_going_away_mid_load_is_503s_not_a_hang_and_service_comes_back(replicas):
    a, b, redis = replicas
    answers: list[tuple[str, int]] = []
    stop = time.monotonic() + 12

    def client(k: int) -> None:
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < stop:
                started = time.monotonic()
                server = (a, b)[k % 2]
                r = http.post(f"{server.url}/tasks/generate/submit", json={"prompt": f"t{k}", "steps": 1})
                answers.append(("submit", r.status_code))
                g = http.post(f"{server.url}/generate", json={"prompt": f"g{k}", "steps": 1})
                answers.append(("generate", g.status_code))
                assert time.monotonic() - started < 30  # never a hang
                time.sleep(0.05)

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(client, k) for k in range(4)]
        time.sleep(3)
        redis.stop()
        time.sleep(4)
        redis.start()
        for future in running:
            future.result()
    codes = {(what, code) for what, code in answers}
    assert ("submit", 503) in codes, codes  # the task store needs Redis: 503 while it is away
    assert all(code in (200, 503) for _, code in answers), codes
    assert all(code == 200 for what, code in answers if what == "generate"), codes  # generation went on
    # service after: tasks again, on both replicas
    for server in (a, b):
        r = wait_for(lambda: (x := httpx.post(f"{server.url}/tasks/generate/submit", json={"prompt": "back", "steps": 1},
                                              timeout=30)).status_code == 200 and x, timeout=60, every=0.5)
        assert r.json()["status"] == "in_progress"
