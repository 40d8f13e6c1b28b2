"""The state in one SQLite file that the workers of one server share (in its run folder, on the local
disk): several API and engine workers on one machine, nothing to set up.

Why it does not lock up under load (BentoML's own task store did: "database is locked" once status
reads interleaved with another worker's writes): every statement runs in autocommit, so no read
holds a snapshot beyond its statement; every read-modify-write takes the write lock first
(``BEGIN IMMEDIATE``), so two writers never both hold a read snapshot and then both ask to write
(the deadlock SQLite answers with SQLITE_BUSY at once, whatever the busy timeout); write-ahead
logging lets reads run beside a writer; a writer waits up to ``BUSY_TIMEOUT_MS`` for the lock.

``synchronous=NORMAL`` in WAL mode: a commit survives a crash of the process, not a power cut of
the machine (the server starts a fresh run folder then). Not for network file systems: SQLite's
locks do not hold there (several replicas share state through Redis). The file is created 0600
(SQLite gives its -wal and -shm files the same permissions). A call SQLite fails (the disk full, the
lock not had within the busy timeout, the file gone) raises ``StateUnavailable`` (503), as a Redis
that cannot be reached does.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from typing import Iterator

import time

from t2i_core.common.errors import StateUnavailable
from t2i_core.state.store import Change, StateStore, Subscription, now

BUSY_TIMEOUT_MS = 30_000
#: seconds between two deletions of expired keys by one process
SWEEP_S = 5.0

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL)",
    "CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS idx (name TEXT NOT NULL, member TEXT NOT NULL, score REAL NOT NULL, "
    "PRIMARY KEY (name, member))",
    "CREATE INDEX IF NOT EXISTS idx_score ON idx (name, score)",
    "CREATE TABLE IF NOT EXISTS idx_expires (name TEXT PRIMARY KEY, expires REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, "
    "body BLOB NOT NULL, at REAL NOT NULL)",
)
#: seconds between two looks of a subscriber at the message table, and how long a message is kept
MESSAGE_POLL_S = 0.01
MESSAGE_KEPT_S = 30.0
LIVE = "(expires IS NULL OR expires > ?)"
#: an index whose ttl has not run out (parameters: its name, now)
LIVE_INDEX = "NOT EXISTS (SELECT 1 FROM idx_expires WHERE name = ? AND expires <= ?)"


class SqliteState(StateStore):
    kind = "sqlite"
    shared = True

    def __init__(self, path: str):
        self.path = path
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._swept = 0.0
        with self._write() as conn:
            for statement in SCHEMA:
                conn.execute(statement)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _failures(self) -> Iterator[None]:
        """SQLite's errors as ``StateUnavailable`` naming the file."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StateUnavailable(f"the shared state (SQLite file {self.path}) failed: {exc}") from None

    def _read(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        with self._failures():
            return self._conn().execute(sql, params).fetchall()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the write lock from its start (see the module docstring)."""
        with self._failures():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled it back itself (e.g. disk full)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            t = now()
            if t - self._swept > SWEEP_S:
                self._swept = t
                conn.execute("DELETE FROM kv WHERE expires IS NOT NULL AND expires <= ?", (t,))
                for (name,) in conn.execute("SELECT name FROM idx_expires WHERE expires <= ?", (t,)).fetchall():
                    conn.execute("DELETE FROM idx WHERE name = ?", (name,))
                    conn.execute("DELETE FROM idx_expires WHERE name = ?", (name,))

    def get(self, key: str) -> bytes | None:
        rows = self._read(f"SELECT value FROM kv WHERE key = ? AND {LIVE}", (key, now()))
        return None if not rows else bytes(rows[0][0])  # type: ignore[arg-type]

    def get_many(self, keys: list[str] | tuple[str, ...] | object) -> list[bytes | None]:  # type: ignore[override]
        wanted = list(keys)  # type: ignore[call-overload]
        if not wanted:
            return []
        marks = ",".join("?" * len(wanted))
        rows = self._read(f"SELECT key, value FROM kv WHERE key IN ({marks}) AND {LIVE}", (*wanted, now()))
        found = {k: bytes(v) for k, v in rows}  # type: ignore[arg-type]
        return [found.get(k) for k in wanted]

    def put(self, key: str, value: bytes, ttl_s: float | None = None, *, only_if_absent: bool = False) -> bool:
        t = now()
        expires = None if ttl_s is None else t + ttl_s
        with self._write() as conn:
            if only_if_absent:
                conn.execute("DELETE FROM kv WHERE key = ? AND expires IS NOT NULL AND expires <= ?", (key, t))
                cur = conn.execute("INSERT OR IGNORE INTO kv VALUES (?, ?, ?)", (key, value, expires))
                return cur.rowcount > 0
            conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, value, expires))
            return True

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        marks = ",".join("?" * len(keys))
        with self._write() as conn:
            return conn.execute(f"DELETE FROM kv WHERE key IN ({marks}) AND {LIVE}", (*keys, now())).rowcount

    def update(self, key: str, change: Change, ttl_s: float | None = None) -> bytes | None:
        t = now()
        with self._write() as conn:
            row = conn.execute(f"SELECT value, expires FROM kv WHERE key = ? AND {LIVE}", (key, t)).fetchone()
            old, expires = (None, None) if row is None else (bytes(row[0]), row[1])
            new = change(old)
            if new is None:
                return old
            conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)",
                         (key, new, expires if ttl_s is None else t + ttl_s))
            return new

    def incr(self, key: str, by: int = 1, ttl_s: float | None = None) -> int:
        result = self.update(key, lambda old: str((int(old) if old else 0) + by).encode(), ttl_s)
        return int(result or 0)

    def put_many(self, values: dict[str, bytes], ttl_s: float | None = None) -> None:
        expires = None if ttl_s is None else now() + ttl_s
        with self._write() as conn:
            conn.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", [(k, v, expires) for k, v in values.items()])

    def _expired_index(self, conn: sqlite3.Connection, index: str) -> None:
        row = conn.execute("SELECT expires FROM idx_expires WHERE name = ?", (index,)).fetchone()
        if row is not None and row[0] <= now():
            conn.execute("DELETE FROM idx WHERE name = ?", (index,))
            conn.execute("DELETE FROM idx_expires WHERE name = ?", (index,))

    def index_add(self, index: str, member: str, score: float, ttl_s: float | None = None) -> None:
        with self._write() as conn:
            self._expired_index(conn, index)
            conn.execute("INSERT OR REPLACE INTO idx VALUES (?, ?, ?)", (index, member, score))
            if ttl_s is not None:
                conn.execute("INSERT OR REPLACE INTO idx_expires VALUES (?, ?)", (index, now() + ttl_s))

    def index_remove(self, index: str, *members: str) -> int:
        if not members:
            return 0
        marks = ",".join("?" * len(members))
        with self._write() as conn:
            return conn.execute(f"DELETE FROM idx WHERE name = ? AND member IN ({marks})", (index, *members)).rowcount

    def index_range(self, index: str, *, min_score: float = float("-inf"), max_score: float = float("inf"),
                    limit: int = 100, newest_first: bool = True) -> list[tuple[str, float]]:
        order = "DESC" if newest_first else "ASC"
        rows = self._read(
            f"SELECT member, score FROM idx WHERE name = ? AND score >= ? AND score <= ? AND {LIVE_INDEX} "
            f"ORDER BY score {order}, member {order} LIMIT ?",
            (index, max(min_score, -1e308), min(max_score, 1e308), index, now(), limit))
        return [(str(m), float(s)) for m, s in rows]  # type: ignore[arg-type]

    def index_count(self, index: str) -> int:
        rows = self._read(f"SELECT count(*) FROM idx WHERE name = ? AND {LIVE_INDEX}", (index, index, now()))
        return int(rows[0][0])  # type: ignore[call-overload]

    def publish(self, channel: str, message: bytes) -> None:
        t = now()
        with self._write() as conn:
            conn.execute("INSERT INTO messages (channel, body, at) VALUES (?, ?, ?)", (channel, message, t))
            conn.execute("DELETE FROM messages WHERE at < ?", (t - MESSAGE_KEPT_S,))

    def subscribe(self, *channels: str) -> "SqliteSubscription":
        ((last,),) = self._read("SELECT COALESCE(MAX(seq), 0) FROM messages", ())
        return SqliteSubscription(self, channels, int(last))  # type: ignore[call-overload]

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()


class SqliteSubscription(Subscription):
    """Polls the message table every ``MESSAGE_POLL_S`` (one indexed read) for new rows of its channels."""

    def __init__(self, state: SqliteState, channels: tuple[str, ...], after: int):
        self.state = state
        self.channels = channels
        self.after = after
        self.pending: list[tuple[str, bytes]] = []
        self.marks = ",".join("?" * len(channels))

    def get(self, timeout_s: float) -> tuple[str, bytes] | None:
        deadline = time.monotonic() + max(0.0, timeout_s)
        while not self.pending:
            rows = self.state._read(
                f"SELECT seq, channel, body FROM messages WHERE seq > ? AND channel IN ({self.marks}) ORDER BY seq",
                (self.after, *self.channels))
            if rows:
                self.after = int(rows[-1][0])  # type: ignore[call-overload]
                self.pending = [(str(c), bytes(b)) for _, c, b in rows]  # type: ignore[arg-type]
                break
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(MESSAGE_POLL_S, left))
        return self.pending.pop(0)

    def close(self) -> None:
        self.pending = []
