"""A real Redis server (Debian's ``redis-server``, installed by .ci/run) on a free loopback port, with
its files in a temporary folder, for the tests of the Redis state backend and of replicas."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest


class RedisServer:
    def __init__(self, port: int, folder: str):
        self.port = port
        self.folder = folder
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI"):
                raise RuntimeError("redis-server is not installed (.ci/run installs Debian's redis-server)")
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.folder, "--save", "",
             "--appendonly", "no", "--protected-mode", "yes", "--logfile", os.path.join(self.folder, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def memory_used(self) -> int:
        import redis

        return int(redis.Redis(port=self.port).info("memory")["used_memory"])


def start_redis(port: int) -> RedisServer:
    server = RedisServer(port, tempfile.mkdtemp(prefix="t2i-redis-"))
    server.start()
    return server
