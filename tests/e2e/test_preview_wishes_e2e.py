"""On a real server: progress polls with ``preview=1`` on tasks that failed or finished keep no live-preview
wish in the engine (each used to stay until restart; 10,000 of them switched previews off for every
client), and a live preview of a running task still arrives. The 10,000-wish flood itself is in
tests/engine/test_request_board.py, on every state backend."""

from __future__ import annotations

import httpx
import pytest

from conftest import wait_for

pytestmark = pytest.mark.e2e
#: a task that passes the submit checks, then fails in the engine before any step: the model's weights are absent
#: (sd-turbo is in the registry, not in the tests' Hugging Face cache)
FAILS_BEFORE_THE_ENGINE = {"prompt": "x", "model": "stabilityai/sd-turbo"}


def submit(server, body: dict) -> str:
    r = httpx.post(f"{server.url}/tasks/generate/submit", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["task_id"]


def progress(server, task_id: str, headers: dict | None = None) -> dict:
    r = httpx.get(f"{server.url}/tasks/generate/progress", params={"task_id": task_id, "preview": "1"},
                  headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wishes_kept(server) -> int:
    return httpx.post(f"{server.url}/stats", json={}, timeout=30).json()["preview_wishes"]


def test_stale_preview_polls_keep_nothing_and_a_live_preview_still_arrives(server):
    before = wishes_kept(server)
    stale = [submit(server, FAILS_BEFORE_THE_ENGINE) for _ in range(12)] + [submit(server, {"prompt": "quick", "steps": 1})]
    finals = [wait_for(lambda t=t: (lambda p: p if p["status"] != "in_progress" else None)(progress(server, t)))
              for t in stale]
    assert [p["status"] for p in finals] == ["failed"] * 12 + ["completed"]
    assert finals[0]["state"] == "done" and finals[0]["step"] == 0  # the engine refused it before any step
    # polled again, by callers with API keys and without; the refused tasks never made an image (the
    # completed one may show the preview a poll asked for while it ran)
    for task_id in stale:
        for headers in ({"Authorization": "Bearer one"}, {"Authorization": "Bearer two"}, None):
            body = progress(server, task_id, headers)
            assert body["current_image"] is None or (task_id == stale[-1] and body["current_image_step"] == 1)
    assert wishes_kept(server) <= before  # none kept for tasks that cannot run any more

    live = submit(server, {"prompt": "a live preview", "seed": 4, "steps": 100, "width": 256, "height": 256})
    try:
        body = wait_for(lambda: (lambda p: p if p["current_image"] else None)(
            progress(server, live, {"Authorization": "Bearer one"})))
        assert body["status"] == "in_progress" and 1 <= body["current_image_step"] <= 100
    finally:
        httpx.put(f"{server.url}/tasks/generate/cancel", params={"task_id": live}, timeout=30)
    wait_for(lambda: progress(server, live)["state"] == "cancelled", timeout=60)
    assert wishes_kept(server) <= before  # the cancelled task's wish went with it
