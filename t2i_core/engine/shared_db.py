"""A SQLite file that the engine workers of one server share (on the local disk of their machine).

Write-ahead logging lets readers run beside a writer; ``synchronous=OFF`` because nothing in it must
survive a crash of the machine (the server starts a fresh run folder). One connection per thread.
Not for network file systems: SQLite's locks do not hold there, which is why several replicas share
images through the image store (``T2I_IMAGE_STORE``), not through this file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

BUSY_TIMEOUT_MS = 10_000


class SharedDB:
    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            self._local.conn = conn
        return conn

    def executescript(self, script: str) -> None:
        with self.write() as conn:
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (taken at once, so that it never fails half-way on a lock)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn().execute(sql, params).fetchall()
