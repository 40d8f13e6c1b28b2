"""The webhook sender against a real HTTP receiver on a loopback port: a worker that starts delivers
what was left pending before it existed; an internationalized host goes out in its IDNA form; an
attempt that raises anything counts as a failed attempt (retried, then failed), never a delivery
stuck leased for ever."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from t2i_core.api.jobs import build_jobs
from t2i_core.api.webhooks.deliveries import Deliveries, Delivery
from t2i_core.common.config import Settings
from t2i_core.devtools.key_new import new_webhook_secret
from t2i_core.state.memory import MemoryState


class Receiver:
    """Records every POST (path, headers); answers 204."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("content-length") or 0))
                owner.got.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.http.shutdown()


def settings() -> Settings:
    return Settings(webhook_secret=new_webhook_secret(), webhook_allow="127.0.0.1", webhook_attempts=2,
                    webhook_backoff_ms=1, webhook_timeout_s=5)


def pending(message_id: str, url: str) -> Delivery:
    return Delivery(id=message_id, task_id="t1", key="anonymous", event="completed", url=url, body="{}",
                    created_at=time.time())


def run_until_settled(state: MemoryState, ids: list[str], wait_s: float = 30.0) -> dict[str, Delivery]:
    """A freshly built worker's jobs started, until each delivery is delivered or failed (or ``wait_s``)."""

    async def main() -> dict[str, Delivery]:
        jobs = build_jobs(settings(), state)
        jobs.start()  # what each API worker runs at startup
        try:
            deadline = time.monotonic() + wait_s
            while True:
                found = {i: jobs.deliveries.get(i) for i in ids}
                if all(d is not None and d.state != "pending" for d in found.values()) or time.monotonic() > deadline:
                    return found  # type: ignore[return-value]
                await asyncio.sleep(0.02)
        finally:
            await jobs.sender.stop()

    return asyncio.run(main())


def test_a_delivery_pending_before_the_worker_started_is_delivered_by_it(receiver):
    state = MemoryState()
    Deliveries(state, ttl_s=600).add(pending("msg_before", f"http://127.0.0.1:{receiver.port}/before"))
    found = run_until_settled(state, ["msg_before"])
    assert found["msg_before"].state == "delivered"
    assert [path for path, _ in receiver.got] == ["/before"]


def test_an_internationalized_host_goes_out_in_its_idna_form(receiver):
    state = MemoryState()
    # fullwidth letters: IDNA maps them to "localhost"
    Deliveries(state, ttl_s=600).add(pending("msg_idn", f"http://ｌｏｃａｌｈｏｓｔ:{receiver.port}/idn"))
    found = run_until_settled(state, ["msg_idn"])
    assert found["msg_idn"].state == "delivered", found["msg_idn"].last_error
    assert receiver.got[0][1]["host"] == f"localhost:{receiver.port}"


def test_an_attempt_that_raises_counts_as_failed_and_is_retried_then_failed(receiver):
    state = MemoryState()
    # a character the HTTP client refuses in a URL (httpx.InvalidURL, not an httpx.HTTPError)
    Deliveries(state, ttl_s=600).add(pending("msg_bad", f"http://127.0.0.1:{receiver.port}/a\x7fb"))
    found = run_until_settled(state, ["msg_bad"])
    bad = found["msg_bad"]
    assert (bad.state, bad.attempts, bad.lease) == ("failed", 2, "")
    assert bad.last_error is not None and "InvalidURL" in bad.last_error
    assert receiver.got == []
