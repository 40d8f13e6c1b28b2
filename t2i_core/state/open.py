"""``T2I_STATE``: which backend holds the state shared by a server's workers (and replicas)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from t2i_core.state.memory import MemoryState
from t2i_core.state.sqlite import SqliteState
from t2i_core.state.store import StateStore

#: the SQLite file in the run folder (``auto`` with several workers)
RUN_FOLDER_FILE = "state.sqlite"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def resolve_spec(spec: str, *, api_workers: int, engine_workers: int, run_dir: str) -> str:
    """``auto``: memory with one API worker and one engine worker, else a SQLite file in the run folder."""
    if spec != "auto":
        return spec
    if api_workers <= 1 and engine_workers <= 1:
        return "memory"
    return f"sqlite:{os.path.join(run_dir, RUN_FOLDER_FILE)}"


def check_spec(spec: str) -> None:
    """ValueError naming ``T2I_STATE`` and the value when it is not a backend this server knows."""
    if spec in ("auto", "memory") or (spec.startswith("sqlite:") and len(spec) > len("sqlite:")):
        return
    if spec.startswith(REDIS_SCHEMES) and len(spec) > len("redis://"):
        return
    raise ValueError(f"T2I_STATE must be auto, memory, sqlite:<file> or redis://host:port/db; got {redacted(spec)!r}")


def redacted(spec: str) -> str:
    """The spec with a URL's password replaced by ``***`` (error messages and logs never show it)."""
    if "://" not in spec:
        return spec
    parts = urlsplit(spec)
    if parts.password is None:
        return spec
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def open_state(spec: str) -> StateStore:
    """The backend for a resolved spec (``resolve_spec``)."""
    check_spec(spec)
    if spec == "memory":
        return MemoryState()
    if spec.startswith(REDIS_SCHEMES):
        from t2i_core.state.redis import RedisState  # the redis package is imported only when used

        return RedisState(spec)
    return SqliteState(spec[len("sqlite:"):])
