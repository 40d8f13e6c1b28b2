"""Two engine workers and two API workers under one `bentoml serve`, 32 clients at once: generate,
edit, "url" images, tasks with progress and cancels. Nothing is lost: no 5xx, every link and task
readable through either API worker, every cancel stops its own work and no other."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections import Counter, defaultdict

import httpx
import pytest
from PIL import Image

from conftest import ADMIN_KEY, Server

pytestmark = pytest.mark.e2e

CLIENTS = 32
ROUNDS = 2
BOUND_S = 300  # the whole run stops by then, whatever happens
LONG = {"prompt": "a long job", "steps": 100, "width": 256, "height": 256}


@pytest.fixture(scope="module")
def scaled():
    srv = Server({"T2I_ENGINE_WORKERS": "2", "T2I_API_WORKERS": "2", "T2I_ADMIN_KEY": ADMIN_KEY})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (seed * 40 % 256, 90, 160)).save(out, "PNG")
    return out.getvalue()


class Run:
    """What the clients saw: every status code, the request ids by kind, the cancels."""

    def __init__(self, url: str):
        self.url = url
        self.statuses: Counter[int] = Counter()
        self.ids: dict[str, list[str]] = defaultdict(list)
        self.cancelled: list[str] = []
        self.finished: list[str] = []

    async def call(self, method: str, path: str, kind: str, *, fresh: bool = False, client=None, **kw) -> httpx.Response:
        """One request with an X-Request-ID (the server's log line names the API worker that answered);
        ``fresh``: on a new connection, so that either API worker may take it."""
        rid = f"{kind}-{uuid.uuid4().hex[:12]}"
        headers = {**kw.pop("headers", {}), "X-Request-ID": rid}
        if fresh or client is None:
            async with httpx.AsyncClient(timeout=120) as own:
                r = await own.request(method, f"{self.url}{path}", headers=headers, **kw)
        else:
            r = await client.request(method, f"{self.url}{path}", headers=headers, **kw)
        self.statuses[r.status_code] += 1
        self.ids[kind].append(rid)
        assert r.status_code < 500, (method, path, r.status_code, r.text[:300])
        return r

    async def generate(self, client, i: int) -> None:
        r = await self.call("POST", "/generate", "generate", client=client, json={"prompt": f"a fox {i}", "seed": i})
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG") and r.headers["x-seed"] == str(i)

    async def edit(self, client, i: int) -> None:
        r = await self.call("POST", "/edit", "edit", client=client, files={"image": ("in.png", png(i), "image/png")},
                            data={"prompt": "make it snowy", "strength": "0.6", "seed": str(i)})
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG")

    async def link(self, client, i: int) -> None:
        r = await self.call("POST", "/v1/images/generations", "openai", client=client,
                            json={"prompt": f"a boat {i}", "response_format": "url", "seed": i})
        assert r.status_code == 200, r.text
        path = r.json()["data"][0]["url"].split(self.url, 1)[1]
        bodies = [(await self.call("GET", path, "link", fresh=True)) for _ in range(4)]
        assert all(b.status_code == 200 and b.headers["content-type"] == "image/png" for b in bodies)
        assert len({b.content for b in bodies}) == 1

    async def progress(self, task_id: str) -> dict:
        r = await self.call("GET", "/tasks/generate/progress", "task-read", fresh=True, params={"task_id": task_id})
        assert r.status_code == 200, r.text
        return r.json()

    async def until(self, check, timeout_s: float = 180):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError("condition not reached")

    async def task(self, i: int, cancel: bool) -> None:
        body = {**LONG, "seed": i} if cancel else {"prompt": f"a task {i}", "seed": i, "steps": 20}
        # on a new connection: this client's connection sat idle while its previous task ran, and the
        # server (uvicorn) closes idle connections after 5 s, just when httpx's pool (5 s expiry) still
        # reuses them; a request sent into that close fails before the server sees it (ReadError)
        r = await self.call("POST", "/tasks/generate/submit", "task-submit", fresh=True, json=body)
        assert r.status_code == 200, r.text
        task_id = r.json()["task_id"]
        if cancel:
            await self.until(lambda: self._stepped(task_id))
            r = await self.call("PUT", "/tasks/generate/cancel", "task-cancel", fresh=True, params={"task_id": task_id})
            assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
            seen = await self.until(lambda: self._in_state(task_id, "cancelled"))
            assert seen["status"] == "canceled" and seen["step"] < LONG["steps"], seen
            got = await self.call("GET", "/tasks/generate/get", "task-read", fresh=True, params={"task_id": task_id})
            assert got.status_code == 409 and got.json()["code"] == "task_canceled"
            self.cancelled.append(task_id)
            return
        seen = await self.until(lambda: self._in_state(task_id, "done"))
        assert seen["status"] == "completed" and seen["step"] == seen["steps"] == 20, seen
        for _ in range(3):
            got = await self.call("GET", "/tasks/generate/get", "task-read", fresh=True, params={"task_id": task_id})
            assert got.status_code == 200 and got.headers["x-seed"] == str(i)
        self.finished.append(task_id)

    async def _stepped(self, task_id: str):
        p = await self.progress(task_id)
        return p if p["state"] == "running" and p["step"] >= 1 else None

    async def _in_state(self, task_id: str, state: str):
        p = await self.progress(task_id)
        return p if p["state"] == state and p["status"] != "in_progress" else None

    async def client(self, index: int) -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            for rnd in range(ROUNDS):
                seed = index * 10 + rnd
                role = index % 4
                if role == 0:
                    await self.generate(client, seed)
                elif role == 1:
                    await self.edit(client, seed)
                elif role == 2:
                    await self.link(client, seed)
                else:  # one long task cancelled while it runs, one short task read to the end
                    await self.task(seed, cancel=(rnd == 0))


def test_two_engine_and_two_api_workers_lose_nothing(scaled):
    run = Run(scaled.url)
    before = httpx.post(f"{scaled.url}/stats", timeout=30).json()

    async def everyone() -> None:
        await asyncio.wait_for(asyncio.gather(*(run.client(i) for i in range(CLIENTS))), BOUND_S)

    started = time.monotonic()
    asyncio.run(everyone())
    elapsed = time.monotonic() - started
    assert not [code for code in run.statuses if code >= 500]
    assert len(run.cancelled) == CLIENTS // 4 and len(run.finished) == CLIENTS // 4

    # the engine: both workers worked; each cancel stopped its request's work there, as client_closed
    stats = httpx.post(f"{scaled.url}/stats", timeout=30).json()
    assert set(stats["workers"]) == {"1", "2"}
    assert all(w["images"] > before["workers"].get(k, {}).get("images", 0) for k, w in stats["workers"].items())
    closed = stats["errors_by_code"].get("client_closed", 0) - before["errors_by_code"].get("client_closed", 0)
    assert closed == len(run.cancelled), stats["errors_by_code"]

    # both API workers answered, and each of them served links and task reads
    lines = [json.loads(line) for line in scaled.log().splitlines() if line.startswith('{"ts"')]
    by_kind: dict[str, set[int]] = defaultdict(set)
    for line in lines:
        kind = line["request_id"].split("-", 1)[0]
        if "worker" in line and kind in ("generate", "edit", "openai", "link", "task"):
            by_kind[kind].add(line["worker"])
    assert by_kind["link"] == {1, 2} and by_kind["task"] == {1, 2}, dict(by_kind)
    models = httpx.get(f"{scaled.url}/v1/models", timeout=30).json()
    print(f"\n{CLIENTS} clients, {sum(run.statuses.values())} requests in {elapsed:.1f}s: {dict(run.statuses)}; "
          f"engine workers' images: { {k: w['images'] for k, w in stats['workers'].items()} }; "
          f"API workers by kind: { {k: sorted(v) for k, v in by_kind.items()} }; models: {len(models['data'])}")


def test_admin_actions_reach_both_engine_workers(scaled):
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = httpx.post(f"{scaled.url}/admin/models/builtin/tiny-sdxl/load", headers=auth, timeout=120)
    assert r.status_code == 200 and r.json()["workers"] == {"1": "ok", "2": "ok"}, r.text
    rows = {m["id"]: m for m in httpx.get(f"{scaled.url}/admin/models", headers=auth, timeout=30).json()["models"]}
    assert rows["builtin/tiny-sdxl"]["state"] == "loaded" and rows["builtin/tiny-sdxl"]["loaded_on"] == [1, 2]
    r = httpx.post(f"{scaled.url}/admin/default", headers=auth, json={"model": "builtin/tiny-sdxl"}, timeout=60)
    assert r.status_code == 200 and r.json()["workers"] == {"1": "ok", "2": "ok"}
    try:
        # whichever API worker and engine worker take them, requests without a model now use it
        models = set()
        for i in range(8):
            r = httpx.post(f"{scaled.url}/generate", json={"prompt": "x", "seed": i}, timeout=60,
                           headers={"Connection": "close"})
            assert r.status_code == 200
            models.add(r.headers["x-model"])
        assert models == {"builtin/tiny-sdxl"}
    finally:
        httpx.post(f"{scaled.url}/admin/default", headers=auth, json={"model": "builtin/tiny-sd"}, timeout=60)
    r = httpx.post(f"{scaled.url}/admin/models/builtin/tiny-sdxl/unload", headers=auth, timeout=60)
    assert r.status_code == 200 and r.json()["workers"] == {"1": "ok", "2": "ok"}


def test_a1111_progress_and_interrupt_reach_the_callers_job_through_either_api_worker(scaled):
    """A1111 clients poll ``progress`` and send ``interrupt`` on new connections (the webui's JS and
    most scripts do): whichever API worker takes them must find the caller's job."""
    import threading

    outcome: dict[str, int] = {}

    def long_job() -> None:
        r = httpx.post(f"{scaled.url}/sdapi/v1/txt2img", timeout=180,
                       json={"prompt": "a long job", "seed": 1, "width": 256, "height": 256, "steps": 100, "cfg_scale": 0})
        outcome["status"] = r.status_code

    job = threading.Thread(target=long_job)
    job.start()
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(seen) < 12:
        r = httpx.get(f"{scaled.url}/sdapi/v1/progress?skip_current_image=true", headers={"Connection": "close"}, timeout=30)
        state = r.json()["state"]
        if state["sampling_step"] > 0 or seen:
            seen.append((state["job_count"], state["sampling_step"]))
        time.sleep(0.1)
    # every poll once the job ran saw it running, its steps never going back
    assert len(seen) == 12 and all(count == 1 for count, _ in seen), seen
    assert [step for _, step in seen] == sorted(step for _, step in seen), seen
    for _ in range(4):  # on new connections: either API worker
        assert httpx.post(f"{scaled.url}/sdapi/v1/interrupt", headers={"Connection": "close"}, timeout=30).status_code == 200
    job.join(60)
    assert not job.is_alive() and outcome["status"] != 200, outcome  # stopped, not finished
    assert httpx.get(f"{scaled.url}/sdapi/v1/progress", timeout=30).json()["state"]["job_count"] == 0
