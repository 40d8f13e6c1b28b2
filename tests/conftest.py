"""Shared fixtures. Everything the tests write goes under one folder in /tmp; nothing reaches a hub."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
TMP = Path(tempfile.mkdtemp(prefix="t2i-tests-"))
ISOLATED_ENV = {
    "BENTOML_HOME": str(TMP / "bentoml"),
    "HF_HOME": str(TMP / "hf"),
    "HF_HUB_OFFLINE": "1",
    "UV_CACHE_DIR": str(TMP / "uv"),
    "XDG_CACHE_HOME": str(TMP / "cache"),
    # Built tiny pipelines are kept between runs here (they are deterministic) to save a second.
    "T2I_CACHE_DIR": os.environ.get("T2I_TEST_CACHE_DIR", "/tmp/t2i-test-cache"),
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(ISOLATED_ENV)
for key in [k for k in os.environ if k.startswith("T2I_") and k != "T2I_CACHE_DIR"]:
    del os.environ[key]
# In-process request flows encode in the test's own process: a Starlette TestClient runs each request on
# an event loop of its own, and encoder processes are per loop (t2i_core/api/images/encode_pool.py has its own
# tests). Servers started by the tests run with the default (encoder processes).
IN_PROCESS_ENV = {"T2I_ENCODE_PROCESSES": "0"}
os.environ.update(IN_PROCESS_ENV)


@pytest.fixture(scope="session")
def engine():
    """An in-process engine on the built-in tiny model (CPU)."""
    from t2i_core.engine.core import Engine

    return Engine()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real `bentoml serve service:API` subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = TMP / f"serve-{self.port}.log"
        # A BENTOML_HOME of its own: `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir at
        # start, which would wipe the metrics of a server already running on the same home.
        home = TMP / f"bentoml-{self.port}"
        inherited = {k: v for k, v in os.environ.items() if k not in IN_PROCESS_ENV}
        full_env = {**inherited, "BENTOML_HOME": str(home), **(env or {}),
                    "BENTOML_CONFIG": str(ROOT / "configuration.yaml")}
        bentoml = Path(sys.executable).with_name("bentoml")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(bentoml), "serve", "service:API", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180, headers: dict[str, str] | None = None) -> None:
        """Ready means a real generation succeeds (the engine has loaded its model)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                r = httpx.post(f"{self.url}/generate", json={"prompt": "warm up", "seed": 0}, headers=headers, timeout=30)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


ADMIN_KEY = "test-admin-key"
SHARED_IMAGES = TMP / "shared-images"


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    # image links in a folder: the test that starts a second server on the same folder reads them there
    srv = Server({"T2I_ADMIN_KEY": ADMIN_KEY, "T2I_IMAGE_STORE": f"dir:{SHARED_IMAGES}"})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server on a free loopback port (tests/redis_server.py), stopped at the end."""
    from redis_server import start_redis

    srv = start_redis(free_port())
    try:
        yield srv
    finally:
        srv.stop()


def wait_for(check, timeout: float = 120, every: float = 0.05):
    """``check()``'s first truthy value, polled every ``every`` seconds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached")
