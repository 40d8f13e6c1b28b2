"""t2i_core/api/surfaces/a1111/callers.py: each A1111 caller's latest request, shared by API workers."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from t2i_core.api.surfaces.a1111 import callers as callers_module
from t2i_core.api.surfaces.a1111.callers import CallerJobs, SharedCallerJobs, caller_of, open_caller_jobs


def request(auth: str | None = None, host: str = "10.0.0.7") -> Request:
    headers = [(b"authorization", auth.encode())] if auth else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "client": (host, 5000)})


def test_a_caller_is_its_key_else_its_address_and_keys_are_never_kept_as_given():
    assert caller_of(request(host="10.0.0.7")) == "addr:10.0.0.7"
    keyed = caller_of(request("Bearer s3cret"))
    assert keyed.startswith("key:") and "s3cret" not in keyed and keyed == caller_of(request("Bearer s3cret", "10.9.9.9"))
    assert keyed != caller_of(request("Bearer other"))


def test_api_workers_share_the_latest_request_of_each_caller(tmp_path, monkeypatch):
    monkeypatch.setattr(callers_module, "CALLERS_KEPT", 3)
    path = str(tmp_path / "callers.sqlite")
    one, two = SharedCallerJobs(path), SharedCallerJobs(path)  # two API worker processes

    async def scenario() -> None:
        await one.remember("addr:a", "job-1")
        assert (await two.latest("addr:a"))[0] == "job-1"
        await two.remember("addr:a", "job-2")  # the caller's next request, taken by the other worker
        assert (await one.latest("addr:a"))[0] == "job-2"
        for caller in ("addr:b", "addr:c", "addr:d"):
            await one.remember(caller, f"job-{caller}")
        assert await two.latest("addr:a") is None  # the oldest caller beyond the cap is forgotten
        assert (await two.latest("addr:d"))[0] == "job-addr:d"

    asyncio.run(scenario())
    assert type(open_caller_jobs(1, str(tmp_path))) is CallerJobs
    assert isinstance(open_caller_jobs(2, str(tmp_path)), SharedCallerJobs)
